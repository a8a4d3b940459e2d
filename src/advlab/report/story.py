"""The report's words: the story at the top of report.html, and the summary ``advlab study`` prints."""

from __future__ import annotations

from advlab.report.arms_race import defense_name
from advlab.report.figures import model_label
from advlab.report.markup import at, escape, in_words
from advlab.report.tables import check_status
from advlab.results import (
    best_robust_model,
    headline_worst_case,
    pareto_frontier,
    percent,
    points,
    strongest_attack,
    tradeoff_points,
    train_index,
)


def story(metrics: dict) -> str:
    """The findings in one plain-words paragraph (HTML), every sentence computed from metrics.json."""
    sentences: list[str] = []
    for say in (_standard, _most_robust, _frontier, _largest_budget, _sanity, _arms_race, _warnings):
        sentences += say(metrics)
    return " ".join(sentences)


def _standard(metrics: dict) -> list[str]:
    i, attack = train_index(metrics), strongest_attack(metrics)
    standard = metrics["models"].get("standard") or {}
    base, broken = standard.get("clean_accuracy"), at((standard.get("robust_accuracy") or {}).get(attack), i)
    if base is None or broken is None:
        return []
    return [
        f"The standard model is {percent(base)} accurate on clean images but {percent(broken)} under "
        f"{escape(attack)} at ε = {metrics['eps_grid'][i]:g}."
    ]


def _most_robust(metrics: dict) -> list[str]:
    i, attack, best = train_index(metrics), strongest_attack(metrics), best_robust_model(metrics)
    model = metrics["models"].get(best) or {}
    base = (metrics["models"].get("standard") or {}).get("clean_accuracy")
    kept, clean = at((model.get("robust_accuracy") or {}).get(attack), i), model.get("clean_accuracy")
    if kept is None:
        return []
    text = f"{escape(model_label(metrics, best))}, the most robust model, keeps {percent(kept)} under {escape(attack)}"
    if base is not None and clean is not None:
        text += (
            f" at a cost of {points(base, clean)} points of clean accuracy ({percent(clean)})"
            if clean <= base
            else f" and is even {points(clean, base)} points more accurate on clean images ({percent(clean)})"
        )
    worst = headline_worst_case(metrics, best)
    return [
        text
        + (f"; its worst case over all attacks is {percent(worst)}." if worst is not None and worst != kept else ".")
    ]


def _frontier(metrics: dict) -> list[str]:
    chosen = tradeoff_points(metrics)
    if len(chosen) <= 2:
        return []
    frontier = pareto_frontier(chosen)
    beaten = []
    for name in (n for n in chosen if n not in frontier):
        by = next(f for f in frontier if all(a >= b for a, b in zip(chosen[f], chosen[name])))
        beaten.append(f"{escape(model_label(metrics, by))} beats {escape(model_label(metrics, name))}")
    names = escape(in_words([model_label(metrics, n) for n in reversed(frontier)]))
    verdict = (
        "no model is beaten on both counts by another."
        if not beaten
        else f"{names} {'is' if len(frontier) == 1 else 'are'} on the Pareto frontier; {in_words(beaten)} on both "
        "counts."
    )
    return [
        f"Weighing clean against worst-case robust accuracy at ε = {metrics['eps_grid'][train_index(metrics)]:g}, "
        + verdict
    ]


def _largest_budget(metrics: dict) -> list[str]:
    chance, grid, models = metrics.get("chance_accuracy"), metrics["eps_grid"], metrics["models"].values()
    top = max(
        (m["worst_case_accuracy"][-1] for m in models if at(m.get("worst_case_accuracy"), -1) is not None), default=None
    )
    if top is None or chance is None:
        return []
    return [
        f"At the largest budget, ε = {grid[-1]:g}, the best worst-case accuracy is {percent(top)}, "
        + ("at or below chance" if top <= chance else "still above chance")
        + f" ({percent(chance)})."
    ]


def _sanity(metrics: dict) -> list[str]:
    checks = metrics.get("sanity_checks") or []
    failed = [c for c in checks if check_status(c) == "fail"]
    idle = sum(check_status(c) == "not applicable" for c in checks)
    if checks and not failed:
        return [
            f"All {len(checks) - idle} applicable sanity checks against gradient masking pass"
            + (f" ({idle} not applicable: the model left nothing for them to test)." if idle else ".")
        ]
    if failed:
        which = "; ".join(f"{model_label(metrics, c.get('model'))}: {c.get('check')}" for c in failed)
        return [
            f"{len(failed)} of {len(checks)} sanity checks against gradient masking "
            f"{'fails' if len(failed) == 1 else 'fail'} ({escape(which)}): read those robust numbers with care."
        ]
    return []


def _arms_race(metrics: dict) -> list[str]:
    rows = (metrics.get("arms_race") or {}).get("rows", [])
    fooled = max(
        (r for r in rows if r["model"] == "standard" and r["defense"] is not None and not r.get("resists")),
        key=lambda r: r["naive"] - r["adaptive"],
        default=None,
    )
    if fooled is None or fooled["naive"] <= fooled["adaptive"]:
        return []
    return [
        f"Behind {escape(defense_name(fooled['defense']))}, the standard model looks {percent(fooled['naive'])} "
        f"robust to a naive attack, but an adaptive one ({escape(fooled['adaptive_attack'])}) brings it to "
        f"{percent(fooled['adaptive'])}: preprocessing hides the gradient rather than adding robustness."
    ]


def _warnings(metrics: dict) -> list[str]:
    sentences = []
    for name, model in metrics["models"].items():
        for warning in model.get("model_flags") or []:
            sentences.append(
                f"The model warnings concern {escape(model_label(metrics, name))}: {escape(warning.get('message'))}."
            )
        if model.get("collapse"):
            sentences.append(
                f"The training of {escape(model_label(metrics, name))} collapsed: {escape(model['collapse'])}."
            )
    return sentences


def summary_text(metrics: dict) -> str:
    """The study's outcome in a few plain-text lines, for the terminal: each model's clean and headline
    worst-case accuracy, and the sanity checks that failed."""
    lines = [f"{'model':<22} {'clean':>7} {'worst case at ε = ' + format(metrics['train_eps'], 'g'):>24}"]
    for name, model in metrics["models"].items():
        worst = headline_worst_case(metrics, name)
        lines.append(f"{model['label']:<22} {100 * model['clean_accuracy']:>6.2f}% {100 * worst:>23.2f}%")
    lines.append("(worst case over every attack run at that ε, the sanity checks' included)")
    statuses = [check_status(c) for c in metrics["sanity_checks"]]
    failed = [c for c in metrics["sanity_checks"] if check_status(c) == "fail"]
    lines.append(
        f"sanity checks: {statuses.count('pass')} passed, {len(failed)} failed, "
        f"{statuses.count('not applicable')} not applicable"
    )
    lines += [f"  FAILED {check['model']}: {check['check']} ({check['detail']})" for check in failed]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- tables


__all__ = ["story", "summary_text"]
