"""The figures of a study's report, drawn with matplotlib (Agg) from ``metrics.json`` and the gallery tensors.

Python::

    from advlab.report.figures import figure_bytes, robust_vs_eps_figure
    png = figure_bytes(robust_vs_eps_figure(metrics))     # metrics: the parsed metrics.json of a study

:func:`advlab.report.build_report` draws all of them (``advlab report RUN_DIR`` on the command line). The
same model has the same colour in every figure (tab10, in the order of ``metrics.json``), line style tells
attacks apart, and the dashed grey line is chance. Every accuracy printed goes through
:func:`advlab.results.percent`, so a figure and the HTML tables always show the same digits. The galleries
are drawn by :mod:`advlab.report.gallery`.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import torch

from advlab.results import attack_labels, pareto_frontier, percent, tradeoff_points, train_index

CHANCE_STYLE = dict(color="0.45", linestyle="--", linewidth=1.2)  # dashed grey: the floor every model falls to
ATTACK_STYLES = ("-", ":", "-.", (0, (5, 1.5)))  # line style = attack; colour = model
ATTACK_MARKERS = ("o", "s", "^", "D")
DPI = 110  # sharp on a laptop screen, and the five PNGs stay under 1 MB together


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _plain(text: Any) -> str:
    """A string from a file, made safe for matplotlib (``$`` would otherwise start mathtext and may fail)."""
    return str(text).replace("$", r"\$")


def _image(t: torch.Tensor):
    """(C, H, W) in [0, 1] to what imshow wants: (H, W) for grey, (H, W, C) for colour."""
    t = t.detach().float().cpu()
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def figure_bytes(fig, *, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    return buffer.getvalue()


def norm_name(metrics: dict) -> str:
    """ "L2" if every attack is an L2 attack, else "L∞" (the study's threat model)."""
    norms = {h.get("norm") for rows in (metrics.get("attack_hyperparameters") or {}).values() for h in rows}
    return "L2" if norms == {"l2"} else "L∞"


def eps_label(metrics: dict) -> str:
    return f"ε ({norm_name(metrics)}, pixel units)"


def model_label(metrics: dict, name: str) -> str:
    return str(metrics["models"].get(name, {}).get("label") or name)


def count(n: Any) -> str:
    """A count as the report prints it: ``1000`` → ``"1,000"``."""
    return f"{n:,}" if isinstance(n, int) else "?"


def _colours(metrics: dict) -> dict[str, Any]:
    """One colour per model, the same in every figure: tab10 in the order of metrics.json."""
    palette = _pyplot().get_cmap("tab10").colors
    return {name: palette[i % len(palette)] for i, name in enumerate(metrics["models"])}


def _values(series: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else 100 * v for v in series]


def robust_vs_eps_figure(metrics: dict):
    plt = _pyplot()
    from matplotlib.lines import Line2D

    grid, colours, attacks = metrics["eps_grid"], _colours(metrics), attack_labels(metrics)
    fig, ax = plt.subplots(figsize=(8.2, 5.0), layout="constrained")
    for name, model in metrics["models"].items():
        for j, attack in enumerate(attacks):
            if attack in (model.get("robust_accuracy") or {}):
                ax.plot(
                    grid,
                    _values(model["robust_accuracy"][attack]),
                    color=colours[name],
                    linestyle=ATTACK_STYLES[j % 4],
                    marker=ATTACK_MARKERS[j % 4],
                    markersize=4,
                    linewidth=1.6,
                )
    chance, train_eps = metrics.get("chance_accuracy"), metrics.get("train_eps")
    extra = []
    if chance is not None:
        ax.axhline(100 * chance, **CHANCE_STYLE)
        extra.append(Line2D([], [], label=f"chance ({percent(chance)})", **CHANCE_STYLE))
    if train_eps is not None:
        ax.axvline(train_eps, color="0.75", linestyle=":", linewidth=1)
        extra.append(Line2D([], [], color="0.75", linestyle=":", label=f"training ε = {train_eps:g}"))
    models = [
        Line2D([], [], color=colours[n], linewidth=2.5, label=_plain(model_label(metrics, n)))
        for n in metrics["models"]
    ]
    styles = [
        Line2D(
            [],
            [],
            color="0.2",
            linestyle=ATTACK_STYLES[j % 4],
            marker=ATTACK_MARKERS[j % 4],
            markersize=4,
            label=_plain(a),
        )
        for j, a in enumerate(attacks)
    ]
    # Accuracy falls with ε, so the upper right is where the curves are not.
    first = ax.legend(handles=models, title="model (colour)", loc="upper right", fontsize=8, title_fontsize=8)
    ax.add_artist(first)
    ax.legend(handles=styles + extra, title="attack (line style)", loc="center right", fontsize=8, title_fontsize=8)
    ax.set_xticks(grid, [f"{e:g}" for e in grid])
    ax.set(
        xlabel=eps_label(metrics),
        ylabel="accuracy (%)",
        ylim=(0, 100),
        title=f"Robust accuracy against the perturbation budget ({count(metrics.get('n_eval'))} test images)",
    )
    ax.grid(alpha=0.3)
    return fig


def _spread(ys: list[float], gap: float, low: float = 5.0, high: float = 95.0) -> list[float]:
    """Label heights near ``ys`` (sorted ascending) at least ``gap`` apart and inside [low, high]."""
    out: list[float] = []
    for y in ys:
        out.append(max(y, low) if not out else max(y, out[-1] + gap))
    overflow = out[-1] - high if out else 0
    return [max(low, y - overflow) for y in out] if overflow > 0 else out


def tradeoff_figure(metrics: dict):
    plt = _pyplot()
    colours, chosen = _colours(metrics), tradeoff_points(metrics)
    frontier = pareto_frontier(chosen)
    eps = metrics["eps_grid"][train_index(metrics)]
    fig, ax = plt.subplots(figsize=(7.4, 5.0), layout="constrained")
    if frontier:
        ax.plot(
            [100 * chosen[n][0] for n in frontier],
            [100 * chosen[n][1] for n in frontier],
            color="0.3",
            linewidth=1.2,
            zorder=1,
            label="Pareto frontier",
        )
    for name, (clean, robust) in chosen.items():
        ax.scatter(
            100 * clean,
            100 * robust,
            s=70,
            color=colours[name],
            zorder=2,
            edgecolor="black",
            linewidth=0.8 if name in frontier else 0,
            label=_plain(model_label(metrics, name)),
        )
    # Labels of the less accurate half go left, the rest right; on each side they are spread vertically so
    # that close models (TRADES at two β, say) do not print over each other.
    middle = sorted(c for c, _ in chosen.values())[len(chosen) // 2] if chosen else 0
    for left in (True, False):
        side = sorted((n for n in chosen if (chosen[n][0] < middle) == left), key=lambda n: chosen[n][1])
        for name, y in zip(side, _spread([100 * chosen[n][1] for n in side], gap=7.0)):
            clean, robust = chosen[name]
            ax.annotate(
                f"{_plain(model_label(metrics, name))}\n{percent(clean)}, {percent(robust)}",
                (100 * clean, 100 * robust),
                xytext=(-10 if left else 10, y),
                textcoords=("offset points", "data"),
                ha="right" if left else "left",
                va="center",
                fontsize=8,
                arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.6),
            )
    if metrics.get("chance_accuracy") is not None:
        ax.axhline(
            100 * metrics["chance_accuracy"], label=f"chance ({percent(metrics['chance_accuracy'])})", **CHANCE_STYLE
        )
    cleans = [100 * c for c, _ in chosen.values()] or [0, 100]
    ax.set_xlim(max(0, min(cleans) - 8), min(100, max(cleans) + 8))
    ax.set_ylim(0, 100)
    ax.set(
        xlabel="clean accuracy (%)",
        ylabel=f"robust accuracy (%), worst case over all attacks at ε = {eps:g}",
        title="The price of robustness: clean against robust accuracy",
    )
    ax.legend(fontsize=8, loc="lower left")  # robust models sit high, the standard one far right: empty here
    ax.grid(alpha=0.3)
    return fig


def _check_attack(metrics: dict) -> str:
    """The attack behind ``val_robust_acc``: PGD with the training runs' ``check_steps``, if they agree."""
    steps = {(m.get("train_config") or {}).get("check_steps") for m in metrics["models"].values()}
    return f"PGD-{steps.pop()}" if len(steps) == 1 and None not in steps else "PGD"


def training_curves_figure(metrics: dict):
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    colours = _colours(metrics)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), sharey=True, layout="constrained")
    keys = ("val_clean_acc", "val_robust_acc")
    drawn = [False, False]
    for name, model in metrics["models"].items():
        epochs = [e for e in model.get("epochs") or [] if isinstance(e, dict)]
        steps = [e.get("epoch", k + 1) for k, e in enumerate(epochs)]
        for k, (ax, key) in enumerate(zip(axes, keys)):
            values = [e.get(key) for e in epochs]
            if any(v is not None for v in values):
                drawn[k] = True
                ax.plot(
                    steps,
                    _values(values),
                    color=colours[name],
                    marker="o",
                    markersize=3,
                    label=_plain(model_label(metrics, name)),
                )
    eps = metrics.get("train_eps")
    robust = f"robust accuracy ({_check_attack(metrics)}" + (f", ε = {eps:g})" if eps is not None else ")")
    for ax, what, has_lines in zip(axes, ("clean accuracy", robust), drawn):
        ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title=f"validation {what}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if has_lines:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(
                0.5,
                0.5,
                "no per-epoch records in metrics.json",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.4",
            )
    fig.suptitle("Training curves: accuracy on held-out training images after each epoch", fontsize=11)
    return fig


def evaluation_curve_figure(evaluation: dict):
    """One evaluation (``advlab evaluate``'s JSON) as robust accuracy against ε: each minimum-norm attack's
    whole curve from its one run, each per-ε attack and the worst case as points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    per_eps = [(label, values) for label, values in evaluation["robust_accuracy"].items()]
    curves = evaluation.get("minimum_norm") or {}
    for k, (label, curve) in enumerate(curves.items()):
        ax.plot(
            curve["eps"],
            [100 * v for v in curve["robust_accuracy"]],
            label=_plain(label),
            linestyle=ATTACK_STYLES[k % len(ATTACK_STYLES)],
            linewidth=1.8,
        )
    if evaluation.get("per_eps", True):  # per-ε figures (not the placeholder ε of a curve alone)
        for k, (label, values) in enumerate(per_eps):
            if label in curves:
                continue
            ax.plot(
                evaluation["eps"],
                [100 * v for v in values],
                marker=ATTACK_MARKERS[k % len(ATTACK_MARKERS)],
                linestyle="none",
                label=_plain(label),
            )
        if len(per_eps) > 1:
            ax.plot(
                evaluation["eps"],
                [100 * v for v in evaluation["worst_case_accuracy"]],
                "k_",
                markersize=14,
                label="worst case",
            )
    ax.set_xlabel("ε")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{evaluation.get('n', '?')} images", fontsize=10)
    return fig
