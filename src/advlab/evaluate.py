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

Command line: ``advlab evaluate RUN_DIR --attack fgsm --attack pgd20 --eps 0.05,0.1`` (through
:mod:`advlab.jobs`, which loads a checkpoint, runs this and writes the results).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, bucket_size, eval_mode
from advlab.attacks.threat import IntegrityError, verify_adversarial
from advlab.errors import AdvlabError, check_range
from advlab.model_checks import black_box_flag, is_randomized, model_flags
from advlab.runtime import Runtime, release_freed_memory, same_device

__all__ = [
    "DEFAULT_BATCH",
    "EvalResult",
    "IntegrityError",
    "clean_accuracy",
    "evaluate",
    "transfer_flags",
    "verify_adversarial",
]

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
    flags: list[dict] = field(default_factory=list)  # advlab.model_checks: what may make these numbers overstate
    draws: int = 1  # passes per verdict: DRAWS for a randomized model (the majority decides), else 1

    def to_dict(self) -> dict:
        """JSON-ready summary (per-example flags left out)."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "eps": self.eps,
            "attacks": self.attacks,
            "robust_accuracy": self.robust,
            "worst_case_accuracy": self.worst_case,
            "seconds": self.seconds,
            "model_flags": self.flags,
            "verdict_draws": self.draws,
        }

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
        return (
            (x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)
        )
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


# A randomized model (two passes differ) is judged by the majority of this many passes, clean and attacked alike.
DRAWS = 20


def verdict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Per example: classified as ``y`` (fp32 forward passes, no gradient). With ``draws`` > 1 (a randomized
    model) it must be so in more than half of ``draws`` passes: one lucky draw neither saves nor breaks it."""
    with torch.inference_mode():
        if draws == 1:
            held = model(x).argmax(1) == y
        else:
            held = sum((model(x).argmax(1) == y).int() for _ in range(draws)) * 2 > draws
    return held.clone()  # outside inference mode: a normal tensor, which callers may update in place


def _survivors(
    model: nn.Module,
    attack: AttackSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    todo: torch.Tensor,
    eps: float,
    *,
    runtime: Runtime,
    generator: torch.Generator,
    early_stop: bool,
    draws: int = 1,
) -> torch.Tensor:
    """Per example: classified correctly (in fp32; a randomized model by the majority of ``draws`` passes)
    after ``attack`` at ``eps``; False outside ``todo``. On a randomized model an attack never lets an example
    go on one draw's say: its own early exit is off, and between targets only the verdict counts."""
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
            x_adv = attack(
                model,
                xs[rows],
                goal[rows],
                eps=eps,
                generator=generator,
                early_stop=early_stop and draws == 1,
                channels_last=runtime.channels_last,
            )
        verify_adversarial(xs[rows], x_adv, eps, attack.norm, what=attack.label)
        held = verdict(model, x_adv.float(), ys[rows], draws)  # a normal tensor: updated below
        if early_stop and draws == 1 and runtime.precision != "fp32" and bool(held.any()):
            held[held.clone()] = _recheck_in_fp32(
                model,
                attack,
                xs[rows][held],
                goal[rows][held],
                ys[rows][held],
                x_adv[held],
                eps,
                runtime=runtime,
                generator=generator,
            )
        survived[rows] &= held
    robust[index] = survived
    return robust


def _recheck_in_fp32(
    model: nn.Module,
    attack: AttackSpec,
    x: torch.Tensor,
    goal: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    eps: float,
    *,
    runtime: Runtime,
    generator: torch.Generator,
) -> torch.Tensor:
    """Reduced precision must not overstate: an example the attack let go early because its low-precision
    logits looked fooled, but that fp32 judges robust, was never attacked to the end. Those few are attacked
    again in fp32, and the fp32 verdict on that attack decides. Returns, per row, robust in fp32."""
    with torch.inference_mode(), runtime.autocast():
        fooled_low = model(x_adv).argmax(1) != y if not attack.targeted else model(x_adv).argmax(1) == goal
    fooled_low = fooled_low.clone()
    robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
    if not bool(fooled_low.any()):
        return robust
    again = attack(
        model,
        x[fooled_low],
        goal[fooled_low],
        eps=eps,
        generator=generator,
        early_stop=True,
        channels_last=runtime.channels_last,
    )
    verify_adversarial(x[fooled_low], again, eps, attack.norm, what=attack.label)
    with torch.no_grad():
        robust[fooled_low] = model(again.float()).argmax(1) == y[fooled_low]
    return robust


def _runtime_for(model: nn.Module, runtime: Runtime | None) -> Runtime:
    if runtime is None:
        return Runtime.for_model(model)
    device = next((p.device for p in model.parameters()), runtime.device)
    if not same_device(device, runtime.device):
        raise AdvlabError(
            f"the model is on {device} but the evaluation runs on {runtime.device}; "
            "move the model there first (model.to(device))"
        )
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
    checks: bool = True,
    state=None,
) -> EvalResult:
    """Clean accuracy, and robust accuracy for each attack and ε, with the per-example worst case.

    ``data`` is an :class:`advlab.data.ImageData`, an ``(x, y)`` pair of tensors or an iterable of
    batches (under torchrun, the same batches in the same order on every rank: each keeps every world-th).
    ``early_stop`` (the default) attacks only the examples still correct and lets each attack
    and restart drop an example as soon as it is fooled (exactly as strong, much faster on weak models);
    ``early_stop=False`` is the naive baseline that attacks every example with every step and restart.
    ``chain=True`` runs each attack only on the examples that all earlier attacks left robust (AutoAttack
    style, fastest); then the per-attack numbers are cumulative. Randomness (random starts) comes from a
    generator seeded with ``seed`` on the runtime's device, so results repeat.
    ``runtime`` (default: the model's device, fp32, channels-last on CPU) sets the attacks' precision:
    ``bf16`` or ``fp16`` autocast covers the attacks' passes only, and every example is still judged in
    fp32, so a weaker low-precision attack shows as higher robust accuracy, never hidden.
    ``checks`` (the default) runs :mod:`advlab.model_checks` on the first batch and, when a gradient-free
    attack is in the list, flags the images it broke that every gradient attack left robust; the flags are
    in ``result.flags``. ``state`` (an object with ``load() -> dict | None`` and ``save(dict)``, such as
    :class:`advlab.eval_state.EvalState`) makes a long evaluation resumable: the progress is saved after every
    batch, random generator included, and a resumed run skips the finished batches and ends with the very
    numbers an uninterrupted one would.
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
    robust_flags: dict[tuple[str, int], list[torch.Tensor]] = {
        (a.label, i): [] for a in attacks for i in range(len(eps))
    }
    worst_flags: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(eps))}
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, list)) else None
    bar = _progress(total, progress and runtime.main, "evaluate")
    raised: list[dict] = []  # the model flags
    black_box = [a for a in attacks if a.kind.black_box]
    # Per ε: images every gradient attack ran on and left robust, and those a gradient-free attack then broke.
    white_robust = {i: 0 for i in range(len(eps))}
    black_broke: dict[tuple[str, int], int] = {(a.label, i): 0 for a in black_box for i in range(len(eps))}
    training = model.training
    saved = state.load() if state is not None else None
    if saved is not None:
        clean_flags, worst_flags, raised = saved["clean"], saved["worst"], saved["flags"]
        robust_flags = {(label, i): saved["robust"][f"{i}:{label}"] for label, i in robust_flags}
        white_robust, black_broke = (
            saved["white_robust"],
            {key: saved["black_broke"][f"{key[1]}:{key[0]}"] for key in black_broke},
        )
        generator.set_state(saved["generator"])
        start -= saved["seconds"]
    done = saved["batches"] if saved is not None else 0
    draws = saved.get("draws") if saved is not None else None
    if (world := runtime.world) is not None and state is not None:
        raise AdvlabError("a resumable evaluation (state beside --out) runs in one process, not under torchrun")
    ran_batches: list[int] = []  # under torchrun: this rank's batches (batch i: rank i mod world)
    with eval_mode(model):
        for index, (x, y) in enumerate(_batches(data, batch_size, runtime.device)):
            if index < done:  # finished before an interruption: its flags were restored above
                bar.update(len(y))
                continue
            if world is not None and not world.owns(index):
                continue
            ran_batches.append(index)
            if checks and not clean_flags:
                raised = model_flags(model, x, y, training=training)
            if draws is None:  # decided on the first batch, kept for the rest (and across a resume)
                draws = DRAWS if is_randomized(model, x) else 1
            correct = verdict(model, x, y, draws)
            clean_flags.append(correct.cpu())
            for i, e in enumerate(eps):
                still_robust = correct.clone()
                white = correct.clone()
                ran: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
                for attack in attacks:
                    # Only clean-correct examples can be robust; chained attacks also skip the broken ones.
                    # Without early exit every example is attacked, as a naive evaluation would.
                    todo = still_robust if chain else correct if early_stop else torch.ones_like(correct)
                    robust = (
                        _survivors(
                            model,
                            attack,
                            x,
                            y,
                            todo,
                            e,
                            runtime=runtime,
                            generator=generator,
                            early_stop=early_stop,
                            draws=draws,
                        )
                        & correct
                    )
                    robust_flags[(attack.label, i)].append((robust & still_robust if chain else robust).cpu())
                    still_robust &= robust
                    if attack.kind.black_box:
                        ran[attack.label] = (todo & correct, robust)
                    else:
                        white &= todo & robust
                worst_flags[i].append(still_robust.cpu())
                white_robust[i] += int(white.sum())
                for label, (attacked, robust) in ran.items():
                    black_broke[(label, i)] += int((white & attacked & ~robust).sum())
            bar.update(len(y))
            release_freed_memory()
            if state is not None:
                state.save(
                    {
                        "batches": index + 1,
                        "clean": clean_flags,
                        "worst": worst_flags,
                        "flags": raised,
                        "robust": {f"{i}:{label}": flags for (label, i), flags in robust_flags.items()},
                        "white_robust": white_robust,
                        "black_broke": {f"{i}:{label}": count for (label, i), count in black_broke.items()},
                        "generator": generator.get_state(),
                        "seconds": time.perf_counter() - start,
                        "draws": draws,
                    }
                )
    bar.close()
    if world is not None:  # every rank's flags, back in batch order: the numbers of one process
        clean_flags, robust_flags, worst_flags, raised, white_robust, black_broke, draws = _gathered(
            world, ran_batches, clean_flags, robust_flags, worst_flags, raised, white_robust, black_broke, draws
        )
    if checks and len(black_box) < len(attacks):
        raised += [
            black_box_flag(broken, white_robust[i], eps[i], label)
            for (label, i), broken in black_broke.items()
            if broken
        ]
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
        n=n,
        clean_accuracy=clean.float().mean().item(),
        eps=[float(e) for e in eps],
        attacks={a.label: a.to_dict() for a in attacks},
        robust=robust_acc,
        worst_case=worst,
        seconds=time.perf_counter() - start,
        per_example=per_example if keep_per_example else {},
        flags=raised,
        draws=draws or 1,
    )


def _gathered(world, ran, clean, robust, worst, raised, white_robust, black_broke, draws):
    """Every rank's per-batch flags and counts, merged in batch order; model flags from batch 0 (rank 0's)."""
    parts = world.gather(
        {
            "batches": ran,
            "clean": clean,
            "robust": robust,
            "worst": worst,
            "raised": raised,
            "white": white_robust,
            "black": black_broke,
            "draws": draws,
        }
    )
    order = sorted((b, r, k) for r, part in enumerate(parts) for k, b in enumerate(part["batches"]))
    clean = [parts[r]["clean"][k] for _, r, k in order]
    robust = {key: [parts[r]["robust"][key][k] for _, r, k in order] for key in robust}
    worst = {i: [parts[r]["worst"][i][k] for _, r, k in order] for i in worst}
    white = {i: sum(part["white"][i] for part in parts) for i in white_robust}
    black = {key: sum(part["black"][key] for part in parts) for key in black_broke}
    draws = next((part["draws"] for part in parts if part["draws"] is not None), None)
    return clean, robust, worst, parts[0]["raised"], white, black, draws


def clean_accuracy(model: nn.Module, data, *, batch_size: int = 1000, device=None, world=None) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly (eval mode, no gradients); ``world``: each
    torchrun rank counts its own batches and the counts are summed."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    counts = torch.zeros(2, dtype=torch.long, device=device)
    with eval_mode(model), torch.inference_mode():
        for index, (x, y) in enumerate(_batches(data, batch_size, device)):
            if world is not None and not world.owns(index):
                continue
            counts[0] += (model(x).argmax(1) == y).sum()
            counts[1] += len(y)
    correct, seen = (world.sum(counts) if world is not None else counts).tolist()
    return correct / max(seen, 1)


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, dynamic_ncols=True)


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
    draws = None
    with eval_mode(target), eval_mode(surrogate):
        for x, y in _batches(data, batch_size, runtime.device):
            if draws is None:  # a randomized target (a random defense) is judged by the majority of passes
                draws = DRAWS if is_randomized(target, x) else 1
            with runtime.autocast():
                x_adv = attack(surrogate, x, y, eps=eps, generator=generator, channels_last=runtime.channels_last)
            verify_adversarial(x, x_adv, eps, attack.norm, what=f"transfer {attack.label}")
            flags.append((verdict(target, x, y, draws) & verdict(target, x_adv.float(), y, draws)).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
