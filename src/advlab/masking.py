"""Sanity checks against gradient masking (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
arXiv:1902.06705): the extra attacks behind them, and a pass/fail verdict with its numbers for each.

Robustness that comes from hiding gradients rather than from the model fails at least one of these. Each
check passes, fails, or is **not applicable** where the model leaves nothing to test (FGSM already at 0%,
say): a check that could not have failed never says "pass".

- iterative beats single-step: PGD is strictly stronger than FGSM (a tie fails);
- more steps and restarts change little: doubling PGD's steps and restarts (same step size) lowers the
  worst case by less than a point;
- another loss (DLR) finds little more: APGD-DLR on what the study's attacks left lowers it by less than a
  point;
- the gradient-free attack finds little more: Square on the same images, likewise;
- accuracy falls as ε grows: no attack's curve, and not the worst case, rises along the ε grid, and the
  worst case loses at least half its value from the grid's first ε to its last;
- reaches zero at large ε: at the largest ε at most 1% of the images survive (Carlini et al.: an
  unbounded attack breaks everything);
- random noise hurts less than PGD;
- a transfer attack (PGD on another model) is weaker than the white-box one.

Python::

    numbers = measure_masking_checks(model, surrogate, test, base=parse_attack("pgd20"), eps=0.1, survivors=idx)
    rows = sanity_checks(metrics, {"pgd-model": checks})   # by model name; what `advlab study` saves as
                                                           # models/NAME/checks.json: these numbers plus the
                                                           # study's own PGD and worst-case figures

Command line: ``advlab study`` runs them for every model and shows them in its report.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.evaluate import evaluate, transfer_flags
from advlab.results import points
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
    baseline of the checks (``numbers["suite"]``). Doubled PGD, and the other loss ``dlr`` (APGD-DLR) and
    the gradient-free ``square`` when given, then attack only what is left (an image another attack broke
    stays broken); uniform noise and the transfer attack from ``surrogate`` attack every image. Returns each
    attack's accuracy and hyperparameters, and ``robust_after_all``: per image, robust against the caller's
    attacks and all of these (a CPU bool tensor).
    """
    run = _Run(model, data, eps=eps, seed=seed, runtime=runtime, progress=progress)
    robust = torch.zeros(run.n, dtype=torch.bool)
    robust[survivors] = True
    numbers: dict = {"eps": eps, "n": run.n}
    if suite:
        start = time.perf_counter()
        kept = run.left_robust(list(suite), survivors, chain=True)
        robust &= kept
        numbers["suite"] = {
            "labels": [a.label for a in suite],
            "accuracy": robust.float().mean().item(),
            "hyperparameters": {a.label: a.hyperparameters(eps) for a in suite},
            "images": len(survivors),
            "seconds": time.perf_counter() - start,
        }
        survivors = robust.nonzero().squeeze(1)
    for key, attack in (("pgd_doubled", doubled(base, eps)), ("dlr", dlr), ("square", square)):
        if attack is not None:
            start = time.perf_counter()
            kept = run.left_robust([attack], survivors)
            robust &= kept
            numbers[key] = {
                "label": attack.label,
                "accuracy": kept.float().mean().item(),
                "hyperparameters": attack.hyperparameters(eps),
                "images": len(survivors),
                "seconds": time.perf_counter() - start,
            }
    noise = AttackSpec("noise", norm=base.norm)
    noise_flags = run.left_robust([noise], None)
    transfer = transfer_flags(model, surrogate, data, attack=base, eps=eps, seed=seed, runtime=runtime)
    robust &= noise_flags & transfer
    return {
        **numbers,
        "robust_after_all": robust,
        "noise": {
            "label": noise.label,
            "accuracy": noise_flags.float().mean().item(),
            "hyperparameters": noise.hyperparameters(eps),
        },
        "transfer": {
            "label": base.label,
            "accuracy": transfer.float().mean().item(),
            "hyperparameters": base.hyperparameters(eps),
        },
    }


class _Run:
    """The checks' extra attacks on one model: each on the images it is given, its per-image verdicts."""

    def __init__(self, model: nn.Module, data, *, eps: float, seed: int, runtime: Runtime | None, progress: bool):
        self.model, self.data, self.eps, self.seed = model, data, eps, seed
        self.runtime, self.progress = runtime, progress
        self.x, self.y = data.tensors()
        self.n = len(self.y)

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


# The bars of the checks, each with its reason.
CHANGE_LITTLE = 0.01  # a stronger attack may take less than 1 point more (in images, not float32 fractions)
REAL_FALL = 0.5  # along the ε grid the worst case must lose at least half its value at the grid's first ε
NEAR_ZERO = 0.01  # Carlini et al. 2019: at a large enough ε (almost) every example is broken: at most 1%
STATUSES = ("pass", "fail", "not applicable")


def sanity_checks(metrics: dict, checks: dict[str, dict]) -> list[dict]:
    """Carlini et al. 2019 (arXiv:1902.06705) checks against gradient masking, each with its numbers and a
    status: ``pass``, ``fail``, or ``not applicable`` where the model leaves nothing to test (a check that
    cannot fail never says "pass"). ``passed`` is True, False or None (not applicable)."""
    rows = []
    for name, model in metrics["models"].items():
        case = _Case(name, model, checks[name], metrics["eps_grid"])
        for check in (
            _iterative_beats_single_step,
            _stronger_attacks,
            _falls_with_eps,
            _reaches_zero,
            _noise,
            _transfer,
        ):
            check(case)
        rows += case.rows
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


class _Case:
    """One model's figures for the checks, and the rows they give."""

    def __init__(self, name: str, model: dict, numbers: dict, grid: list[float]) -> None:
        self.name, self.model, self.numbers, self.grid = name, model, numbers, grid
        self.eps = numbers["eps"]
        i = grid.index(self.eps)
        self.fgsm = numbers.get("single_step") or next(
            label for label in model["robust_accuracy"] if label.startswith("FGSM")
        )  # older checks.json
        self.pgd = numbers["pgd"]["label"]
        self.fgsm_acc, self.pgd_acc = model["robust_accuracy"][self.fgsm][i], numbers["pgd"]["accuracy"]
        self.before, self.n = numbers["worst_case"]["accuracy"], numbers.get("n")
        self.rows: list[dict] = []

    def add(self, check: str, passed: bool | None, detail: str, values: dict) -> None:
        status = "not applicable" if passed is None else "pass" if passed else "fail"
        self.rows.append(
            {
                "model": self.name,
                "check": check,
                "status": status,
                "passed": None if passed is None else bool(passed),
                "detail": detail,
                "numbers": values,
            }
        )

    def lost_to(self, after: float) -> float:
        """How much of the worst case an attack takes, compared in images, not in float32 fractions: a drop of
        exactly 1 point is not "less than a point"."""
        if not self.n:
            return self.before - after
        return (round(self.before * self.n) - round(after * self.n)) / self.n


def _iterative_beats_single_step(case: _Case) -> None:
    """Strict: a tie means PGD found nothing FGSM did not, which a working gradient never allows; with FGSM
    already at 0% there is nothing to beat."""
    fgsm, fgsm_acc, pgd, pgd_acc, eps = case.fgsm, case.fgsm_acc, case.pgd, case.pgd_acc, case.eps
    detail = (
        f"{pgd} {_pct(pgd_acc)} < {fgsm} {_pct(fgsm_acc)} at ε = {eps:g}"
        if fgsm_acc > 0
        else f"{fgsm} already breaks every image at ε = {eps:g}: nothing for PGD to beat"
    )
    case.add(
        "iterative beats single-step",
        None if fgsm_acc == 0 else pgd_acc < fgsm_acc,
        detail,
        {pgd: pgd_acc, fgsm: fgsm_acc},
    )


def _stronger_attacks(case: _Case) -> None:
    """Stronger attacks on what the study's attacks left robust: how far does the worst case still fall?"""
    for key, check in (
        ("pgd_doubled", "more steps and restarts change little"),
        ("dlr", "another loss (DLR) finds little more"),
        ("square", "the gradient-free attack finds little more"),
    ):
        if key not in case.numbers:
            continue
        before, after, label = case.before, case.numbers[key]["accuracy"], case.numbers[key]["label"]
        if before == 0:
            case.add(
                check,
                None,
                f"the worst case is already 0% at ε = {case.eps:g}: nothing left to find",
                {"worst case": 0.0},
            )
            continue
        case.add(
            check,
            case.lost_to(after) < CHANGE_LITTLE - 1e-9,
            f"adding {label} takes the worst case from {_pct(before)} to {_pct(after)}: "
            f"{points(before, after)} points (< {100 * CHANGE_LITTLE:g} needed)",
            {"worst case": before, f"+ {label}": after},
        )


def _falls_with_eps(case: _Case) -> None:
    """Every attack's curve and the worst case: none may rise (a single-step attack whose accuracy rises with
    ε overshoots into a flat region: masking), and the worst case must really fall."""
    grid, worst = case.grid, case.model["worst_case_accuracy"]
    curves = {**case.model["robust_accuracy"], "worst case": worst}
    rises = [
        (what, j) for what, curve in curves.items() for j in range(len(curve) - 1) if curve[j + 1] > curve[j] + 1e-9
    ]
    values = {f"worst case at ε = {e:g}": w for e, w in zip(grid, worst)}
    check = "accuracy falls as ε grows"
    if worst[0] == 0:
        case.add(check, None, f"the worst case is 0% already at ε = {grid[0]:g}", values)
    elif rises:
        what, j = rises[0]
        values.update({f"{what} at ε = {grid[k]:g}": curves[what][k] for k in (j, j + 1)})
        more = f" (and {len(rises) - 1} more rises)" if len(rises) > 1 else ""
        case.add(
            check,
            False,
            f"{what} rises from {_pct(curves[what][j])} at ε = {grid[j]:g} to "
            f"{_pct(curves[what][j + 1])} at ε = {grid[j + 1]:g}{more}",
            values,
        )
    else:
        fell = worst[-1] <= (1 - REAL_FALL) * worst[0] + 1e-9
        case.add(
            check,
            fell,
            f"the worst case goes from {_pct(worst[0])} at ε = {grid[0]:g} to {_pct(worst[-1])} "
            f"at ε = {grid[-1]:g}, never rising"
            + ("" if fell else f"; a real fall loses at least {100 * REAL_FALL:g}% of it"),
            values,
        )


def _reaches_zero(case: _Case) -> None:
    worst, grid = case.model["worst_case_accuracy"], case.grid
    case.add(
        "reaches zero at large ε",
        worst[-1] <= NEAR_ZERO + 1e-9,
        f"{_pct(worst[-1])} at ε = {grid[-1]:g} (at most {_pct(NEAR_ZERO)} needed: almost every image broken)",
        {"accuracy": worst[-1]},
    )


def _noise(case: _Case) -> None:
    noise, pgd, pgd_acc = case.numbers["noise"], case.pgd, case.pgd_acc
    case.add(
        "random noise hurts less than PGD",
        noise["accuracy"] >= pgd_acc,
        f"{noise['label']} {_pct(noise['accuracy'])} ≥ {pgd} {_pct(pgd_acc)} at ε = {case.eps:g}",
        {noise["label"]: noise["accuracy"], pgd: pgd_acc},
    )


def _transfer(case: _Case) -> None:
    transfer, pgd, pgd_acc = case.numbers["transfer"], case.pgd, case.pgd_acc
    case.add(
        "transfer attack weaker than white-box",
        transfer["accuracy"] >= pgd_acc,
        f"{pgd} from {transfer['surrogate']} {_pct(transfer['accuracy'])} ≥ white-box {_pct(pgd_acc)}",
        {"transfer": transfer["accuracy"], "white-box": pgd_acc},
    )
