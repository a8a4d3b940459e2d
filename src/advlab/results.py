"""The arithmetic of results, shared by the study, its checks, the report and the command line.

Everything here works on plain numbers and on the dictionaries of ``metrics.json`` (a study's results),
never on models or files: the worst case over attacks at the training ε, the Pareto frontier of clean
against robust accuracy, the most robust model, and the one way an accuracy is written (:func:`percent`)::

    from advlab.results import headline_worst_case, pareto_frontier, percent
    percent(headline_worst_case(metrics, "pgd"))          # "75.6%"
"""

from __future__ import annotations

import math


def percent(value: float | None) -> str:
    """The one way the report writes an accuracy (a fraction in [0, 1]): ``0.9083`` → ``"90.8%"``.

    One decimal: with 1,000 test images, 0.1 point is one image, so more digits would be noise.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.1f}%"


def points(higher: float, lower: float) -> str:
    """A difference in percentage points between two accuracies, as the reader would compute it from the
    rounded :func:`percent` values (so that 90.8% − 86.7% reads 4.1 points, never 4.0)."""
    return f"{round(100 * higher, 1) - round(100 * lower, 1):.1f}"


def train_index(metrics: dict) -> int:
    """Where the training ε sits in the ε grid (the nearest grid point if it is not on it)."""
    grid, train_eps = metrics["eps_grid"], metrics.get("train_eps")
    if train_eps is None:
        return len(grid) - 1
    return min(range(len(grid)), key=lambda i: abs(grid[i] - train_eps))


def attack_labels(metrics: dict) -> list[str]:
    """Every attack some model was evaluated with, in the order they appear."""
    return list(dict.fromkeys(a for m in metrics["models"].values() for a in m.get("robust_accuracy") or {}))


def pareto_frontier(points_: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (clean, robust) no other point beats on both counts, by increasing clean accuracy."""
    frontier = [
        a
        for a, (c, r) in points_.items()
        if not any(c2 >= c and r2 >= r and (c2, r2) != (c, r) for b, (c2, r2) in points_.items() if b != a)
    ]
    return sorted(frontier, key=lambda n: points_[n][0])


def headline_worst_case(metrics: dict, name: str) -> float | None:
    """Model ``name``'s worst-case accuracy at the training ε over every attack run there: the study's
    attacks and, where recorded, the sanity checks' extra ones (``worst_case_all_attacks``)."""
    m, i = metrics["models"][name], train_index(metrics)
    everything = m.get("worst_case_all_attacks") or {}
    if isinstance(everything.get("accuracy"), (int, float)):
        return everything["accuracy"]
    worst = m.get("worst_case_accuracy") or []
    return worst[i] if len(worst) > i else None


def tradeoff_points(metrics: dict) -> dict[str, tuple[float, float]]:
    """name → (clean accuracy, worst-case robust accuracy at the training ε), for models that have both."""
    chosen = {}
    for name, m in metrics["models"].items():
        worst = headline_worst_case(metrics, name)
        if m.get("clean_accuracy") is not None and worst is not None:
            chosen[name] = (m["clean_accuracy"], worst)
    return chosen


def best_robust_model(metrics: dict) -> str | None:
    """``best_robust_model`` from metrics.json, or else the adversarially trained (non-standard) model with
    the highest worst-case accuracy at the training ε over every attack run there (:func:`headline_worst_case`)."""
    if metrics.get("best_robust_model") in metrics["models"]:
        return metrics["best_robust_model"]
    chosen = {n: p for n, p in tradeoff_points(metrics).items() if n != "standard"}
    return max(chosen, key=lambda n: chosen[n][1], default=None)


def strongest_attack(metrics: dict) -> str | None:
    """The story's attack: the study's ``headline_attack`` (its strongest PGD), or in a metrics.json written
    before it was recorded, the strongest by budget (PGD first, then iterations × restarts)."""
    if metrics.get("headline_attack") in attack_labels(metrics):
        return metrics["headline_attack"]
    specs = metrics.get("attacks") or {}

    def budget(label: str) -> tuple[bool, int]:
        spec = specs.get(label) or {}
        return spec.get("name") == "pgd", (spec.get("steps") or 0) * (spec.get("restarts") or 1)

    return max(attack_labels(metrics), key=budget, default=None)
