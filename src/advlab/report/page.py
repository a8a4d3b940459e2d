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

import json
from pathlib import Path

from advlab.errors import AdvlabError
from advlab.files import atomic_write_bytes, atomic_write_text, read_json
from advlab.report.arms_race import arms_race_figure, arms_race_html
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
from advlab.report.markup import escape, image, in_words, number
from advlab.report.story import story
from advlab.report.tables import attack_table, checks_table, results_table, summary_table
from advlab.results import train_index
from advlab.schema import check_metrics
from advlab.tensor_files import load_tensors

__all__ = ["build_report"]

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
    images, gallery = _figures(run_dir, metrics)
    parts = _heading(metrics) + _sections(metrics, images) + _examples(run_dir, metrics, images, gallery)
    parts += _results(metrics) + _defenses_and_certificates(metrics, images)
    parts.append("</body></html>\n")
    return atomic_write_text(run_dir / "report.html", "\n".join(parts))


def _figures(run_dir: Path, metrics: dict) -> tuple[dict[str, bytes], tuple[dict, dict] | str]:
    """Every figure drawn and saved as figures/NAME.png; the gallery's images and record (or why not)."""
    images: dict[str, bytes] = {}

    def render(name: str, fig) -> None:
        images[name] = figure_bytes(fig)
        atomic_write_bytes(run_dir / "figures" / f"{name}.png", images[name])

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
    return images, gallery


def _heading(metrics: dict) -> list[str]:
    eps, grid = metrics["eps_grid"][train_index(metrics)], metrics["eps_grid"]
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
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
        f"content='width=device-width, initial-scale=1'><title>{escape(title)}</title><style>{CSS}</style>"
        "</head><body>",
        f"<h1>{escape(title)}</h1><p class='meta'>{' · '.join(escape(f) for f in facts)}</p>",
        f"<div class='story'><p>{story(metrics)}</p></div>",
    ]


def _sections(metrics: dict, images: dict[str, bytes]) -> list[str]:
    """Sections 1 to 3: robust accuracy against ε, clean against robust, the training curves."""
    eps = metrics["eps_grid"][train_index(metrics)]
    missing = [model_label(metrics, n) for n, m in metrics["models"].items() if not m.get("epochs")]
    return [
        "<h2>1. Robust accuracy against ε</h2>",
        image(
            images["robust_vs_eps"],
            "robust accuracy against epsilon",
            "Accuracy of each model (colour) under each attack (line style) as the budget ε grows; the dashed "
            "line is chance. A curve that does not reach chance at large ε hints at a weak attack.",
        ),
        "<h2>2. Clean against robust accuracy</h2>",
        image(
            images["tradeoff"],
            "clean against robust accuracy",
            f"Each model's clean accuracy and worst-case robust accuracy over all attacks at ε = {eps:g}. "
            "Models on the Pareto frontier (outlined, joined) are not beaten on both counts.",
        ),
        summary_table(metrics),
        "<h2>3. Training curves</h2>",
        image(
            images["training_curves"],
            "training curves",
            "Validation accuracy after each epoch."
            + (f" No per-epoch records for {escape(in_words(missing))}." if missing else ""),
        ),
    ]


def _examples(run_dir: Path, metrics: dict, images: dict[str, bytes], gallery) -> list[str]:
    """Section 4: the gallery (or why it is missing), and the explorer."""
    parts = ["<h2>4. Adversarial examples</h2>"]
    if "gallery" in images:
        info = gallery[1]
        parts.append(
            image(
                images["gallery"],
                "adversarial examples",
                "For each model, left to right: the original and its prediction, the perturbation "
                "(blue −, red +), the adversarial image and its prediction with its confidence. "
                f"{escape(info.get('attack', ''))} at ε = {number(info.get('eps'), 'g')}.",
            )
        )
        if "gallery_targeted" in images:
            parts.append(
                image(
                    images["gallery_targeted"],
                    "targeted adversarial examples",
                    "Targeted examples: the attack pushes each image towards a chosen class.",
                )
            )
    else:
        parts.append(f"<p class='note'>{escape(gallery)}</p>")
    explorer = explorer_html(run_dir, metrics)
    return parts + (["<h3>Explore: watch a prediction flip</h3>", explorer] if explorer else [])


def _results(metrics: dict) -> list[str]:
    """Sections 5 and 6: the attacks, accuracy by model, attack and ε, and the sanity checks."""
    return [
        "<h2>5. Results</h2><h3>Attacks</h3>",
        attack_table(metrics),
        "<p class='small'>α is the step size in pixel units; the row of the training ε is highlighted. "
        "The rows marked “sanity check” run only at the training ε; the “all attacks” worst case of the "
        "summary table counts them too.</p>",
        "<h3>Accuracy by model, attack and ε</h3>",
        results_table(metrics),
        "<p class='small'>Worst case: an image counts as robust only if it survives every attack in this "
        "table; at the training ε the summary table's worst case also counts the sanity checks' attacks.</p>",
        "<h2>6. Sanity checks against gradient masking</h2>",
        "<p>Carlini et al., <i>On Evaluating Adversarial Robustness</i> (2019, arXiv:1902.06705): robustness "
        "that comes from hiding gradients rather than from the model fails at least one of these.</p>",
        checks_table(metrics),
    ]


def _defenses_and_certificates(metrics: dict, images: dict[str, bytes]) -> list[str]:
    """Sections 7 and 8, where the study has them: the arms race and certified robustness."""
    parts = []
    if "arms_race" in images:
        figure = image(
            images["arms_race"],
            "defenses under naive and adaptive attacks",
            "Bars: accuracy behind each defense, clean and under each attack; the dashed line is the "
            "undefended model under the same attack. “unreliable” marks a naive number the checks flag.",
        )
        parts += [
            "<h2>7. The arms race: preprocessing defenses and adaptive attacks</h2>",
            arms_race_html(metrics, figure),
        ]
    if certified_models(metrics):
        figure = (
            image(
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
    return parts
