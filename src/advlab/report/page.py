"""The HTML report of a study: the story, the figures, the tables and the sanity checks on one page.

Python::

    from advlab.report import build_report
    build_report("runs/quick")    # figures/*.png and report.html, from metrics.json + gallery.safetensors

Command line: ``advlab report runs/quick`` rebuilds ``report.html`` from the saved files (``advlab study``
builds it at the end).

The report reads only ``metrics.json`` and ``gallery.safetensors``, never live objects, and is a single
self-contained HTML file (images inlined as data URIs, inline CSS, no script, no external address), so it
opens offline and can be mailed around. Every string from those files is HTML-escaped, and every accuracy
goes through :func:`advlab.results.percent`, so the story, the tables and the figures show the same
digits. The figures themselves are drawn by :mod:`advlab.report.figures` and :mod:`advlab.report.gallery`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from advlab.errors import AdvlabError
from advlab.report.arms_race import arms_race_figure, arms_race_html, defense_name
from advlab.report.certified import certified_html, certified_models, has_smoothing, smoothing_figure
from advlab.report.explorer import explorer_html
from advlab.report.figures import (
    count,
    figure_bytes,
    model_label,
    norm_name,
    robust_vs_eps_figure,
    tradeoff_figure,
    training_curves_figure,
)
from advlab.report.gallery import comparison_gallery_figure, targeted_gallery_figure
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
from advlab.runs import atomic_write_bytes, atomic_write_text, load_tensors, read_json
from advlab.schema import check_metrics

__all__ = ["build_report", "story", "summary_text"]

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
font-size:.85em;padding:.05em .4em;color:#fff}.pass{background:#2e7d32}.fail{background:#c62828}.na{background:#78828f}
.note{color:#8a5a00}.small{font-size:.85em;color:#5a6472}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: str = ".4g") -> str:
    return "—" if value is None else format(value, digits) if isinstance(value, (int, float)) else _e(value)


def _img(data: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>'


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _at(series: list | None, i: int) -> float | None:
    return series[i] if series and len(series) > i else None


# ------------------------------------------------------------------------------------------- the story


def story(metrics: dict) -> str:
    """The findings in one plain-words paragraph (HTML), every sentence computed from metrics.json."""
    models, i = metrics["models"], train_index(metrics)
    eps, attack = metrics["eps_grid"][i], strongest_attack(metrics)
    sentences = []
    standard = models.get("standard") or {}
    base = standard.get("clean_accuracy")
    broken = _at((standard.get("robust_accuracy") or {}).get(attack), i)
    if base is not None and broken is not None:
        sentences.append(
            f"The standard model is {percent(base)} accurate on clean images but {percent(broken)} "
            f"under {_e(attack)} at ε = {eps:g}."
        )
    best = best_robust_model(metrics)
    model = models.get(best) or {}
    kept, clean = _at((model.get("robust_accuracy") or {}).get(attack), i), model.get("clean_accuracy")
    if kept is not None:
        text = f"{_e(model_label(metrics, best))}, the most robust model, keeps {percent(kept)} under {_e(attack)}"
        if base is not None and clean is not None:
            text += (
                f" at a cost of {points(base, clean)} points of clean accuracy ({percent(clean)})"
                if clean <= base
                else f" and is even {points(clean, base)} points more accurate on clean images ({percent(clean)})"
            )
        worst = headline_worst_case(metrics, best)
        sentences.append(
            text
            + (
                f"; its worst case over all attacks is {percent(worst)}."
                if worst is not None and worst != kept
                else "."
            )
        )
    chosen = tradeoff_points(metrics)
    frontier = pareto_frontier(chosen)
    if len(chosen) > 2:
        beaten = []
        for name in (n for n in chosen if n not in frontier):
            by = next(f for f in frontier if all(a >= b for a, b in zip(chosen[f], chosen[name])))
            beaten.append(f"{_e(model_label(metrics, by))} beats {_e(model_label(metrics, name))}")
        names = _e(_and([model_label(metrics, n) for n in reversed(frontier)]))
        sentences.append(
            f"Weighing clean against worst-case robust accuracy at ε = {eps:g}, "
            + (
                "no model is beaten on both counts by another."
                if not beaten
                else f"{names} {'is' if len(frontier) == 1 else 'are'} on the Pareto frontier; {_and(beaten)} on both "
                "counts."
            )
        )
    chance, grid = metrics.get("chance_accuracy"), metrics["eps_grid"]
    top = max(
        (m["worst_case_accuracy"][-1] for m in models.values() if _at(m.get("worst_case_accuracy"), -1) is not None),
        default=None,
    )
    if top is not None and chance is not None:
        sentences.append(
            f"At the largest budget, ε = {grid[-1]:g}, the best worst-case accuracy is {percent(top)}, "
            + ("at or below chance" if top <= chance else "still above chance")
            + f" ({percent(chance)})."
        )
    checks = metrics.get("sanity_checks") or []
    failed = [c for c in checks if check_status(c) == "fail"]
    idle = sum(check_status(c) == "not applicable" for c in checks)
    if checks and not failed:
        sentences.append(
            f"All {len(checks) - idle} applicable sanity checks against gradient masking pass"
            + (f" ({idle} not applicable: the model left nothing for them to test)." if idle else ".")
        )
    elif failed:
        which = "; ".join(f"{model_label(metrics, c.get('model'))}: {c.get('check')}" for c in failed)
        sentences.append(
            f"{len(failed)} of {len(checks)} sanity checks against gradient masking "
            f"{'fails' if len(failed) == 1 else 'fail'} ({_e(which)}): read those robust numbers "
            "with care."
        )
    race = metrics.get("arms_race") or {}
    fooled = max(
        (
            r
            for r in race.get("rows", [])
            if r["model"] == "standard" and r["defense"] is not None and not r.get("resists")
        ),
        key=lambda r: r["naive"] - r["adaptive"],
        default=None,
    )
    if fooled is not None and fooled["naive"] > fooled["adaptive"]:
        sentences.append(
            f"Behind {_e(defense_name(fooled['defense']))}, the standard model looks {percent(fooled['naive'])} "
            f"robust to a naive attack, but an adaptive one ({_e(fooled['adaptive_attack'])}) brings it to "
            f"{percent(fooled['adaptive'])}: preprocessing hides the gradient rather than adding "
            "robustness."
        )
    for name, model in models.items():
        for flag in model.get("model_flags") or []:
            sentences.append(
                f"The model checks warn about {_e(model_label(metrics, name))}: {_e(flag.get('message'))}."
            )
        if model.get("collapse"):
            sentences.append(f"The training of {_e(model_label(metrics, name))} collapsed: {_e(model['collapse'])}.")
    return " ".join(sentences)


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


def _step_ratio(spec: dict, per_eps: list[dict]) -> str:
    """α/ε as configured, or as it comes out of the saved (ε, α) pairs."""
    if spec.get("step_ratio") is not None:
        return _number(spec["step_ratio"])
    ratios = [h["alpha"] / h["eps"] for h in per_eps if h.get("alpha") is not None and h.get("eps")]
    return _number(ratios[0]) if ratios else "—"


def _attack_table(metrics: dict) -> str:
    rows = []
    specs = metrics.get("attacks") or {}
    train_eps = metrics["eps_grid"][train_index(metrics)]
    # The study's attacks, one row per ε, then the sanity checks' (and gallery's) attacks at their one ε.
    entries = [
        (label, per_eps, specs.get(label) or {})
        for label, per_eps in (metrics.get("attack_hyperparameters") or {}).items()
    ]
    entries += [(label, [h], {}) for label, h in (metrics.get("check_attacks") or {}).items() if isinstance(h, dict)]
    yes = {True: "yes", False: "no"}
    for label, per_eps, spec in entries:
        for k, h in enumerate(per_eps):
            head = ""
            if k == 0:
                span = f' rowspan="{len(per_eps)}"'
                cells = [
                    (h.get("attack"), "l"),
                    (h.get("norm"), "l"),
                    (_number(h.get("steps")), ""),
                    (_number(h.get("restarts")), ""),
                    (yes[bool(h.get("random_start"))], "l"),
                    (h.get("loss"), "l"),
                    (yes[bool(h.get("targeted"))], "l"),
                ]
                head = f'<td class="l"{span}>{_e(label)}</td>' + "".join(
                    f"<td{' class=l' if c else ''}{span}>{_e(v)}</td>" for v, c in cells
                )
                head += f"<td{span}>{_step_ratio(spec, per_eps)}</td>"
            mark = ' class="train"' if h.get("eps") == train_eps else ""
            rows.append(
                f"<tr>{head}<td{mark}>{_number(h.get('eps'), 'g')}</td><td{mark}>{_number(h.get('alpha'))}</td></tr>"
            )
    if not rows:
        return '<p class="note">This run does not record its attacks\' hyperparameters.</p>'
    return (
        '<table><tr><th class="l">attack</th><th class="l">kind</th><th class="l">norm</th><th>steps</th>'
        '<th>restarts</th><th class="l">random start</th><th class="l">loss</th><th class="l">targeted</th>'
        "<th>α / ε</th><th>ε</th><th>α (step size)</th></tr>" + "".join(rows) + "</table>"
    )


def _results_table(metrics: dict) -> str:
    grid, i = metrics["eps_grid"], train_index(metrics)
    head = "".join(f"<th{' class=train' if j == i else ''}>ε = {e:g}</th>" for j, e in enumerate(grid))
    rows = []
    for name, model in metrics["models"].items():
        series = [*(model.get("robust_accuracy") or {}).items(), ("worst case", model.get("worst_case_accuracy") or [])]
        for k, (what, values) in enumerate(series):
            lead = (
                (
                    f'<td class="l" rowspan="{len(series)}">{_e(model_label(metrics, name))}<br><span class="small">'
                    f'{_e(model.get("method", ""))}</span></td><td rowspan="{len(series)}">'
                    f"{percent(model.get('clean_accuracy'))}</td>"
                )
                if k == 0
                else ""
            )
            cells = "".join(
                f"<td{' class=train' if j == i else ''}>{percent(_at(values, j))}</td>" for j in range(len(grid))
            )
            what = f"<b>{_e(what)}</b>" if what == "worst case" else _e(what)
            rows.append(f'<tr>{lead}<td class="l">{what}</td>{cells}</tr>')
    return (
        f'<table><tr><th class="l">model</th><th>clean</th><th class="l">attack</th>{head}</tr>'
        + "".join(rows)
        + "</table>"
    )


def _summary_table(metrics: dict) -> str:
    i, chosen = train_index(metrics), tradeoff_points(metrics)
    frontier = set(pareto_frontier(chosen))
    rows = []
    certified = certified_models(metrics)
    for name, model in metrics["models"].items():
        seconds = model.get("train_seconds")
        worst = headline_worst_case(metrics, name)
        verified = f"<td>{percent((certified.get(name) or {}).get('verified_accuracy'))}</td>" if certified else ""
        rows.append(
            f'<tr><td class="l">{_e(model_label(metrics, name))}</td>'
            f'<td class="l">{_e(model.get("method", "—"))}</td>'
            f"<td>{percent(model.get('clean_accuracy'))}</td><td>{percent(worst)}</td>{verified}"
            f'<td class="l">{"yes" if name in frontier else "no"}</td><td>{len(model.get("epochs") or [])}</td>'
            f"<td>{'—' if not isinstance(seconds, (int, float)) else f'{seconds:.0f} s'}</td></tr>"
        )
    return (
        '<table><tr><th class="l">model</th><th class="l">method</th><th>clean</th>'
        f"<th>worst case at ε = {metrics['eps_grid'][i]:g}, all attacks</th>"
        + (f"<th>verified (IBP) at ε = {metrics['eps_grid'][i]:g}</th>" if certified else "")
        + '<th class="l">on the frontier</th><th>epochs</th>'
        "<th>training time</th></tr>" + "".join(rows) + "</table>"
    )


_BADGES = {
    "pass": '<span class="badge pass">PASS</span>',
    "fail": '<span class="badge fail">FAIL</span>',
    "not applicable": '<span class="badge na">N/A</span>',
}


def check_status(check: dict) -> str:
    """``pass``, ``fail`` or ``not applicable``; runs saved before statuses existed have only ``passed``."""
    return check.get("status") or ("pass" if check.get("passed") else "fail")


def _checks_table(metrics: dict) -> str:
    checks = metrics.get("sanity_checks") or []
    if not checks:
        return '<p class="note">This run holds no sanity-check results.</p>'
    rows = []
    for c in checks:
        badge = _BADGES[check_status(c)]
        numbers = ", ".join(
            f"{_e(k)}: {percent(v) if isinstance(v, (int, float)) else _e(v)}"
            for k, v in (c.get("numbers") or {}).items()
        )
        rows.append(
            f'<tr><td class="l">{_e(model_label(metrics, c.get("model", "?")))}</td>'
            f'<td class="l">{_e(c.get("check"))}</td><td class="l">{badge}</td>'
            f'<td class="l">{_e(c.get("detail", ""))}<br><span class="small">{numbers}</span></td></tr>'
        )
    statuses = [check_status(c) for c in checks]
    idle = statuses.count("not applicable")
    return (
        f"<p>{statuses.count('pass')} of {len(checks) - idle} applicable checks pass"
        + (f"; {idle} not applicable (nothing left to test)" if idle else "")
        + ".</p>"
        "<table><tr><th class='l'>model</th><th class='l'>check</th>"
        "<th class='l'>result</th><th class='l'>detail and numbers</th></tr>" + "".join(rows) + "</table>"
    )


# ------------------------------------------------------------------------------------------- reading the run


def _load_gallery(run_dir: Path, metrics: dict) -> tuple[dict, dict] | str:
    """The gallery's tensors and description, or why there is none (the report is still written)."""
    path = run_dir / ((metrics.get("gallery") or {}).get("file") or "gallery.safetensors")
    if not path.is_file():
        return f"{path.name} is missing: this run has no adversarial examples to show."
    try:
        tensors, meta = load_tensors(path)
        info = metrics.get("gallery") or json.loads(meta.get("gallery", "{}"))
        names = [n for n in info.get("models", []) if f"{n}.x_adv" in tensors]
        if "x" not in tensors or "labels" not in tensors or not names or not isinstance(metrics.get("classes"), list):
            raise AdvlabError("it lacks the images, their labels, the models' adversarial images or the class names")
    except (AdvlabError, ValueError, AttributeError) as err:
        return f"{path.name} could not be read ({err}); rerun `advlab study` to redraw it."
    return tensors, info


def build_report(run_dir: str | Path) -> Path:
    """Write ``figures/*.png`` and the self-contained ``report.html`` of the study in ``run_dir``; return its path.

    Reads ``metrics.json`` (required: a missing, corrupt or malformed one raises :class:`AdvlabError`) and
    ``gallery.safetensors`` (optional: without it the report says so instead of showing examples).
    """
    run_dir = Path(run_dir)
    metrics = check_metrics(read_json(run_dir / "metrics.json"), str(run_dir / "metrics.json"))
    images: dict[str, bytes] = {}

    def render(name: str, fig) -> None:
        images[name] = figure_bytes(fig)
        atomic_write_bytes(run_dir / "figures" / f"{name}.png", images[name])

    i = train_index(metrics)
    eps, grid = metrics["eps_grid"][i], metrics["eps_grid"]
    render("robust_vs_eps", robust_vs_eps_figure(metrics))
    render("tradeoff", tradeoff_figure(metrics))
    render("training_curves", training_curves_figure(metrics))
    gallery = _load_gallery(run_dir, metrics)
    if isinstance(gallery, tuple):
        tensors, info = gallery
        render("gallery", comparison_gallery_figure(tensors, info, metrics))
        if {"targeted.x_adv", "targeted.logits_clean", "targeted.logits_adv", "targeted.targets"} <= set(tensors):
            render("gallery_targeted", targeted_gallery_figure(tensors, info, metrics))

    if metrics.get("arms_race"):
        render("arms_race", arms_race_figure(metrics))
    if has_smoothing(metrics):
        render("smoothing", smoothing_figure(metrics))

    missing_curves = [model_label(metrics, n) for n, m in metrics["models"].items() if not m.get("epochs")]
    title = f"Adversarial robustness on {metrics.get('dataset', '?')}"
    facts = [
        f"{count(metrics.get('n_eval'))} test images",
        f"{norm_name(metrics)} ε = {eps:g} for training and headline numbers",
        f"ε grid {grid[0]:g} to {grid[-1]:g}",
        f"{len(metrics['models'])} models",
        f"preset {metrics.get('preset', 'custom')}",
        f"advlab {metrics.get('advlab_version', '?')}",
        f"created {metrics.get('created', '?')}",
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
        f"content='width=device-width, initial-scale=1'><title>{_e(title)}</title><style>{CSS}</style>"
        "</head><body>",
        f"<h1>{_e(title)}</h1><p class='meta'>{' · '.join(_e(f) for f in facts)}</p>",
        f"<div class='story'><p>{story(metrics)}</p></div>",
        "<h2>1. Robust accuracy against ε</h2>",
        _img(
            images["robust_vs_eps"],
            "robust accuracy against epsilon",
            "Accuracy of each model (colour) under each attack (line style) as the budget ε grows; the "
            "dashed line is chance. A curve that does not reach chance at large ε hints at a weak attack.",
        ),
        "<h2>2. Clean against robust accuracy</h2>",
        _img(
            images["tradeoff"],
            "clean against robust accuracy",
            f"Each model's clean accuracy and worst-case robust accuracy over all attacks at ε = {eps:g}. "
            "Models on the Pareto frontier (outlined, joined) are not beaten on both counts.",
        ),
        _summary_table(metrics),
        "<h2>3. Training curves</h2>",
        _img(
            images["training_curves"],
            "training curves",
            "Validation accuracy after each epoch."
            + (f" No per-epoch records for {_e(_and(missing_curves))}." if missing_curves else ""),
        ),
        "<h2>4. Adversarial examples</h2>",
    ]
    if "gallery" in images:
        parts.append(
            _img(
                images["gallery"],
                "adversarial examples",
                "For each model, left to right: the original and its prediction, the perturbation "
                "(blue −, red +), the adversarial image and its prediction with its confidence. "
                f"{_e(info.get('attack', ''))} at ε = {_number(info.get('eps'), 'g')}.",
            )
        )
        if "gallery_targeted" in images:
            parts.append(
                _img(
                    images["gallery_targeted"],
                    "targeted adversarial examples",
                    "Targeted examples: the attack pushes each image towards a chosen class.",
                )
            )
    else:
        parts.append(f"<p class='note'>{_e(gallery)}</p>")
    explorer = explorer_html(run_dir, metrics)
    if explorer:
        parts += ["<h3>Explore: watch a prediction flip</h3>", explorer]
    parts += [
        "<h2>5. Results</h2><h3>Attacks</h3>",
        _attack_table(metrics),
        "<p class='small'>α is the step size in pixel units; the row of the training ε is highlighted. "
        "The rows marked “sanity check” run only at the training ε; the “all attacks” worst case of the "
        "summary table counts them too.</p>",
        "<h3>Accuracy by model, attack and ε</h3>",
        _results_table(metrics),
        "<p class='small'>Worst case: an image counts as robust only if it survives every attack in this "
        "table; at the training ε the summary table's worst case also counts the sanity checks' attacks.</p>",
        "<h2>6. Sanity checks against gradient masking</h2>",
        "<p>Carlini et al., <i>On Evaluating Adversarial Robustness</i> (2019, arXiv:1902.06705): robustness "
        "that comes from hiding gradients rather than from the model fails at least one of these.</p>",
        _checks_table(metrics),
    ]
    if "arms_race" in images:
        parts += [
            "<h2>7. The arms race: preprocessing defenses and adaptive attacks</h2>",
            arms_race_html(
                metrics,
                _img(
                    images["arms_race"],
                    "defenses under naive and adaptive attacks",
                    "Bars: accuracy behind each defense, clean and under each attack; the "
                    "dashed line is the undefended model under the same attack. "
                    "“unreliable” marks a naive number the checks flag.",
                ),
            ),
        ]
    if certified_models(metrics):
        figure = (
            _img(
                images["smoothing"],
                "certified accuracy against L2 radius",
                "Randomized smoothing: the fraction of images certified correct within each L2 radius "
                "(abstentions count as wrong).",
            )
            if "smoothing" in images
            else None
        )
        parts += [
            f"<h2>{8 if 'arms_race' in images else 7}. Certified robustness</h2>",
            certified_html(metrics, figure),
        ]
    parts.append("</body></html>\n")
    return atomic_write_text(run_dir / "report.html", "\n".join(parts))
