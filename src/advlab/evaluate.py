"""Clean and robust accuracy of a classifier over a list of attacks and a grid of ε.

Robust accuracy is measured per example: an example counts as robust under an attack only if the
model classifies it correctly both clean and at the attack's adversarial point, re-checked by a fresh
forward pass on the returned images (never taken from the attack's own bookkeeping). The worst case
over attacks is the per-example AND. Every evaluation ends by verifying that each adversarial example
lies in its ε-ball and in [0, 1] with no NaN, and raises :class:`IntegrityError` otherwise.

Python::

    from advlab.attacks import parse_attack
    result = evaluate(model, test_data, attacks=[parse_attack("fgsm"), parse_attack("pgd20")], eps=[0.1])
    print(result.table())

Command line: ``advlab evaluate RUN_DIR --attack fgsm --attack pgd20 --eps 0.05,0.1``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, bucket_size, eval_mode
from advlab.errors import AdvlabError

# Float slack for the ε-ball check: projections are exact up to float32 rounding of x ± ε.
BALL_TOLERANCE = 1e-6


class IntegrityError(RuntimeError):
    """An attack returned a point outside its threat model: a bug, never a result to report."""


# Images per evaluation batch. On the 2-core CPU of BENCHMARKS.md (benchmarks/bench_eval_batch.py), PGD-20
# on 1,000 images of a robust small_cnn took 3.6 s at 256 against 4.3 s at 500 and 4.0–4.1 s at 100–128
# (activations that fit the cache, against per-batch overhead); on a standard model 256 and 500 tie.
DEFAULT_BATCH = 256


def verify_adversarial(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, *, what: str = "attack") -> None:
    """Fail loudly unless ``x_adv`` is finite, in [0, 1] and within ``eps`` of ``x`` in ``norm``."""
    if not torch.isfinite(x_adv).all():
        raise IntegrityError(f"{what}: adversarial examples contain NaN or infinity")
    if x_adv.numel() and (x_adv.min() < 0 or x_adv.max() > 1):
        raise IntegrityError(f"{what}: adversarial pixels leave [0, 1] ({x_adv.min().item()}, {x_adv.max().item()})")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(p=2, dim=1)
    limit = eps + BALL_TOLERANCE if norm == "linf" else eps * (1 + 1e-5) + BALL_TOLERANCE
    if size.numel() and size.max() > limit:
        raise IntegrityError(f"{what}: perturbation of size {size.max().item():.6g} exceeds ε = {eps:g} ({norm})")


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


PRECISIONS = ("fp32", "bf16", "fp16")


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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        return None


def release_freed_memory() -> None:
    """Give the memory the last batch freed back to the operating system.

    glibc keeps freed heap memory for reuse, and the ever-changing sizes of early-exit sub-batches
    fragment it, so without this the peak memory of an evaluation grows with the number of images
    (measured in benchmarks/bench_eval.py). A no-op where glibc's ``malloc_trim`` is absent.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def attack_autocast(precision: str, device_type: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context the attacks run under at ``precision``; checks it is usable."""
    if precision not in PRECISIONS:
        raise AdvlabError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device_type != "cuda":
        raise AdvlabError("fp16 autocast needs a CUDA device; on CPU use --precision bf16 or fp32")
    if precision == "bf16" and device_type == "cpu" and not torch.backends.mkldnn.is_available():
        raise AdvlabError("this CPU build of torch has no oneDNN, so no fast bf16; use --precision fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


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
    device: torch.device | str | None = None,
    progress: bool = True,
    keep_per_example: bool = False,
    precision: str = "fp32",
) -> EvalResult:
    """Clean accuracy, and robust accuracy for each attack and ε, with the per-example worst case.

    ``data`` is an :class:`advlab.data.ImageData`, an ``(x, y)`` pair of tensors or an iterable of
    batches. ``early_stop`` (the default) attacks only the examples still correct and lets each attack
    and restart drop an example as soon as it is fooled (exactly as strong, much faster on weak models);
    ``early_stop=False`` is the naive baseline that attacks every example with every step and restart. ``chain=True`` runs each attack only on the examples that all earlier
    attacks left robust (AutoAttack style, fastest); then the per-attack numbers are cumulative.
    Randomness (random starts) comes from a generator seeded with ``seed``, so results repeat.
    ``precision`` ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA) runs the attacks' forward and backward
    passes under autocast; the adversarial examples are still judged in full precision, so a weaker
    low-precision attack shows as higher robust accuracy, never hidden (see BENCHMARKS.md for the
    measured difference). The default ``"fp32"`` is the reference.
    """
    if not attacks:
        raise AdvlabError("give at least one attack to evaluate")
    if not eps:
        raise AdvlabError("give at least one ε to evaluate")
    for attack in attacks:
        for e in eps:
            attack.hyperparameters(e)  # AttackSpec validated itself; ε is checked by the attack
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise AdvlabError(f"the same attack is listed twice: {labels}")
    generator = torch.Generator(device=device).manual_seed(seed)
    low_precision = attack_autocast(precision, torch.device(device).type)
    start = time.perf_counter()
    clean_flags: list[torch.Tensor] = []
    robust_flags: dict[tuple[str, int], list[torch.Tensor]] = {(a.label, i): [] for a in attacks for i in range(len(eps))}
    worst_flags: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(eps))}
    batches = _batches(data, batch_size, device)
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, list)) else None
    bar = _progress(total, progress, "evaluate")
    with eval_mode(model):
        for x, y in batches:
            with torch.inference_mode():
                correct = model(x).argmax(1) == y
            clean_flags.append(correct.cpu())
            for i, e in enumerate(eps):
                still_robust = correct.clone()
                for attack in attacks:
                    # Only clean-correct examples can be robust; chained attacks also skip the broken ones.
                    # Without early exit every example is attacked, as a naive evaluation would.
                    todo = (still_robust if chain else correct if early_stop else torch.ones_like(correct))
                    todo = _pad_to_bucket(todo)
                    robust = torch.zeros_like(correct)
                    if todo.numel():
                        with low_precision():
                            x_adv = attack(model, x[todo], y[todo], eps=e, generator=generator,
                                           early_stop=early_stop)
                        verify_adversarial(x[todo], x_adv, e, attack.norm, what=attack.label)
                        with torch.inference_mode():
                            robust[todo] = (model(x_adv).argmax(1) == y[todo]) & correct[todo]
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
    precision: str = "fp32",
) -> EvalResult:
    """Load a checkpoint, evaluate it on ``n`` examples of ``split`` and write the result as JSON to ``out``."""
    from advlab.runs import load_checkpoint, write_json

    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise AdvlabError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    model, record = load_checkpoint(checkpoint)
    data = _load_test_data(record, dataset, split, n, data_dir, progress)
    result = evaluate(model, data, attacks=attacks, eps=eps, batch_size=batch_size, chain=chain,
                      early_stop=early_stop, seed=seed, progress=progress, precision=precision)
    if out is not None:
        write_json(out, {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split,
                         "hyperparameters": {a.label: [a.hyperparameters(e) for e in eps] for a in attacks},
                         "attack_precision": precision, "batch_size": batch_size, "seed": seed,
                         "early_stop": early_stop, "chain": chain,  # the random starts depend on these
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
) -> dict:
    """Attack the first ``n`` examples of ``split`` and write ``adversarial.safetensors``, ``gallery.png``
    and ``attack.json`` (hyperparameters and success rate) into the folder ``out``.

    ``target`` makes the attack targeted at that class index (examples already of that class are skipped).
    """
    import dataclasses

    from advlab.report import save_gallery
    from advlab.runs import load_checkpoint, prepare_run_dir, save_tensors, write_json

    out = prepare_run_dir(out, overwrite=overwrite)
    model, record = load_checkpoint(checkpoint)
    data = _load_test_data(record, dataset, split, None, data_dir, progress)
    classes = data.info.classes
    if target is not None:
        if not 0 <= target < len(classes):
            raise AdvlabError(f"--target must be a class index from 0 to {len(classes) - 1}, got {target}")
        keep = (data.labels != target).nonzero().squeeze(1)
        data = data.subset(keep)
        attack = dataclasses.replace(attack, targeted=True)
    data = data.subset(min(n, len(data)))
    x, y = data.tensors()
    goal = torch.full_like(y, target) if target is not None else y
    generator = torch.Generator().manual_seed(seed)
    x_adv = attack(model, x, goal, eps=eps, generator=generator)
    verify_adversarial(x, x_adv, eps, attack.norm, what=attack.label)
    with torch.inference_mode():
        logits_clean, logits_adv = model(x), model(x_adv)
    prediction = logits_adv.argmax(1)
    success = prediction == goal if target is not None else prediction != y
    save_tensors(out / "adversarial.safetensors",
                 {"x": x, "x_adv": x_adv, "labels": y, "prediction_clean": logits_clean.argmax(1),
                  "prediction_adv": prediction})
    title = f"{attack.label}, ε = {eps:g}" + (f", target: {classes[target]}" if target is not None else "")
    save_gallery(out / "gallery.png", x[:16], x_adv[:16], y[:16], logits_clean[:16], logits_adv[:16],
                 classes=classes, eps=eps, title=title, targets=goal[:16] if target is not None else None)
    summary = {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split, "n": len(y),
               **attack.hyperparameters(eps), "target": target,
               "clean_accuracy": float((logits_clean.argmax(1) == y).float().mean()),
               "success_rate": float(success.float().mean()),
               "files": ["adversarial.safetensors", "gallery.png", "attack.json"]}
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
) -> torch.Tensor:
    """A black-box transfer attack, per example (CPU bool tensor): does ``target`` classify both the clean
    image and the adversarial example crafted against ``surrogate`` correctly? Its mean is the transfer
    accuracy; if that beats the white-box attack on ``target``, the white-box gradients are probably masked."""
    device = next((p.device for p in target.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    flags: list[torch.Tensor] = []
    with eval_mode(target), eval_mode(surrogate):
        for x, y in _batches(data, batch_size, device):
            x_adv = attack(surrogate, x, y, eps=eps, generator=generator)
            verify_adversarial(x, x_adv, eps, attack.norm, what=f"transfer {attack.label}")
            with torch.inference_mode():
                flags.append(((target(x).argmax(1) == y) & (target(x_adv).argmax(1) == y)).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
