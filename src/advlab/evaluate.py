"""Clean and robust accuracy of a classifier over a list of attacks and a grid of ε: measurement only.

Robust accuracy is measured per example: an example counts as robust under an attack only if the
model classifies it correctly both clean and at the attack's adversarial point, re-checked by a fresh
forward pass in fp32 on the returned images (never taken from the attack's own bookkeeping). The worst
case over attacks is the per-example AND. Every attack's output is verified to lie in its ε-ball and in
[0, 1] with no NaN, and :class:`IntegrityError` is raised otherwise. A targeted attack is run against
each of the most likely wrong classes in turn (all of them unless the attack names a number), and an
example is robust only if it survives every target.

Python::

    from advlab.attacks import parse_attack
    result = evaluate(model, test_data, attacks=[parse_attack("fgsm"), parse_attack("pgd20")], eps=[0.1])
    print(result.table())

Command line: ``advlab evaluate RUN_DIR --attack fgsm --attack pgd20 --eps 0.05,0.1``;
``advlab attack RUN_DIR --eps 0.1 --out OUT`` saves adversarial examples (:func:`attack_checkpoint`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, bucket_size, eval_mode
from advlab.attacks.threat import IntegrityError, verify_adversarial
from advlab.errors import AdvlabError, check_range
from advlab.runs import training_outcome, load_checkpoint, prepare_run_dir, save_tensors, write_json
from advlab.runtime import Runtime, release_freed_memory, same_device

__all__ = ["DEFAULT_BATCH", "EvalResult", "IntegrityError", "attack_checkpoint", "clean_accuracy", "evaluate",
           "evaluate_checkpoint", "transfer_flags", "verify_adversarial"]

# Images per evaluation batch. On the 2-core CPU of BENCHMARKS.md (benchmarks/bench_eval_batch.py), PGD-20
# on 1,000 images of a robust small_cnn took 3.4 s at 256 against 4.2 s at 500 and 3.4–3.6 s at 100–128
# (activations that fit the cache, against per-batch overhead); on a standard model 256 and 500 tie.
DEFAULT_BATCH = 256


@dataclass
class EvalResult:
    """Accuracies of one model: ``robust[label][i]`` is the accuracy under that attack at ``eps[i]``."""

    n: int
    clean_accuracy: float
    eps: list[float]
    attacks: dict[str, dict]  # label -> attack hyperparameters (AttackSpec.to_dict())
    robust: dict[str, list[float]]
    worst_case: list[float]
    seconds: float
    per_example: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # "clean", label@eps -> bool

    def to_dict(self) -> dict:
        """JSON-ready summary (per-example flags left out)."""
        return {"n": self.n, "clean_accuracy": self.clean_accuracy, "eps": self.eps, "attacks": self.attacks,
                "robust_accuracy": self.robust, "worst_case_accuracy": self.worst_case, "seconds": self.seconds}

    def table(self) -> str:
        """A plain-text table: one row per ε, one column per attack, then the worst case."""
        labels = list(self.robust)
        header = ["eps", "clean"] + labels + (["worst case"] if len(labels) > 1 else [])
        rows = []
        for i, eps in enumerate(self.eps):
            row = [f"{eps:.4g}", f"{100 * self.clean_accuracy:.2f}%"]
            row += [f"{100 * self.robust[label][i]:.2f}%" for label in labels]
            if len(labels) > 1:
                row.append(f"{100 * self.worst_case[i]:.2f}%")
            rows.append(row)
        widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines) + f"\n({self.n} examples, {self.seconds:.1f} s)"


def _batches(data, batch_size: int, device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(data, "batches"):
        return data.batches(batch_size, device=device)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        return ((x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size))
    return data  # an iterable of (x, y) batches, e.g. a DataLoader


def _pad_to_bucket(mask: torch.Tensor) -> torch.Tensor:
    """Indices of ``mask``'s True entries, plus some False ones up to the early-exit loop's bucket size.

    The extra examples are attacked for nothing and their verdicts are masked out by the caller; in
    exchange the attacks see a bounded set of batch shapes, which keeps peak memory from growing with
    the number of images (benchmarks/bench_eval.py).
    """
    chosen = mask.nonzero().squeeze(1)
    size = bucket_size(chosen.numel(), mask.numel())
    if chosen.numel() in (0, size):
        return chosen
    extra = (~mask).nonzero().squeeze(1)[: size - chosen.numel()]
    return torch.cat([chosen, extra]).sort().values


def _goals(model: nn.Module, attack: AttackSpec, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The labels to hand the attack: the true ones, or for a targeted attack each of the most likely
    wrong classes by the clean logits, most likely first."""
    if not attack.targeted:
        return [y]
    with torch.inference_mode():
        logits = model(x).float()
    wrong = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    count = logits.shape[1] - 1 if attack.targets is None else min(attack.targets, logits.shape[1] - 1)
    return [wrong[:, r].clone() for r in range(count)]


def _survivors(model: nn.Module, attack: AttackSpec, x: torch.Tensor, y: torch.Tensor, todo: torch.Tensor, eps: float,
               *, runtime: Runtime, generator: torch.Generator, early_stop: bool) -> torch.Tensor:
    """Per example: classified correctly (in fp32) after ``attack`` at ``eps``; False outside ``todo``."""
    robust = torch.zeros_like(todo)
    index = _pad_to_bucket(todo)
    if index.numel() == 0:
        return robust
    xs, ys = x[index], y[index]
    survived = todo[index].clone()
    for goal in _goals(model, attack, xs, ys):
        # With early exit, each further target attacks only what the earlier ones left standing.
        rows = _pad_to_bucket(survived) if early_stop else torch.arange(len(ys), device=ys.device)
        if rows.numel() == 0:
            break
        with runtime.autocast():
            x_adv = attack(model, xs[rows], goal[rows], eps=eps, generator=generator, early_stop=early_stop,
                           channels_last=runtime.channels_last)
        verify_adversarial(xs[rows], x_adv, eps, attack.norm, what=attack.label)
        with torch.inference_mode():
            survived[rows] &= model(x_adv.float()).argmax(1) == ys[rows]
    robust[index] = survived
    return robust


def _runtime_for(model: nn.Module, runtime: Runtime | None) -> Runtime:
    if runtime is None:
        return Runtime.for_model(model)
    device = next((p.device for p in model.parameters()), runtime.device)
    if not same_device(device, runtime.device):
        raise AdvlabError(f"the model is on {device} but the evaluation runs on {runtime.device}; "
                          "move the model there first (model.to(device))")
    return runtime


def evaluate(
    model: nn.Module,
    data,
    *,
    attacks: Sequence[AttackSpec],
    eps: Sequence[float],
    batch_size: int = DEFAULT_BATCH,
    early_stop: bool = True,
    chain: bool = False,
    seed: int = 0,
    runtime: Runtime | None = None,
    progress: bool = True,
    keep_per_example: bool = False,
) -> EvalResult:
    """Clean accuracy, and robust accuracy for each attack and ε, with the per-example worst case.

    ``data`` is an :class:`advlab.data.ImageData`, an ``(x, y)`` pair of tensors or an iterable of
    batches. ``early_stop`` (the default) attacks only the examples still correct and lets each attack
    and restart drop an example as soon as it is fooled (exactly as strong, much faster on weak models);
    ``early_stop=False`` is the naive baseline that attacks every example with every step and restart.
    ``chain=True`` runs each attack only on the examples that all earlier attacks left robust (AutoAttack
    style, fastest); then the per-attack numbers are cumulative. Randomness (random starts) comes from a
    generator seeded with ``seed`` on the runtime's device, so results repeat.
    ``runtime`` (default: the model's device, fp32, channels-last on CPU) sets the attacks' precision:
    ``bf16`` or ``fp16`` autocast covers the attacks' passes only, and every example is still judged in
    fp32, so a weaker low-precision attack shows as higher robust accuracy, never hidden.
    """
    if not attacks:
        raise AdvlabError("give at least one attack to evaluate")
    if not eps:
        raise AdvlabError("give at least one ε to evaluate")
    for attack in attacks:
        if not isinstance(attack, AttackSpec):
            raise AdvlabError(f"attacks must be AttackSpec values (advlab.attacks.parse_attack), got {attack!r}")
        for e in eps:  # up front: an attack that never runs (nothing left to attack) must not hide a bad ε
            check_range("eps", e, 0.0, 1.0 if attack.norm == "linf" else None)
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise AdvlabError(f"the same attack is listed twice: {labels}")
    runtime = _runtime_for(model, runtime)
    generator = runtime.generator(seed)
    start = time.perf_counter()
    clean_flags: list[torch.Tensor] = []
    robust_flags: dict[tuple[str, int], list[torch.Tensor]] = {(a.label, i): [] for a in attacks for i in range(len(eps))}
    worst_flags: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(eps))}
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, list)) else None
    bar = _progress(total, progress, "evaluate")
    with eval_mode(model):
        for x, y in _batches(data, batch_size, runtime.device):
            with torch.inference_mode():
                correct = model(x).argmax(1) == y
            clean_flags.append(correct.cpu())
            for i, e in enumerate(eps):
                still_robust = correct.clone()
                for attack in attacks:
                    # Only clean-correct examples can be robust; chained attacks also skip the broken ones.
                    # Without early exit every example is attacked, as a naive evaluation would.
                    todo = still_robust if chain else correct if early_stop else torch.ones_like(correct)
                    robust = _survivors(model, attack, x, y, todo, e, runtime=runtime, generator=generator,
                                        early_stop=early_stop) & correct
                    robust_flags[(attack.label, i)].append((robust & still_robust if chain else robust).cpu())
                    still_robust &= robust
                worst_flags[i].append(still_robust.cpu())
            bar.update(len(y))
            release_freed_memory()
    bar.close()
    clean = torch.cat(clean_flags) if clean_flags else torch.zeros(0, dtype=torch.bool)
    n = int(clean.numel())
    if n == 0:
        raise AdvlabError("no examples to evaluate")
    per_example = {"clean": clean}
    robust_acc: dict[str, list[float]] = {label: [] for label in labels}
    for (label, i), flags in robust_flags.items():
        flags_all = torch.cat(flags)
        robust_acc[label].append(flags_all.float().mean().item())
        per_example[f"{label}@{eps[i]:g}"] = flags_all
    worst = [torch.cat(worst_flags[i]).float().mean().item() for i in range(len(eps))]
    return EvalResult(
        n=n, clean_accuracy=clean.float().mean().item(), eps=[float(e) for e in eps],
        attacks={a.label: a.to_dict() for a in attacks}, robust=robust_acc, worst_case=worst,
        seconds=time.perf_counter() - start, per_example=per_example if keep_per_example else {},
    )


def clean_accuracy(model: nn.Module, data, *, batch_size: int = 1000, device=None) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly (eval mode, no gradients)."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = seen = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in _batches(data, batch_size, device):
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return correct / max(seen, 1)


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def _load_test_data(record: dict, dataset: str | None, split: str, n: int | None, data_dir, progress: bool):
    from advlab.data import load_dataset

    name = dataset or record.get("dataset")
    if not name:
        raise AdvlabError("the checkpoint names no data set; pass --dataset")
    data = load_dataset(name, split, data_dir=data_dir, progress=progress)
    if n is not None:
        if n < 1:
            raise AdvlabError(f"--n must be at least 1, got {n}")
        data = data.subset(min(n, len(data)))
    return data


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    attacks: Sequence[AttackSpec],
    eps: Sequence[float],
    n: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir=None,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH,
    chain: bool = False,
    early_stop: bool = True,
    seed: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> EvalResult:
    """Load a checkpoint onto the runtime's device (default: CUDA when present), evaluate it on ``n``
    examples of ``split`` and write the result as JSON to ``out``."""
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise AdvlabError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    runtime = runtime if runtime is not None else Runtime()
    model, record = load_checkpoint(checkpoint, device=runtime.device)
    data = _load_test_data(record, dataset, split, n, data_dir, progress)
    result = evaluate(model, data, attacks=attacks, eps=eps, batch_size=batch_size, chain=chain,
                      early_stop=early_stop, seed=seed, progress=progress, runtime=runtime)
    if out is not None:
        write_json(out, {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split,
                         "hyperparameters": {a.label: [a.hyperparameters(e) for e in eps] for a in attacks},
                         "attack_precision": runtime.precision, "runtime": runtime.to_dict(),
                         "batch_size": batch_size, "seed": seed,
                         "early_stop": early_stop, "chain": chain,  # the random starts depend on these
                         "training": training_outcome(checkpoint),  # a collapsed run says so here too
                         **result.to_dict()})
    return result


def attack_checkpoint(
    checkpoint: str | Path,
    *,
    attack: AttackSpec,
    eps: float,
    out: str | Path,
    n: int = 8,
    target: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir=None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict:
    """Attack the first ``n`` examples of ``split`` and write ``adversarial.safetensors`` (images, labels,
    logits) and ``attack.json`` (hyperparameters, class names, success rate) into the folder ``out``;
    :func:`advlab.report.save_attack_gallery` draws ``gallery.png`` from those files.

    ``target`` makes the attack targeted at that class index (examples already of that class are skipped).
    """
    import dataclasses

    if attack.targeted and target is None:
        raise AdvlabError(f"{attack.label} is targeted: name the class with --target CLASS (advlab evaluate "
                          "tries the most likely wrong classes itself)")
    if attack.targets is not None:
        raise AdvlabError(f"{attack.label}: a number of target classes means nothing here; use --target CLASS")
    out = prepare_run_dir(out, overwrite=overwrite)
    runtime = runtime if runtime is not None else Runtime()
    model, record = load_checkpoint(checkpoint, device=runtime.device)
    data = _load_test_data(record, dataset, split, None, data_dir, progress)
    classes = data.info.classes
    if target is not None:
        if not 0 <= target < len(classes):
            raise AdvlabError(f"--target must be a class index from 0 to {len(classes) - 1}, got {target}")
        keep = (data.labels != target).nonzero().squeeze(1)
        data = data.subset(keep)
        attack = dataclasses.replace(attack, targeted=True)
    data = data.subset(min(n, len(data)))
    x, y = data.tensors(runtime.device)
    goal = torch.full_like(y, target) if target is not None else y
    with runtime.autocast():
        x_adv = attack(model, x, goal, eps=eps, generator=runtime.generator(seed), channels_last=runtime.channels_last)
    x_adv = x_adv.float()
    verify_adversarial(x, x_adv, eps, attack.norm, what=attack.label)
    with torch.inference_mode():
        logits_clean, logits_adv = model(x), model(x_adv)
    prediction = logits_adv.argmax(1)
    success = prediction == goal if target is not None else prediction != y
    tensors = {"x": x, "x_adv": x_adv, "labels": y, "logits_clean": logits_clean, "logits_adv": logits_adv,
               "prediction_clean": logits_clean.argmax(1), "prediction_adv": prediction}
    if target is not None:
        tensors["targets"] = goal
    save_tensors(out / "adversarial.safetensors", tensors)
    summary = {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split, "n": len(y),
               **attack.hyperparameters(eps), "label": attack.label, "target": target, "classes": list(classes),
               "runtime": runtime.to_dict(),
               "clean_accuracy": float((logits_clean.argmax(1) == y).float().mean()),
               "success_rate": float(success.float().mean()),
               "files": ["adversarial.safetensors", "attack.json"]}
    write_json(out / "attack.json", summary)
    return summary


def transfer_flags(
    target: nn.Module,
    surrogate: nn.Module,
    data,
    *,
    attack: AttackSpec,
    eps: float,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """A black-box transfer attack, per example (CPU bool tensor): does ``target`` classify both the clean
    image and the adversarial example crafted against ``surrogate`` correctly? Its mean is the transfer
    accuracy; if that beats the white-box attack on ``target``, the white-box gradients are probably masked."""
    if attack.targeted:
        raise AdvlabError(f"a transfer attack is untargeted; {attack.label} is not")
    runtime = _runtime_for(target, runtime)
    generator = runtime.generator(seed)
    flags: list[torch.Tensor] = []
    with eval_mode(target), eval_mode(surrogate):
        for x, y in _batches(data, batch_size, runtime.device):
            with runtime.autocast():
                x_adv = attack(surrogate, x, y, eps=eps, generator=generator, channels_last=runtime.channels_last)
            verify_adversarial(x, x_adv, eps, attack.norm, what=f"transfer {attack.label}")
            with torch.inference_mode():
                flags.append(((target(x).argmax(1) == y) & (target(x_adv.float()).argmax(1) == y)).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
