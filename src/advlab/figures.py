"""The figures of a study's report, drawn with matplotlib (Agg) from ``metrics.json`` and the gallery tensors.

Python::

    from advlab.figures import figure_bytes, robust_vs_eps_figure
    png = figure_bytes(robust_vs_eps_figure(metrics))     # metrics: the parsed metrics.json of a study

:func:`advlab.report.build_report` draws all of them (``advlab report RUN_DIR`` on the command line). The
same model has the same colour in every figure (tab10, in the order of ``metrics.json``), line style tells
attacks apart, and the dashed grey line is chance. Every accuracy printed goes through :func:`percent`, the
report's one formatting helper, so a figure and the HTML tables always show the same digits.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from advlab.runs import atomic_write_bytes

CHANCE_STYLE = dict(color="0.45", linestyle="--", linewidth=1.2)  # dashed grey: the floor every model falls to
ATTACK_STYLES = ("-", ":", "-.", (0, (5, 1.5)))  # line style = attack; colour = model
ATTACK_MARKERS = ("o", "s", "^", "D")
DPI = 110  # sharp on a laptop screen, and the five PNGs stay under 1 MB together


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


# ------------------------------------------------------------------------------------------- gallery


def _class_name(classes: Sequence[str], index: int) -> str:
    return _plain(classes[index]) if 0 <= index < len(classes) else f"class {index}"


def _draw_gallery(fig, x, x_adv, labels, logits_clean, logits_adv, *, classes: Sequence[str], eps: float,
                  title: str = "", targets: torch.Tensor | None = None, title_size: float = 10) -> None:
    """Draw the gallery's rows into ``fig`` (a Figure or a SubFigure), with a colour bar for δ."""
    n = x.shape[0]
    axes = fig.subplots(n, 3, squeeze=False)
    prob_clean, prob_adv = logits_clean.float().softmax(1), logits_adv.float().softmax(1)
    limit = max(float((x_adv - x).abs().max()), 1e-8)
    cmap = "gray" if x.shape[1] == 1 else None
    shown = None
    for i in range(n):
        true = _class_name(classes, int(labels[i]))
        pc, pa = int(prob_clean[i].argmax()), int(prob_adv[i].argmax())
        # Success is a wrong prediction, or for a targeted attack the target's.
        fooled = pa == int(targets[i]) if targets is not None else pa != int(labels[i])
        delta = (x_adv[i] - x[i]).float().mean(0).detach().cpu().numpy()
        target = f" (target: {_class_name(classes, int(targets[i]))})" if targets is not None else ""
        panels = [
            (_image(x[i]), cmap, dict(vmin=0, vmax=1),
             f"original: {_class_name(classes, pc)}\n{percent(float(prob_clean[i, pc]))} (true: {true})", "black"),
            (delta, "seismic", dict(vmin=-limit, vmax=limit), f"+ perturbation\n(±{limit:.3g}, ε = {eps:.3g})",
             "black"),
            (_image(x_adv[i]), cmap, dict(vmin=0, vmax=1),
             f"= adversarial: {_class_name(classes, pa)}\n{percent(float(prob_adv[i, pa]))}{target}",
             "firebrick" if fooled else "black"),
        ]
        for column, (ax, (img, colours, scale, text, colour)) in enumerate(zip(axes[i], panels)):
            drawn = ax.imshow(img, cmap=colours, **scale)
            shown = drawn if column == 1 else shown
            ax.set_title(text, fontsize=8, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
    bar = fig.colorbar(shown, ax=list(axes[:, 1]), location="bottom", shrink=0.9, aspect=25, pad=0.02)
    bar.set_label("δ = x_adv − x (pixel units, mean over channels)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=title_size)


def gallery_figure(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    logits_clean: torch.Tensor,
    logits_adv: torch.Tensor,
    *,
    classes: Sequence[str],
    eps: float,
    title: str = "",
    targets: torch.Tensor | None = None,
):
    """A figure with one row per example: original (prediction, confidence), perturbation, adversarial.

    The perturbation is shown on a diverging colour scale from −max|δ| (blue) to +max|δ| (red), averaged
    over colour channels, so that it is visible whatever ε is. Predictions the attack got its way on
    (wrong, or the target for ``targets``) are red.
    """
    fig = _pyplot().figure(figsize=(6.6, 2.2 * x.shape[0] + 1.0), layout="constrained")
    _draw_gallery(fig, x, x_adv, labels, logits_clean, logits_adv, classes=classes, eps=eps, title=title,
                  targets=targets)
    return fig


def save_gallery(
    path: str | Path,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    logits_clean: torch.Tensor,
    logits_adv: torch.Tensor,
    *,
    classes: Sequence[str],
    eps: float,
    title: str = "",
    targets: torch.Tensor | None = None,
) -> Path:
    """Render :func:`gallery_figure` to a PNG file, atomically."""
    fig = gallery_figure(x, x_adv, labels, logits_clean, logits_adv, classes=classes, eps=eps, title=title,
                         targets=targets)
    return atomic_write_bytes(path, figure_bytes(fig))


def comparison_gallery_figure(tensors: dict, info: dict, metrics: dict):
    """:func:`gallery_figure`'s panels for each gallery model side by side, on the same images."""
    names = [n for n in info.get("models", []) if f"{n}.x_adv" in tensors]
    n = tensors["x"].shape[0]
    fig = _pyplot().figure(figsize=(6.6 * len(names), 2.2 * n + 1.4), layout="constrained")
    for sub, name in zip(fig.subfigures(1, len(names), wspace=0.04, squeeze=False)[0], names):
        _draw_gallery(sub, tensors["x"], tensors[f"{name}.x_adv"], tensors["labels"], tensors[f"{name}.logits_clean"],
                      tensors[f"{name}.logits_adv"], classes=metrics["classes"], eps=info.get("eps", 0.0),
                      title=_plain(model_label(metrics, name)), title_size=11)
    fig.suptitle(f"{_plain(info.get('attack', 'attack'))} at ε = {info.get('eps', 0):g}: the same images against "
                 "each model (red: the attack fooled the model)", fontsize=11)
    return fig


def targeted_gallery_figure(tensors: dict, info: dict, metrics: dict):
    name, attack = info.get("targeted_model", "standard"), str(info.get("targeted_attack", "attack"))
    eps = info.get("targeted_eps", info.get("eps", 0.0))
    return gallery_figure(tensors["x"], tensors["targeted.x_adv"], tensors["labels"], tensors["targeted.logits_clean"],
                          tensors["targeted.logits_adv"], classes=metrics["classes"], eps=eps,
                          targets=tensors["targeted.targets"],
                          title=f"{_plain(attack if 'targeted' in attack else 'targeted ' + attack)} against "
                                f"{_plain(model_label(metrics, name))} at ε = {eps:g}\n"
                                "(red: the model now predicts the target class)")


# ------------------------------------------------------------------------------------------- study figures


def norm_name(metrics: dict) -> str:
    """"L2" if every attack is an L2 attack, else "L∞" (the study's threat model)."""
    norms = {h.get("norm") for rows in (metrics.get("attack_hyperparameters") or {}).values() for h in rows}
    return "L2" if norms == {"l2"} else "L∞"


def eps_label(metrics: dict) -> str:
    return f"ε ({norm_name(metrics)}, pixel units)"


def train_index(metrics: dict) -> int:
    """Where the training ε sits in the ε grid (the nearest grid point if it is not on it)."""
    grid, train_eps = metrics["eps_grid"], metrics.get("train_eps")
    if train_eps is None:
        return len(grid) - 1
    return min(range(len(grid)), key=lambda i: abs(grid[i] - train_eps))


def model_label(metrics: dict, name: str) -> str:
    return str(metrics["models"].get(name, {}).get("label") or name)


def attack_labels(metrics: dict) -> list[str]:
    """Every attack some model was evaluated with, in the order they appear."""
    return list(dict.fromkeys(a for m in metrics["models"].values() for a in m.get("robust_accuracy") or {}))


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
                ax.plot(grid, _values(model["robust_accuracy"][attack]), color=colours[name],
                        linestyle=ATTACK_STYLES[j % 4], marker=ATTACK_MARKERS[j % 4], markersize=4, linewidth=1.6)
    chance, train_eps = metrics.get("chance_accuracy"), metrics.get("train_eps")
    extra = []
    if chance is not None:
        ax.axhline(100 * chance, **CHANCE_STYLE)
        extra.append(Line2D([], [], label=f"chance ({percent(chance)})", **CHANCE_STYLE))
    if train_eps is not None:
        ax.axvline(train_eps, color="0.75", linestyle=":", linewidth=1)
        extra.append(Line2D([], [], color="0.75", linestyle=":", label=f"training ε = {train_eps:g}"))
    models = [Line2D([], [], color=colours[n], linewidth=2.5, label=_plain(model_label(metrics, n)))
              for n in metrics["models"]]
    styles = [Line2D([], [], color="0.2", linestyle=ATTACK_STYLES[j % 4], marker=ATTACK_MARKERS[j % 4],
                     markersize=4, label=_plain(a)) for j, a in enumerate(attacks)]
    # Accuracy falls with ε, so the upper right is where the curves are not.
    first = ax.legend(handles=models, title="model (colour)", loc="upper right", fontsize=8, title_fontsize=8)
    ax.add_artist(first)
    ax.legend(handles=styles + extra, title="attack (line style)", loc="center right", fontsize=8, title_fontsize=8)
    ax.set_xticks(grid, [f"{e:g}" for e in grid])
    ax.set(xlabel=eps_label(metrics), ylabel="accuracy (%)", ylim=(0, 100),
           title=f"Robust accuracy against the perturbation budget ({count(metrics.get('n_eval'))} test images)")
    ax.grid(alpha=0.3)
    return fig


def pareto_frontier(points_: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (clean, robust) no other point beats on both counts, by increasing clean accuracy."""
    frontier = [a for a, (c, r) in points_.items()
                if not any(c2 >= c and r2 >= r and (c2, r2) != (c, r) for b, (c2, r2) in points_.items() if b != a)]
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
        ax.plot([100 * chosen[n][0] for n in frontier], [100 * chosen[n][1] for n in frontier], color="0.3",
                linewidth=1.2, zorder=1, label="Pareto frontier")
    for name, (clean, robust) in chosen.items():
        ax.scatter(100 * clean, 100 * robust, s=70, color=colours[name], zorder=2, edgecolor="black",
                   linewidth=0.8 if name in frontier else 0, label=_plain(model_label(metrics, name)))
    # Labels of the less accurate half go left, the rest right; on each side they are spread vertically so
    # that close models (TRADES at two β, say) do not print over each other.
    middle = sorted(c for c, _ in chosen.values())[len(chosen) // 2] if chosen else 0
    for left in (True, False):
        side = sorted((n for n in chosen if (chosen[n][0] < middle) == left), key=lambda n: chosen[n][1])
        for name, y in zip(side, _spread([100 * chosen[n][1] for n in side], gap=7.0)):
            clean, robust = chosen[name]
            ax.annotate(f"{_plain(model_label(metrics, name))}\n{percent(clean)}, {percent(robust)}",
                        (100 * clean, 100 * robust), xytext=(-10 if left else 10, y),
                        textcoords=("offset points", "data"), ha="right" if left else "left", va="center",
                        fontsize=8, arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.6))
    if metrics.get("chance_accuracy") is not None:
        ax.axhline(100 * metrics["chance_accuracy"], label=f"chance ({percent(metrics['chance_accuracy'])})",
                   **CHANCE_STYLE)
    cleans = [100 * c for c, _ in chosen.values()] or [0, 100]
    ax.set_xlim(max(0, min(cleans) - 8), min(100, max(cleans) + 8))
    ax.set_ylim(0, 100)
    ax.set(xlabel="clean accuracy (%)", ylabel=f"robust accuracy (%), worst case over all attacks at ε = {eps:g}",
           title="The price of robustness: clean against robust accuracy")
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
                ax.plot(steps, _values(values), color=colours[name], marker="o", markersize=3,
                        label=_plain(model_label(metrics, name)))
    eps = metrics.get("train_eps")
    robust = f"robust accuracy ({_check_attack(metrics)}" + (f", ε = {eps:g})" if eps is not None else ")")
    for ax, what, has_lines in zip(axes, ("clean accuracy", robust), drawn):
        ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title=f"validation {what}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if has_lines:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no per-epoch records in metrics.json", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    fig.suptitle("Training curves: accuracy on held-out training images after each epoch", fontsize=11)
    return fig
