"""The extra attacks behind the sanity checks against gradient masking (:mod:`advlab.masking` judges them):
doubled PGD and the DLR loss beside its cross-entropy twin on every image, Square on what every gradient
attack left, uniform noise and a transfer attack, each with its per-image verdicts. Python::

    numbers = measure_masking_checks(model, surrogate, test, base=parse_attack("pgd20"), eps=0.1, survivors=idx)

Command line: ``advlab study`` runs them for every model (``models/NAME/checks.json``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.evaluate import evaluate, transfer_flags
from advlab.runtime import Runtime


def strongest_pgd(attacks: Sequence[AttackSpec]) -> AttackSpec:
    """The PGD attack (iterative, restarts, a fixed step) with the largest budget (steps × restarts) among
    ``attacks``."""
    pgd = [a for a in attacks if is_pgd(a)]
    return max(pgd, key=lambda a: a.steps * a.restarts)


def is_pgd(attack: AttackSpec) -> bool:
    """An iterative gradient attack with restarts and a fixed step size: PGD's kind (APGD adapts its step)."""
    return attack.kind.gradient and attack.kind.takes("restarts") and attack.kind.takes("step_ratio")


def is_single_step(attack: AttackSpec) -> bool:
    """A one-step gradient attack: FGSM's kind."""
    return attack.kind.gradient and attack.steps == 1 and not attack.kind.takes("steps")


def cross_entropy_twin(attack: AttackSpec) -> AttackSpec:
    """``attack`` with the same budget on cross-entropy: ``pgd50-dlr`` → ``pgd50``, APGD-DLR → APGD-CE."""
    if attack.kind.takes("loss"):
        return dataclasses.replace(attack, loss="ce")
    if attack.kind.cross_entropy_twin is None:
        raise ValueError(f"{attack.label} has no cross-entropy twin to compare its loss with")
    return dataclasses.replace(attack, name=attack.kind.cross_entropy_twin)


def doubled(base: AttackSpec, eps: float) -> AttackSpec:
    """``base`` with twice the steps and restarts at the same step size α: more search, not a finer one."""
    return dataclasses.replace(
        base,
        steps=2 * base.steps,
        restarts=2 * base.restarts,
        step_ratio=base.alpha(eps) / eps if eps > 0 else base.step_ratio,
    )


def measure_masking_checks(
    model: nn.Module,
    surrogate: nn.Module,
    data,
    *,
    base: AttackSpec,
    eps: float,
    survivors: torch.Tensor,
    suite: Sequence[AttackSpec] = (),
    dlr: AttackSpec | None = None,
    square: AttackSpec | None = None,
    seed: int = 0,
    runtime: Runtime | None = None,
    progress: bool = False,
) -> dict:
    """The extra attacks of the checks at ``eps``, on the images of ``data`` (an ImageData).

    ``survivors`` are the indices of the images the caller's own attacks left robust. The ``suite``'s
    attacks (APGD-CE, APGD-T: the strong evaluation) run first on those, chained, and what they leave is the
    worst case before the checks (``numbers["suite"]``). Doubled PGD, and the other loss ``dlr`` (APGD-DLR)
    beside APGD-CE of the same budget, attack every image, so that each compares like with like (a check run
    on what stronger attacks left can hardly fail); the gradient-free ``square`` attacks what every gradient
    attack left; uniform noise and the transfer attack from ``surrogate`` attack every image. Returns each
    attack's accuracy and hyperparameters, and ``robust_after_all``: per image, robust against the caller's
    attacks and all of these (a CPU bool tensor).
    """
    run = _Run(model, data, eps=eps, seed=seed, runtime=runtime, progress=progress)
    robust = torch.zeros(run.n, dtype=torch.bool)
    robust[survivors] = True
    numbers: dict = {"eps": eps, "n": run.n}
    if suite:  # the strong evaluation, chained on what the caller's attacks left: the worst case before
        kept, numbers["suite"] = run.measure(list(suite), survivors, chain=True)
        robust &= kept
        numbers["suite"]["accuracy"] = robust.float().mean().item()
    pairs = [("pgd_doubled", doubled(base, eps), None)] + ([("dlr", dlr, cross_entropy_twin(dlr))] if dlr else [])
    for key, attack, reference in pairs:  # like with like, on every image
        kept, numbers[key] = run.measure([attack], None)
        robust &= kept
        if reference is not None:
            same, record = run.measure([reference], None)
            robust &= same
            numbers[key] |= {f"reference_{k}": v for k, v in record.items() if k in ("accuracy", "hyperparameters")}
            numbers[key]["reference"] = reference.label
    if square is not None:  # on what every gradient attack left
        before = robust.float().mean().item()
        kept, numbers["square"] = run.measure([square], robust.nonzero().squeeze(1))
        robust &= kept
        numbers["square"]["before"] = before
    noise_flags, numbers["noise"] = run.measure([AttackSpec("noise", norm=base.norm)], None)
    transfer = transfer_flags(model, surrogate, data, attack=base, eps=eps, seed=seed, runtime=runtime)
    robust &= noise_flags & transfer
    numbers["transfer"] = {
        "label": base.label,
        "accuracy": transfer.float().mean().item(),
        "hyperparameters": base.hyperparameters(eps),
    }
    return {**numbers, "robust_after_all": robust}


class _Run:
    """The checks' extra attacks on one model: each on the images it is given, its per-image verdicts."""

    def __init__(self, model: nn.Module, data, *, eps: float, seed: int, runtime: Runtime | None, progress: bool):
        self.model, self.data, self.eps, self.seed = model, data, eps, seed
        self.runtime, self.progress = runtime, progress
        self.x, self.y = data.tensors()
        self.n = len(self.y)

    def measure(self, attacks: list[AttackSpec], images: torch.Tensor | None, *, chain: bool = False):
        """:meth:`left_robust`, and its record: the label(s), accuracy over every image, hyperparameters, how
        many images it attacked and the time it took."""
        start = time.perf_counter()
        kept = self.left_robust(attacks, images, chain=chain)
        hyper = {a.label: a.hyperparameters(self.eps) for a in attacks}
        record = {
            **({"labels": list(hyper)} if chain else {"label": attacks[0].label}),
            "accuracy": kept.float().mean().item(),
            "hyperparameters": hyper if chain else hyper[attacks[0].label],
            "images": self.n if images is None else len(images),
            "seconds": time.perf_counter() - start,
        }
        return kept, record

    def left_robust(self, attacks: list[AttackSpec], images: torch.Tensor | None, *, chain: bool = False):
        """Per image of the data: robust under every one of ``attacks`` run on ``images`` (indices; None:
        all of them, as the data come), False for an image not attacked."""
        kept = torch.zeros(self.n, dtype=torch.bool)
        if images is not None and not len(images):
            return kept
        data = self.data if images is None else (self.x[images], self.y[images])
        result = evaluate(
            self.model,
            data,
            attacks=attacks,
            eps=[self.eps],
            chain=chain,
            seed=self.seed + 1,
            progress=self.progress,
            keep_per_example=True,
            runtime=self.runtime,
            checks=False,
        )
        flags = torch.ones(len(result.per_example["clean"]), dtype=torch.bool)
        for attack in attacks:
            flags &= result.per_example[f"{attack.label}@{self.eps:g}"]
        if images is None:
            return flags
        kept[images] = flags
        return kept


__all__ = ["cross_entropy_twin", "doubled", "is_pgd", "is_single_step", "measure_masking_checks", "strongest_pgd"]
