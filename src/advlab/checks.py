"""Sanity checks against gradient masking (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
arXiv:1902.06705): the extra attacks behind them, and a pass/fail verdict with its numbers for each.

Robustness that comes from hiding gradients rather than from the model fails at least one of these:

- iterative beats single-step: PGD is at least as strong as FGSM;
- more steps and restarts change little: doubling PGD's steps and restarts (same step size) lowers the
  worst case by less than a point;
- accuracy falls as ε grows: no attack's curve, and not the worst case, rises along the ε grid;
- reaches chance at large ε: the worst case at the largest ε is at or below chance;
- random noise hurts less than PGD;
- a transfer attack (PGD on another model) is weaker than the white-box one.

Python::

    numbers = measure_checks(model, surrogate, test, base=parse_attack("pgd20"), eps=0.1, survivors=idx)
    rows = sanity_checks(metrics, {"pgd-model": checks})   # by model name; what `advlab study` saves as
                                                           # models/NAME/checks.json: these numbers plus the
                                                           # study's own PGD and worst-case figures

Command line: ``advlab study`` runs them for every model and shows them in its report.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.evaluate import evaluate, transfer_flags
from advlab.results import points
from advlab.runtime import Runtime


def strongest_pgd(attacks: Sequence[AttackSpec]) -> AttackSpec:
    """The PGD attack with the largest budget (steps × restarts) among ``attacks``."""
    return max((a for a in attacks if a.name == "pgd"), key=lambda a: a.steps * a.restarts)


def doubled(base: AttackSpec, eps: float) -> AttackSpec:
    """``base`` with twice the steps and restarts at the same step size α: more search, not a finer one."""
    return dataclasses.replace(base, steps=2 * base.steps, restarts=2 * base.restarts,
                               step_ratio=base.alpha(eps) / eps if eps > 0 else base.step_ratio)


def measure_checks(model: nn.Module, surrogate: nn.Module, data, *, base: AttackSpec, eps: float,
                   survivors: torch.Tensor, seed: int = 0, runtime: Runtime | None = None,
                   progress: bool = False) -> dict:
    """The extra attacks of the checks at ``eps``, on the images of ``data`` (an ImageData).

    ``survivors`` are the indices of the images the caller's own attacks left robust: doubled PGD attacks
    only those (an image another attack broke stays broken); uniform noise and the transfer attack from
    ``surrogate`` attack every image. Returns each attack's accuracy and hyperparameters, and
    ``robust_after_all``: per image, robust against the caller's attacks and all three (a CPU bool tensor).
    """
    stronger, noise = doubled(base, eps), AttackSpec("noise", norm=base.norm)
    x_all, y_all = data.tensors()
    n = len(y_all)
    robust = torch.zeros(n, dtype=torch.bool)
    if len(survivors):
        result = evaluate(model, (x_all[survivors], y_all[survivors]), attacks=[stronger], eps=[eps], seed=seed + 1,
                          progress=progress, keep_per_example=True, runtime=runtime)
        robust[survivors] = result.per_example[f"{stronger.label}@{eps:g}"]
    after_doubled = robust.float().mean().item()
    result = evaluate(model, data, attacks=[noise], eps=[eps], seed=seed + 1, progress=progress,
                      keep_per_example=True, runtime=runtime)
    noise_flags = result.per_example[f"{noise.label}@{eps:g}"]
    transfer = transfer_flags(model, surrogate, data, attack=base, eps=eps, seed=seed, runtime=runtime)
    robust &= noise_flags & transfer
    return {"eps": eps, "n": n,
            "pgd_doubled": {"label": stronger.label, "accuracy": after_doubled,
                            "hyperparameters": stronger.hyperparameters(eps)},
            "noise": {"label": noise.label, "accuracy": noise_flags.float().mean().item(),
                      "hyperparameters": noise.hyperparameters(eps)},
            "transfer": {"label": base.label, "accuracy": transfer.float().mean().item(),
                         "hyperparameters": base.hyperparameters(eps)},
            "robust_after_all": robust}


def sanity_checks(metrics: dict, checks: dict[str, dict]) -> list[dict]:
    """Carlini et al. 2019 (arXiv:1902.06705) checks against gradient masking, each pass/fail with numbers."""
    rows = []
    grid = metrics["eps_grid"]
    chance = metrics["chance_accuracy"]

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    for name, model in metrics["models"].items():
        numbers = checks[name]
        eps = numbers["eps"]
        i = grid.index(eps)
        labels = list(model["robust_accuracy"])
        fgsm = next(label for label in labels if label.startswith("FGSM"))
        pgd = numbers["pgd"]["label"]
        fgsm_acc, pgd_acc = model["robust_accuracy"][fgsm][i], numbers["pgd"]["accuracy"]

        def add(check: str, passed: bool, detail: str, values: dict) -> None:
            rows.append({"model": name, "check": check, "passed": bool(passed), "detail": detail, "numbers": values})

        add("iterative beats single-step", pgd_acc <= fgsm_acc,
            f"{pgd} {pct(pgd_acc)} ≤ {fgsm} {pct(fgsm_acc)} at ε = {eps:g}", {pgd: pgd_acc, fgsm: fgsm_acc})
        # Doubled PGD attacks what the study's attacks left robust: how far does the worst case still fall?
        doubled, before = numbers["pgd_doubled"], numbers["worst_case"]["accuracy"]
        n = numbers.get("n")
        # Compared in images, not in float32 fractions: a drop of exactly 1 point is not "less than a point".
        lost = (round(before * n) - round(doubled["accuracy"] * n)) / n if n else before - doubled["accuracy"]
        add("more steps and restarts change little", lost < 0.01 - 1e-9,
            f"adding {doubled['label']} takes the worst case from {pct(before)} to {pct(doubled['accuracy'])}: "
            f"{points(before, doubled['accuracy'])} points (< 1 needed)",
            {"worst case": before, f"+ {doubled['label']}": doubled["accuracy"]})
        # Every attack's curve and the worst case: a single-step attack whose accuracy rises with ε (its
        # step overshooting into a region where the loss is flat) is itself a sign of masked gradients.
        worst = model["worst_case_accuracy"]
        curves = {**model["robust_accuracy"], "worst case": worst}
        rises = [(what, j) for what, curve in curves.items() for j in range(len(curve) - 1)
                 if curve[j + 1] > curve[j] + 1e-9]
        detail = "no attack's accuracy and not the worst case rises along the ε grid"
        values = {f"worst case at ε = {e:g}": w for e, w in zip(grid, worst)}
        if rises:
            what, j = rises[0]
            detail = (f"{what} rises from {pct(curves[what][j])} at ε = {grid[j]:g} to {pct(curves[what][j + 1])} "
                      f"at ε = {grid[j + 1]:g}" + (f" (and {len(rises) - 1} more rises)" if len(rises) > 1 else ""))
            values.update({f"{what} at ε = {grid[k]:g}": curves[what][k] for k in (j, j + 1)})
        add("accuracy falls as ε grows", not rises, detail, values)
        add("reaches chance at large ε", worst[-1] <= chance,
            f"{pct(worst[-1])} at ε = {grid[-1]:g} (chance {pct(chance)})", {"accuracy": worst[-1], "chance": chance})
        noise = numbers["noise"]
        add("random noise hurts less than PGD", noise["accuracy"] >= pgd_acc,
            f"{noise['label']} {pct(noise['accuracy'])} ≥ {pgd} {pct(pgd_acc)} at ε = {eps:g}",
            {noise["label"]: noise["accuracy"], pgd: pgd_acc})
        transfer = numbers["transfer"]
        add("transfer attack weaker than white-box", transfer["accuracy"] >= pgd_acc,
            f"{pgd} from {transfer['surrogate']} {pct(transfer['accuracy'])} ≥ white-box {pct(pgd_acc)}",
            {"transfer": transfer["accuracy"], "white-box": pgd_acc})
    return rows
