"""The report's arms-race section, from ``metrics.json``'s ``arms_race`` (:mod:`advlab.study.arms_race`):
a figure of the apparent robustness and its collapse side by side, a table, and what they mean.

Python::

    from advlab.report.arms_race import arms_race_figure, arms_race_html
    png = figure_bytes(arms_race_figure(metrics)); section = arms_race_html(metrics)

Every accuracy goes through :func:`advlab.results.percent` and every string from the file is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any

from advlab.report.figures import _plain, _pyplot, model_label
from advlab.results import percent, points

# What each bar is, in the order drawn; the adaptive attack's bar is the one that counts.
BARS = (
    ("clean", "clean", "#9db4cf"),
    ("oblivious", "oblivious (transfer)", "#c9c9c9"),
    ("naive", "naive white-box", "#e8a33d"),
    ("adaptive", "adaptive (BPDA / EOT)", "#b2302b"),
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def defense_name(defense: dict | None) -> str:
    """``jpeg quality=75``, ``bits bits=1``, ``none`` for the model alone."""
    if not defense:
        return "none"
    params = [f"{k}={v}" for k, v in defense.items() if k not in ("defense", "randomized")]
    return " ".join([str(defense.get("defense", "?")), *params])


def arms_race_figure(metrics: dict):
    """One panel per model: for each defense (and none), bars for clean, oblivious, naive and adaptive
    accuracy; the dashed line is the undefended model under the same attack."""
    plt = _pyplot()
    race = metrics["arms_race"]
    models = list(dict.fromkeys(r["model"] for r in race["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.2), squeeze=False, sharey=True)
    width = 0.2
    for ax, name in zip(axes[0], models):
        rows = [r for r in race["rows"] if r["model"] == name]
        for j, (key, label, colour) in enumerate(BARS):
            xs = [i + (j - 1.5) * width for i in range(len(rows))]
            values = [100 * r[key] if r.get(key) is not None else 0.0 for r in rows]
            ax.bar(xs, values, width, color=colour, label=label)
        ax.axhline(
            100 * rows[0]["undefended"],
            color="0.3",
            linestyle="--",
            linewidth=1.1,
            label="undefended model, same attack",
        )
        for i, r in enumerate(rows):
            if r.get("naive_unreliable"):
                ax.annotate(
                    "unreliable",
                    (i + 0.5 * width, 100 * r["naive"] + 1),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    color="#8a5a00",
                )
        ax.set_xticks(range(len(rows)), [_plain(defense_name(r["defense"])) for r in rows], rotation=20, ha="right")
        ax.set_title(_plain(model_label(metrics, name)))
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"accuracy (%) at ε = {race['eps']:g}")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.06)
    )
    fig.suptitle(
        f"Preprocessing defenses: apparent robustness (naive) and what remains (adaptive), {race['n']} test images",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def _verdict(row: dict, race: dict) -> str:
    if row["defense"] is None:
        return "the model alone: the baseline"
    gap = points(row["adaptive"], row["undefended"])
    if row.get("resists"):
        why = ""
        if row.get("pixels_within_eps_of_threshold") is not None:
            why = (
                f" Why: only {percent(row['pixels_within_eps_of_threshold'])} of the pixels of these images lie within "
                f"ε = {race['eps']:g} of a rounding threshold, so a perturbation that small can change few of the "
                f"pixels the model sees; the price is {points(row['undefended_clean'], row['clean'])} points "
                "of clean accuracy."
                if row.get("undefended_clean") is not None
                else f" Why: only {percent(row['pixels_within_eps_of_threshold'])} of the pixels lie within ε of a "
                "rounding threshold."
            )
        else:
            why = (
                " No reason is established: a stronger adaptive attack may still break it, so treat this "
                "number as an upper bound."
            )
        return f"resists the adaptive attack: {gap} points above the undefended model.{why}"
    naive_gap = points(row["naive"], row["adaptive"])
    return (
        f"no real gain: the adaptive attack brings it to {percent(row['adaptive'])}, {gap} points from the "
        f"undefended model at {percent(row['undefended'])}; the naive evaluation overstated it by {naive_gap} points"
    )


def arms_race_html(metrics: dict, figure_tag: str) -> str:
    """The section's words, figure (``figure_tag``, an inline ``<figure>``) and table."""
    race = metrics["arms_race"]
    rows = [dict(r) for r in race["rows"]]
    alone = {r["model"]: r for r in rows if r["defense"] is None}
    for r in rows:
        r["undefended_clean"] = alone.get(r["model"], {}).get("clean")
    body = []
    for r in rows:
        naive = percent(r["naive"])
        if r.get("naive_unreliable"):
            naive += f"<br><span class='note'>unreliable: {_e('; '.join(r['naive_unreliable']))}</span>"
        body.append(
            f"<tr><td class='l'>{_e(model_label(metrics, r['model']))}</td>"
            f"<td class='l'>{_e(defense_name(r['defense']))}</td><td>{percent(r['clean'])}</td>"
            f"<td>{percent(r.get('oblivious'))}</td><td>{naive}</td>"
            f"<td>{percent(r['adaptive'])}<br><span class='small'>{_e(r.get('adaptive_attack', ''))}</span></td>"
            f"<td>{percent(r['undefended'])}</td><td class='l'>{_e(_verdict(r, race))}</td></tr>"
        )
    trained = [m for m in alone if m != "standard"]
    lessons = []
    for name in trained:
        behind = [r for r in rows if r["model"] == name and r["defense"] is not None and not r.get("resists")]
        if behind:
            deltas = sorted(float(points(r["adaptive"], r["undefended"])) for r in behind)
            lessons.append(
                f"Behind the defenses that do not resist, {_e(model_label(metrics, name))}'s adaptive "
                f"robust accuracy differs from its undefended self's by {deltas[0]:+.1f} to "
                f"{deltas[-1]:+.1f} points under the same attack: its robustness comes from training, "
                "not from the wrapper."
            )
    return "\n".join(
        [
            f"<p>Each model is put behind each preprocessing defense and attacked at ε = {race['eps']:g} on the first "
            f"{race['n']} test images ({_e(race['attack'])}): <b>oblivious</b> (made on the undefended model, "
            "then passed "
            "through the defense), <b>naive</b> (white-box, with the gradient autograd gives through the defense) and "
            "<b>adaptive</b> (BPDA, the identity on the backward pass, through a deterministic defense; EOT over "
            f"{race.get('eot', '?')} draws through a random one; Athalye, Carlini &amp; Wagner 2018). A random defense "
            "is judged, clean and attacked alike, on 20 passes: its figures are the expected accuracy over the "
            "draws, what it scores on average.</p>",
            figure_tag,
            "<table><tr><th class='l'>model</th><th class='l'>defense</th><th>clean</th><th>oblivious</th>"
            "<th>naive</th><th>adaptive</th><th>undefended, same attack</th><th class='l'>verdict</th></tr>"
            + "".join(body)
            + "</table>",
            *(f"<p>{lesson}</p>" for lesson in lessons),
        ]
    )


__all__ = ["arms_race_figure", "arms_race_html", "defense_name"]
