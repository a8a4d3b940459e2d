"""Figures and the HTML report of a run: adversarial-example galleries and the trade-off study's report.

Python::

    from advlab.report import build_report, save_gallery
    build_report("runs/quick")    # figures/*.png and report.html, from metrics.json + gallery.safetensors
    save_gallery("gallery.png", x, x_adv, y, logits_clean, logits_adv, classes=info.classes, eps=0.1)

Command line: ``advlab report runs/quick`` rebuilds ``report.html`` from the saved files (``advlab study``
calls it at the end); ``advlab attack RUN_DIR --attack pgd20 --eps 0.1 --out attack-out`` writes ``gallery.png``.

The report reads only ``metrics.json`` and ``gallery.safetensors``, never live objects, and is a single
self-contained HTML file (images inlined as data URIs, inline CSS, no script, no external address), so it
opens offline and can be mailed around. Every percentage in it goes through :func:`percent`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from advlab.errors import AdvlabError
from advlab.runs import atomic_write_bytes, atomic_write_text, load_tensors, read_json

CHANCE_STYLE = dict(color="0.45", linestyle="--", linewidth=1.2)  # dashed grey: the floor every model falls to
ATTACK_STYLES = ("-", ":", "-.", (0, (5, 1.5)))  # line style = attack; colour = model
ATTACK_MARKERS = ("o", "s", "^", "D")


def percent(value: float | None) -> str:
    """The one way the report writes an accuracy (a fraction in [0, 1]): ``0.9083`` → ``"90.8%"``."""
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


def figure_bytes(fig, *, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- gallery


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
        true = _plain(classes[int(labels[i])])
        pc, pa = int(prob_clean[i].argmax()), int(prob_adv[i].argmax())
        # Success is a wrong prediction, or for a targeted attack the target's.
        fooled = pa == int(targets[i]) if targets is not None else pa != int(labels[i])
        delta = (x_adv[i] - x[i]).float().mean(0).detach().cpu().numpy()
        panels = [
            (_image(x[i]), cmap, dict(vmin=0, vmax=1),
             f"original: {_plain(classes[pc])}\n{percent(float(prob_clean[i, pc]))} (true: {true})", "black"),
            (delta, "seismic", dict(vmin=-limit, vmax=limit), f"perturbation\n(±{limit:.3g}, ε = {eps:.3g})", "black"),
            (_image(x_adv[i]), cmap, dict(vmin=0, vmax=1),
             f"adversarial: {_plain(classes[pa])}\n{percent(float(prob_adv[i, pa]))}"
             + (f" (target: {_plain(classes[int(targets[i])])})" if targets is not None else ""),
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

    The perturbation is shown on a diverging colour scale from −ε (blue) to +ε (red), averaged over
    colour channels, so that its size is visible whatever ε is.
    """
    fig = _pyplot().figure(figsize=(6.6, 2.2 * x.shape[0] + 1.0), layout="constrained")
    _draw_gallery(fig, x, x_adv, labels, logits_clean, logits_adv, classes=classes, eps=eps, title=title,
                  targets=targets)
    return fig


def save_gallery(path: str | Path, *args, **kwargs) -> Path:
    """Render :func:`gallery_figure` to a PNG file, atomically."""
    return atomic_write_bytes(path, figure_bytes(gallery_figure(*args, **kwargs)))


# ------------------------------------------------------------------------------------------- study figures


def _eps_label(metrics: dict) -> str:
    norms = {h.get("norm") for rows in metrics.get("attack_hyperparameters", {}).values() for h in rows}
    norm = "L2" if norms == {"l2"} else "L∞"
    return f"ε ({norm}, pixel units)"


def _train_index(metrics: dict) -> int:
    """Where the training ε sits in the ε grid (the nearest grid point if it is not on it)."""
    grid, train_eps = metrics["eps_grid"], metrics.get("train_eps")
    if train_eps is None:
        return len(grid) - 1
    return min(range(len(grid)), key=lambda i: abs(grid[i] - train_eps))


def _colours(metrics: dict) -> dict[str, Any]:
    """One colour per model, the same in every figure: tab10 in the order of metrics.json."""
    palette = _pyplot().get_cmap("tab10").colors
    return {name: palette[i % len(palette)] for i, name in enumerate(metrics["models"])}


def _label(metrics: dict, name: str) -> str:
    return str(metrics["models"].get(name, {}).get("label") or name)


def _values(series: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else 100 * v for v in series]


def robust_vs_eps_figure(metrics: dict):
    plt = _pyplot()
    from matplotlib.lines import Line2D

    grid, colours = metrics["eps_grid"], _colours(metrics)
    attacks = list(dict.fromkeys(a for m in metrics["models"].values() for a in m.get("robust_accuracy", {})))
    fig, ax = plt.subplots(figsize=(8.2, 5.0), layout="constrained")
    for name, model in metrics["models"].items():
        for j, attack in enumerate(attacks):
            if attack in model.get("robust_accuracy", {}):
                ax.plot(grid, _values(model["robust_accuracy"][attack]), color=colours[name],
                        linestyle=ATTACK_STYLES[j % 4], marker=ATTACK_MARKERS[j % 4], markersize=4, linewidth=1.6)
    chance = metrics.get("chance_accuracy")
    if chance is not None:
        ax.axhline(100 * chance, **CHANCE_STYLE)
    if metrics.get("train_eps") is not None:
        ax.axvline(metrics["train_eps"], color="0.75", linestyle=":", linewidth=1)
    models = [Line2D([], [], color=colours[n], linewidth=2.5, label=_plain(_label(metrics, n))) for n in metrics["models"]]
    styles = [Line2D([], [], color="0.2", linestyle=ATTACK_STYLES[j % 4], marker=ATTACK_MARKERS[j % 4],
                     markersize=4, label=_plain(a)) for j, a in enumerate(attacks)]
    extra = ([Line2D([], [], label=f"chance ({percent(chance)})", **CHANCE_STYLE)] if chance is not None else [])
    extra += [Line2D([], [], color="0.75", linestyle=":", label=f"training ε = {metrics['train_eps']:g}")] \
        if metrics.get("train_eps") is not None else []
    first = ax.legend(handles=models, title="model (colour)", loc="upper right", fontsize=8, title_fontsize=8)
    ax.add_artist(first)
    ax.legend(handles=styles + extra, title="attack (line style)", loc="center right", fontsize=8, title_fontsize=8)
    ax.set(xlabel=_eps_label(metrics), ylabel="accuracy (%)", ylim=(0, 100),
           title=f"Robust accuracy against the perturbation budget ({metrics.get('n_eval', '?')} test images)")
    ax.grid(alpha=0.3)
    return fig


def pareto_frontier(points_: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (clean, robust) no other point beats on both counts, by increasing clean accuracy."""
    frontier = [a for a, (c, r) in points_.items()
                if not any(c2 >= c and r2 >= r and (c2, r2) != (c, r) for b, (c2, r2) in points_.items() if b != a)]
    return sorted(frontier, key=lambda n: points_[n][0])


def _tradeoff_points(metrics: dict) -> dict[str, tuple[float, float]]:
    i = _train_index(metrics)
    return {name: (m["clean_accuracy"], m["worst_case_accuracy"][i]) for name, m in metrics["models"].items()
            if m.get("clean_accuracy") is not None and m.get("worst_case_accuracy")}


def tradeoff_figure(metrics: dict):
    plt = _pyplot()
    colours, chosen = _colours(metrics), _tradeoff_points(metrics)
    frontier = pareto_frontier(chosen)
    eps = metrics["eps_grid"][_train_index(metrics)]
    fig, ax = plt.subplots(figsize=(7.0, 5.0), layout="constrained")
    if frontier:
        ax.plot([100 * chosen[n][0] for n in frontier], [100 * chosen[n][1] for n in frontier], color="0.3",
                linewidth=1.2, linestyle="-", zorder=1, label="Pareto frontier")
    middle = sorted(c for c, _ in chosen.values())[len(chosen) // 2] if chosen else 0
    for name, (clean, robust) in chosen.items():
        left = clean < middle  # labels of the less accurate half go left, so neighbours do not overprint
        ax.scatter(100 * clean, 100 * robust, s=70, color=colours[name], zorder=2, edgecolor="black",
                   linewidth=0.8 if name in frontier else 0, label=_plain(_label(metrics, name)))
        ax.annotate(f"{_plain(_label(metrics, name))}\n{percent(clean)}, {percent(robust)}", (100 * clean, 100 * robust),
                    textcoords="offset points", xytext=(-8, 5) if left else (8, 5), ha="right" if left else "left",
                    fontsize=8)
    if metrics.get("chance_accuracy") is not None:
        ax.axhline(100 * metrics["chance_accuracy"], label=f"chance ({percent(metrics['chance_accuracy'])})",
                   **CHANCE_STYLE)
    cleans = [100 * c for c, _ in chosen.values()] or [0, 100]
    ax.set_xlim(max(0, min(cleans) - 6), min(100, max(cleans) + 8))
    ax.set_ylim(0, 100)
    ax.set(xlabel="clean accuracy (%)", ylabel=f"robust accuracy (%), worst case at ε = {eps:g}",
           title="The price of robustness: clean against robust accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def training_curves_figure(metrics: dict):
    plt = _pyplot()
    colours = _colours(metrics)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), sharey=True, layout="constrained")
    drawn = False
    for name, model in metrics["models"].items():
        epochs = model.get("epochs") or []
        if not epochs:
            continue
        drawn = True
        steps = [e.get("epoch", k + 1) for k, e in enumerate(epochs)]
        for ax, key in zip(axes, ("val_clean_acc", "val_robust_acc")):
            ax.plot(steps, _values([e.get(key) for e in epochs]), color=colours[name], marker="o", markersize=3,
                    label=_plain(_label(metrics, name)))
    from matplotlib.ticker import MaxNLocator

    eps = metrics.get("train_eps")
    for ax, what in zip(axes, ("clean accuracy", "robust accuracy" + (f" (PGD, ε = {eps:g})" if eps is not None else ""))):
        ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title=f"validation {what}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no per-epoch records in metrics.json", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    fig.suptitle("Training curves: accuracy on held-out training images after each epoch", fontsize=11)
    return fig


def comparison_gallery_figure(tensors: dict, info: dict, metrics: dict):
    """:func:`gallery_figure`'s panels for each gallery model side by side, on the same images."""
    names = [n for n in info.get("models", []) if f"{n}.x_adv" in tensors]
    n = tensors["x"].shape[0]
    fig = _pyplot().figure(figsize=(6.6 * len(names), 2.2 * n + 1.4), layout="constrained")
    for sub, name in zip(fig.subfigures(1, len(names), wspace=0.04, squeeze=False)[0], names):
        _draw_gallery(sub, tensors["x"], tensors[f"{name}.x_adv"], tensors["labels"], tensors[f"{name}.logits_clean"],
                      tensors[f"{name}.logits_adv"], classes=metrics["classes"], eps=info.get("eps", 0.0),
                      title=_plain(_label(metrics, name)), title_size=11)
    fig.suptitle(f"{_plain(info.get('attack', 'attack'))} at ε = {info.get('eps', 0):g}: the same images against "
                 "each model (red: the attack fooled the model)", fontsize=11)
    return fig


def targeted_gallery_figure(tensors: dict, info: dict, metrics: dict):
    name, attack = info.get("targeted_model", "standard"), str(info.get("targeted_attack", "attack"))
    return gallery_figure(tensors["x"], tensors["targeted.x_adv"], tensors["labels"], tensors["targeted.logits_clean"],
                          tensors["targeted.logits_adv"], classes=metrics["classes"], eps=info.get("targeted_eps", 0.0),
                          targets=tensors["targeted.targets"],
                          title=f"{_plain(attack if 'targeted' in attack else 'targeted ' + attack)} against "
                                f"{_plain(_label(metrics, name))} at ε = {info.get('targeted_eps', 0):g}\n"
                                "(red: the model now predicts the target class)")


# ------------------------------------------------------------------------------------------- HTML

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;max-width:1120px;
margin:2em auto;padding:0 1.2em;background:#fff}
h1{font-size:1.7em;margin-bottom:.1em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #dde2ea;
padding-bottom:.2em}.meta{color:#5a6472;font-size:.9em}.story{font-size:1.08em;background:#f5f8fc;
border-left:4px solid #3a6fb0;padding:.8em 1.1em;margin:1.2em 0}figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eef0f4}figcaption{color:#5a6472;font-size:.9em}
table{border-collapse:collapse;font-size:.88em;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde2ea;padding:.25em .55em;text-align:right;vertical-align:top}
th{background:#f2f4f8}td.l,th.l{text-align:left}td.train{background:#fff7e0}
.badge{display:inline-block;min-width:3.2em;text-align:center;border-radius:3px;font-weight:600;
font-size:.85em;padding:.05em .4em;color:#fff}.pass{background:#2e7d32}.fail{background:#c62828}
.note{color:#8a5a00}.small{font-size:.85em;color:#5a6472}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: str = ".4g") -> str:
    return "—" if value is None else format(value, digits) if isinstance(value, (int, float)) else _e(value)


def _img(data: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>'


def _strongest_attack(metrics: dict) -> str | None:
    """The strongest single attack by budget (iterations × restarts): the story's headline attack."""
    specs = metrics.get("attacks") or {}
    labels = list(dict.fromkeys(a for m in metrics["models"].values() for a in m.get("robust_accuracy", {})))
    if not labels:
        return None
    budget = {a: (specs.get(a, {}).get("name") == "pgd", specs.get(a, {}).get("steps", 0) * specs.get(a, {}).get("restarts", 1))
              for a in labels}
    return max(labels, key=lambda a: budget[a])


def story(metrics: dict) -> list[str]:
    """The findings in plain words, each sentence computed from metrics.json (HTML-escaped)."""
    models, i = metrics["models"], _train_index(metrics)
    eps, attack = metrics["eps_grid"][i], _strongest_attack(metrics)
    sentences = []
    standard, best = models.get("standard"), metrics.get("best_robust_model")
    if standard and attack:
        sentences.append(f"The standard model is {percent(standard.get('clean_accuracy'))} accurate on clean images "
                         f"but {percent(standard['robust_accuracy'][attack][i])} under {_e(attack)} at ε = {eps:g}.")
    if best in models and attack:
        model = models[best]
        cost = f"at a cost of {points(standard['clean_accuracy'], model['clean_accuracy'])} points of clean accuracy" \
            if standard and standard.get("clean_accuracy") is not None and model.get("clean_accuracy") is not None else ""
        if cost and standard["clean_accuracy"] < model["clean_accuracy"]:
            cost = f"and even gains {points(model['clean_accuracy'], standard['clean_accuracy'])} points of clean accuracy"
        words = [f"{_e(_label(metrics, best))}, the most robust model, keeps "
                 f"{percent(model['robust_accuracy'][attack][i])}", cost,
                 f"({percent(model.get('clean_accuracy'))} clean; worst case over all attacks "
                 f"{percent(model['worst_case_accuracy'][i])})."]
        sentences.append(" ".join(w for w in words if w))
    chosen = _tradeoff_points(metrics)
    frontier = pareto_frontier(chosen)
    if len(chosen) > 2:
        sentences.append(f"On the trade-off between clean and worst-case robust accuracy at ε = {eps:g}, "
                         f"{_e(_and([_label(metrics, n) for n in reversed(frontier)]))} "
                         f"{'is' if len(frontier) == 1 else 'are'} not beaten on both counts by any other model.")
    chance, grid = metrics.get("chance_accuracy"), metrics["eps_grid"]
    if chance is not None and models:
        top = max((m["worst_case_accuracy"][-1] for m in models.values() if m.get("worst_case_accuracy")), default=None)
        if top is not None:
            sentences.append(f"At the largest budget, ε = {grid[-1]:g}, the best worst-case accuracy is {percent(top)} "
                             f"(chance: {percent(chance)}).")
    checks = metrics.get("sanity_checks") or []
    failed = [c for c in checks if not c.get("passed")]
    if checks and not failed:
        sentences.append(f"All {len(checks)} sanity checks against gradient masking pass.")
    elif failed:
        which = "; ".join(f"{_label(metrics, c.get('model'))}: {c.get('check')}" for c in failed)
        sentences.append(f"{len(failed)} of {len(checks)} sanity checks against gradient masking fail "
                         f"({_e(which)}): "
                         "read the robust numbers with care.")
    return sentences


def _step_ratio(spec: dict, per_eps: list[dict]) -> str:
    """α/ε as configured, or as it comes out of the saved (ε, α) pairs."""
    if spec.get("step_ratio") is not None:
        return _number(spec["step_ratio"])
    ratios = [h["alpha"] / h["eps"] for h in per_eps if h.get("alpha") is not None and h.get("eps")]
    return _number(ratios[0]) if ratios else "—"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _attack_table(metrics: dict) -> str:
    rows = []
    specs = metrics.get("attacks") or {}
    train_eps = metrics["eps_grid"][_train_index(metrics)]
    for label, per_eps in (metrics.get("attack_hyperparameters") or {}).items():
        for k, h in enumerate(per_eps):
            head = ""
            if k == 0:
                span = f' rowspan="{len(per_eps)}"'
                head = (f'<td class="l"{span}>{_e(label)}</td><td class="l"{span}>{_e(h.get("attack"))}</td>'
                        f'<td class="l"{span}>{_e(h.get("norm"))}</td><td{span}>{_number(h.get("steps"))}</td>'
                        f'<td{span}>{_number(h.get("restarts"))}</td>'
                        f'<td class="l"{span}>{_e("yes" if h.get("random_start") else "no")}</td>'
                        f'<td class="l"{span}>{_e(h.get("loss"))}</td>'
                        f'<td class="l"{span}>{_e("yes" if h.get("targeted") else "no")}</td>'
                        f'<td{span}>{_step_ratio(specs.get(label, {}), per_eps)}</td>')
            mark = ' class="train"' if h.get("eps") == train_eps else ""
            rows.append(f"<tr>{head}<td{mark}>{_number(h.get('eps'), 'g')}</td><td{mark}>{_number(h.get('alpha'))}</td></tr>")
    return ('<table><tr><th class="l">attack</th><th class="l">kind</th><th class="l">norm</th><th>steps</th>'
            '<th>restarts</th><th class="l">random start</th><th class="l">loss</th><th class="l">targeted</th>'
            '<th>α / ε</th><th>ε</th><th>α (step size)</th></tr>' + "".join(rows) + "</table>")


def _results_table(metrics: dict) -> str:
    grid, i = metrics["eps_grid"], _train_index(metrics)
    head = "".join(f'<th{" class=train" if j == i else ""}>ε = {e:g}</th>' for j, e in enumerate(grid))
    rows = []
    for name, model in metrics["models"].items():
        series = list(model.get("robust_accuracy", {}).items()) + [("worst case", model.get("worst_case_accuracy") or [])]
        for k, (what, values) in enumerate(series):
            lead = (f'<td class="l" rowspan="{len(series)}">{_e(_label(metrics, name))}<br><span class="small">'
                    f'{_e(model.get("method", ""))}</span></td><td rowspan="{len(series)}">'
                    f'{percent(model.get("clean_accuracy"))}</td>') if k == 0 else ""
            cells = "".join(f'<td{" class=train" if j == i else ""}>{percent(v)}</td>' for j, v in enumerate(values))
            style = "<b>" if what == "worst case" else ""
            rows.append(f'<tr>{lead}<td class="l">{style}{_e(what)}{"</b>" if style else ""}</td>{cells}</tr>')
    return (f'<table><tr><th class="l">model</th><th>clean</th><th class="l">attack</th>{head}</tr>'
            + "".join(rows) + "</table>")


def _summary_table(metrics: dict) -> str:
    i, chosen = _train_index(metrics), _tradeoff_points(metrics)
    frontier = set(pareto_frontier(chosen))
    rows = []
    for name, model in metrics["models"].items():
        seconds = model.get("train_seconds")
        worst = model.get("worst_case_accuracy") or []
        rows.append(f'<tr><td class="l">{_e(_label(metrics, name))}</td><td class="l">{_e(model.get("method", "—"))}</td>'
                    f'<td>{percent(model.get("clean_accuracy"))}</td><td>{percent(worst[i] if worst else None)}</td>'
                    f'<td class="l">{"yes" if name in frontier else "no"}</td><td>{len(model.get("epochs") or [])}</td>'
                    f'<td>{"—" if seconds is None else f"{seconds:.0f} s"}</td></tr>')
    return ('<table><tr><th class="l">model</th><th class="l">method</th><th>clean</th>'
            f'<th>worst case at ε = {metrics["eps_grid"][i]:g}</th><th class="l">on the frontier</th><th>epochs</th>'
            '<th>training time</th></tr>' + "".join(rows) + "</table>")


def _checks_table(metrics: dict) -> str:
    checks = metrics.get("sanity_checks") or []
    if not checks:
        return '<p class="note">This run holds no sanity-check results.</p>'
    rows = []
    for c in checks:
        badge = '<span class="badge pass">PASS</span>' if c.get("passed") else '<span class="badge fail">FAIL</span>'
        numbers = ", ".join(f"{_e(k)}: {percent(v) if isinstance(v, (int, float)) else _e(v)}"
                            for k, v in (c.get("numbers") or {}).items())
        rows.append(f'<tr><td class="l">{_e(_label(metrics, c.get("model", "?")))}</td><td class="l">{_e(c.get("check"))}</td>'
                    f'<td class="l">{badge}</td><td class="l">{_e(c.get("detail", ""))}<br>'
                    f'<span class="small">{numbers}</span></td></tr>')
    passed = sum(bool(c.get("passed")) for c in checks)
    return (f"<p>{passed} of {len(checks)} checks pass.</p><table><tr><th class='l'>model</th><th class='l'>check</th>"
            "<th class='l'>result</th><th class='l'>detail</th></tr>" + "".join(rows) + "</table>")


def _load_metrics(run_dir: Path) -> dict:
    metrics = read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("models"), dict) or not metrics["models"] \
            or not isinstance(metrics.get("eps_grid"), list) or not metrics["eps_grid"]:
        raise AdvlabError(f"{run_dir / 'metrics.json'} is not a study's metrics file (no models or eps_grid); "
                          "rerun `advlab study`")
    return metrics


def _load_gallery(run_dir: Path, metrics: dict) -> tuple[dict, dict] | str:
    """The gallery's tensors and description, or why there is none (the report is still written)."""
    path = run_dir / ((metrics.get("gallery") or {}).get("file") or "gallery.safetensors")
    if not path.is_file():
        return f"{path.name} is missing: this run has no adversarial examples to show."
    try:
        tensors, meta = load_tensors(path)
        info = metrics.get("gallery") or json.loads(meta.get("gallery", "{}"))
        if "x" not in tensors or "labels" not in tensors or "classes" not in metrics:
            raise AdvlabError("it lacks the images, their labels or the class names")
    except (AdvlabError, ValueError) as err:
        return f"{path.name} could not be read ({err}); rerun `advlab study` to redraw it."
    return tensors, info


def build_report(run_dir: str | Path) -> Path:
    """Write ``figures/*.png`` and the self-contained ``report.html`` of the study in ``run_dir``; return its path.

    Reads ``metrics.json`` (required: a missing or corrupt one raises :class:`AdvlabError`) and
    ``gallery.safetensors`` (optional: without it the report says so instead of showing examples).
    """
    run_dir = Path(run_dir)
    metrics = _load_metrics(run_dir)
    figures = run_dir / "figures"
    images: dict[str, bytes] = {}

    def render(name: str, fig) -> bytes:
        images[name] = figure_bytes(fig)
        atomic_write_bytes(figures / f"{name}.png", images[name])
        return images[name]

    i = _train_index(metrics)
    eps = metrics["eps_grid"][i]
    render("robust_vs_eps", robust_vs_eps_figure(metrics))
    render("tradeoff", tradeoff_figure(metrics))
    render("training_curves", training_curves_figure(metrics))
    gallery = _load_gallery(run_dir, metrics)
    if isinstance(gallery, tuple):
        tensors, info = gallery
        render("gallery", comparison_gallery_figure(tensors, info, metrics))
        if "targeted.x_adv" in tensors:
            render("gallery_targeted", targeted_gallery_figure(tensors, info, metrics))

    missing_curves = [_label(metrics, n) for n, m in metrics["models"].items() if not m.get("epochs")]
    title = f"Adversarial robustness study: {metrics.get('preset', 'custom')} on {metrics.get('dataset', '?')}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
             f"content='width=device-width, initial-scale=1'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1><p class='meta'>{_e(len(metrics['models']))} models · {_e(metrics.get('n_eval', '?'))} "
             f"test images · training ε = {_e(metrics.get('train_eps', '?'))} · advlab {_e(metrics.get('advlab_version', '?'))}"
             f" · created {_e(metrics.get('created', '?'))}</p>",
             "<div class='story'>" + " ".join(f"<p>{s}</p>" for s in story(metrics)) + "</div>",
             "<h2>1. Robust accuracy against ε</h2>",
             _img(images["robust_vs_eps"], "robust accuracy against epsilon",
                  "Accuracy of each model (colour) under each attack (line style) as the budget ε grows; the "
                  "dashed line is chance. A curve that does not reach chance at large ε hints at a weak attack."),
             "<h2>2. Clean against robust accuracy</h2>",
             _img(images["tradeoff"], "clean against robust accuracy",
                  f"Each model's clean accuracy and worst-case robust accuracy over all attacks at ε = {eps:g}. "
                  "Models on the Pareto frontier (outlined, joined) are not beaten on both counts."),
             _summary_table(metrics),
             "<h2>3. Training curves</h2>",
             _img(images["training_curves"], "training curves", "Validation accuracy after each epoch." + (
                 f" No per-epoch records for {_e(_and(missing_curves))}." if missing_curves else "")),
             "<h2>4. Adversarial examples</h2>"]
    if "gallery" in images:
        parts.append(_img(images["gallery"], "adversarial examples",
                          f"Left to right for each model: the original and its prediction, the perturbation "
                          f"(blue −, red +; scale ±ε), the adversarial image and its prediction. "
                          f"{_e(info.get('attack', ''))} at ε = {_number(info.get('eps'), 'g')}."))
        if "gallery_targeted" in images:
            parts.append(_img(images["gallery_targeted"], "targeted adversarial examples",
                              "Targeted examples: the attack pushes each image towards a chosen class."))
    else:
        parts.append(f"<p class='note'>{_e(gallery)}</p>")
    parts += ["<h2>5. Results</h2><h3>Attacks</h3>", _attack_table(metrics),
              "<p class='small'>α is the step size in pixel units; ε values on the training budget are highlighted.</p>",
              "<h3>Accuracy by model, attack and ε</h3>", _results_table(metrics),
              "<p class='small'>Worst case: an image counts as robust only if it survives every attack.</p>",
              "<h2>6. Sanity checks against gradient masking</h2>",
              "<p>Carlini et al., <i>On Evaluating Adversarial Robustness</i> (2019, arXiv:1902.06705): robustness "
              "that comes from hiding gradients rather than from the model fails at least one of these.</p>",
              _checks_table(metrics), "</body></html>\n"]
    return atomic_write_text(run_dir / "report.html", "\n".join(parts))
