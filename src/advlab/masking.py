"""Sanity checks against gradient masking (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
arXiv:1902.06705): the extra attacks behind them, and a pass/fail verdict with its numbers for each.

Robustness that comes from hiding gradients rather than from the model fails at least one of these. Each
check passes, fails, or is **not applicable** where the model leaves nothing to test (FGSM already at 0%,
say): a check that could not have failed never says "pass".

- iterative beats single-step: PGD is strictly stronger than FGSM (a tie fails);
- more steps and restarts change little: on every image, PGD with twice the steps and restarts (same step
  size) scores less than 3 points below PGD (it walks twice as far, so a healthy model loses a little);
- another loss (DLR) finds little more: on every image, APGD on the DLR loss scores less than a point below
  APGD on cross-entropy with the same budget (a loss whose gradient is masked, as cross-entropy is by
  logits scaled up, shows here; on what the study's attacks left, APGD-T's DLR would have hidden it);
- the gradient-free attack finds little more: Square, on what every gradient attack left, lowers the worst
  case by less than a point;
- accuracy falls as ε grows: no attack's curve, and not the worst case, rises along the ε grid, and the
  worst case loses at least half its value from the grid's first ε to its last;
- reaches zero at large ε: at the largest ε at most 1% of the images survive (Carlini et al.: an
  unbounded attack breaks everything);
- random noise hurts less than PGD;
- a transfer attack (PGD on another model) is weaker than the white-box one.

Python::

    numbers = measure_masking_checks(...)                  # advlab.masking_attacks: the extra attacks
    rows = sanity_checks(metrics, {"pgd-model": checks})   # by model name: models/NAME/checks.json

Command line: ``advlab study`` runs them for every model and shows them in its report.
"""

from __future__ import annotations

from advlab.results import points

# The bars of the checks, each with its reason.
CHANGE_LITTLE = 0.01  # a stronger attack may take less than 1 point more (in images, not float32 fractions)
# Twice PGD's steps and restarts at the same step size walk twice as far: on every image of a healthy
# PGD-trained model it scored 2 points below PGD-20 (tests/test_masking.py, 200 images), so "little" is
# under 3 points there; masked gradients that only more search gets through move it by far more.
MORE_SEARCH_LITTLE = 0.03
REAL_FALL = 0.5  # along the ε grid the worst case must lose at least half its value at the grid's first ε
NEAR_ZERO = 0.01  # Carlini et al. 2019: at a large enough ε (almost) every example is broken: at most 1%
STATUSES = ("pass", "fail", "not applicable")


def sanity_checks(metrics: dict, checks: dict[str, dict]) -> list[dict]:
    """Carlini et al. 2019 (arXiv:1902.06705) checks against gradient masking, each with its numbers and a
    status: ``pass``, ``fail``, or ``not applicable`` where the model leaves nothing to test (a check that
    cannot fail never says "pass"). ``passed`` is True, False or None (not applicable)."""
    rows = []
    hyper = metrics.get("attack_hyperparameters") or {}
    minimum_norm = [label for label, per_eps in hyper.items() if per_eps and per_eps[0].get("minimum_norm")]
    for name, model in metrics["models"].items():
        case = _Case(name, model, checks[name], metrics["eps_grid"])
        for label in minimum_norm:
            _minimum_norm_curve(case, label)
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

    def lost_to(self, after: float, before: float | None = None) -> float:
        """How far an attack takes an accuracy down from ``before`` (the worst case by default), compared in
        images, not in float32 fractions: a drop of exactly 1 point is not "less than a point"."""
        before = self.before if before is None else before
        if not self.n:
            return before - after
        return (round(before * self.n) - round(after * self.n)) / self.n


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
    """Stronger attacks, each against its like: doubled PGD against PGD and the DLR loss against
    cross-entropy, both on every image; Square against the worst case of every gradient attack, on what
    they left. How far does each fall below its baseline?"""
    numbers, pgd = case.numbers, case.pgd
    pairs = [
        ("pgd_doubled", "more steps and restarts change little", pgd, case.pgd_acc, MORE_SEARCH_LITTLE),
        ("dlr", "another loss (DLR) finds little more", None, None, CHANGE_LITTLE),
        ("square", "the gradient-free attack finds little more", "the worst case", None, CHANGE_LITTLE),
    ]
    for key, check, baseline, before, little in pairs:
        if key not in numbers:
            continue
        found = numbers[key]
        if key == "dlr":
            baseline, before = found.get("reference", "the worst case"), found.get("reference_accuracy", case.before)
        elif key == "square":
            before = found.get("before", case.before)
        after, label = found["accuracy"], found["label"]
        if before == 0:
            case.add(
                check, None, f"{baseline} is already 0% at ε = {case.eps:g}: nothing left to find", {baseline: 0.0}
            )
            continue
        case.add(
            check,
            case.lost_to(after, before) < little - 1e-9,
            f"{label} {_pct(after)} against {baseline} {_pct(before)}: {points(before, after)} points lower "
            f"(< {100 * little:g} needed)",
            {baseline: before, label: after},
        )


# A minimum-norm curve (one run for every ε) may sit above the per-ε attacks by sampling luck at a point or
# two of the grid; half a point is the bar the issue set, in images rather than float32 fractions.
CURVE_ABOVE = 0.005


def _minimum_norm_curve(case: _Case, label: str) -> None:
    """A minimum-norm attack's curve against the worst case of the per-ε attacks at every ε of the grid: above
    it, the one run missed smaller adversarials the others found, and its curve must not be read alone."""
    curves = case.model["robust_accuracy"]
    others = [values for other, values in curves.items() if other != label]
    if not others:
        return
    worst = [min(v[j] for v in others) for j in range(len(case.grid))]
    gaps = [(curves[label][j] - worst[j], case.grid[j]) for j in range(len(case.grid))]
    gap, at = max(gaps)
    n = case.n or 1
    case.add(
        "minimum-norm curve not above the per-ε attacks",
        round(gap * n) / n <= CURVE_ABOVE + 1e-9,
        f"{label} is at most {points(worst[case.grid.index(at)], curves[label][case.grid.index(at)])} points "
        f"above the per-ε worst case (at ε = {at:g}; ≤ {100 * CURVE_ABOVE:g} needed)",
        {
            f"{label} at ε = {at:g}": curves[label][case.grid.index(at)],
            f"per-ε worst case at ε = {at:g}": worst[case.grid.index(at)],
        },
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
