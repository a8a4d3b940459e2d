"""The report's certified section, from ``metrics.json``'s ``models.NAME.certified``
(:mod:`advlab.study.certified`): proven against measured robustness per model, and randomized smoothing's
certified accuracy against L2 radius.

Every accuracy goes through :func:`advlab.results.percent` and every string from the file is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any

from advlab.report.figures import _colours, _plain, _pyplot, model_label
from advlab.results import headline_worst_case, percent, points


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def certified_models(metrics: dict) -> dict[str, dict]:
    return {n: m["certified"] for n, m in metrics["models"].items() if m.get("certified")}


def smoothing_figure(metrics: dict):
    """Certified accuracy against L2 radius for each model certified by randomized smoothing."""
    plt = _pyplot()
    colours = _colours(metrics)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, certified in certified_models(metrics).items():
        smoothing = certified.get("smoothing")
        if not smoothing:
            continue
        curve = smoothing["certified_accuracy"]
        radii = [float(r) for r in curve]
        ax.plot(
            radii,
            [100 * v for v in curve.values()],
            marker="o",
            color=colours.get(name),
            label=f"{_plain(model_label(metrics, name))} (σ = {smoothing['sigma']:g})",
        )
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Randomized smoothing: accuracy certified within each L2 radius", fontsize=10)
    fig.tight_layout()
    return fig


def has_smoothing(metrics: dict) -> bool:
    return any(c.get("smoothing") for c in certified_models(metrics).values())


def certified_html(metrics: dict, figure_tag: str | None) -> str:
    """The section's table (verified beside empirical, per model), its words and the smoothing figure."""
    rows, eps = [], None
    for name, certified in certified_models(metrics).items():
        eps = certified["eps"]
        verified, empirical = certified.get("verified_accuracy"), headline_worst_case(metrics, name)
        gap = "—" if verified is None or empirical is None else points(empirical, verified)
        note = _e(certified["unsupported"]) if certified.get("unsupported") else ""
        rows.append(
            f"<tr><td class='l'>{_e(model_label(metrics, name))}</td>"
            f"<td class='l'>{_e(metrics['models'][name].get('method', '—'))}</td>"
            f"<td>{percent(verified)}</td><td>{percent(empirical)}</td><td>{gap}</td>"
            f"<td class='l small'>{note}</td></tr>"
        )
    parts = [
        f"<p>A verified image is classified correctly at every point of the L∞ ball of ε = {eps:g}, as "
        "interval bounds prove (Gowal et al. 2018); an attack can only show the opposite. The verified "
        "accuracy is therefore never above the empirical one on the same images (the study refuses it if "
        "it were). Models trained against attacks are rarely provable: interval bounds are loose through "
        "networks not trained for them, so their verified accuracy is near 0 however robust they "
        "measure; a model trained with the bounds (<code>--method ibp</code>) pays in clean accuracy for "
        "what it can prove.</p>",
        "<table><tr><th class='l'>model</th><th class='l'>method</th><th>verified (IBP)</th>"
        "<th>empirical, worst case over all attacks</th><th>gap (points)</th><th class='l'>note</th></tr>"
        + "".join(rows)
        + "</table>",
    ]
    for name, certified in certified_models(metrics).items():
        smoothing = certified.get("smoothing")
        if smoothing:
            radii = ", ".join(f"{percent(v)} within {r}" for r, v in smoothing["certified_accuracy"].items())
            parts.append(
                f"<p>{_e(model_label(metrics, name))}, smoothed with σ = {smoothing['sigma']:g} "
                f"(Cohen et al. 2019; n = {smoothing['n']:,}, α = {smoothing['alpha']:g}, "
                f"{smoothing['images']} images): certified accuracy {radii} (L2); average certified radius "
                f"{smoothing['average_certified_radius']:.3f}; abstained on "
                f"{percent(smoothing['abstention_rate'])}; {smoothing['seconds_per_image']:.2f} s per "
                "image.</p>"
            )
    if figure_tag:
        parts.append(figure_tag)
    return "\n".join(parts)


__all__ = ["certified_html", "certified_models", "has_smoothing", "smoothing_figure"]
