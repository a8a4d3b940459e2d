"""Galleries of adversarial examples: for each image the original, the perturbation and the adversarial
image, with the model's prediction and confidence on each.

Python::

    from advlab.report import save_attack_gallery, save_gallery
    save_attack_gallery("runs/standard/attack")     # gallery.png from the files `advlab attack` wrote
    save_gallery("gallery.png", x, x_adv, y, logits_clean, logits_adv, classes=info.classes, eps=0.1)

Command line: ``advlab attack RUN_DIR --eps 0.1 --out OUT`` writes ``OUT/gallery.png`` this way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from advlab.errors import AdvlabError
from advlab.files import atomic_write_bytes
from advlab.report.figures import _image, _plain, _pyplot, figure_bytes, model_label
from advlab.results import percent
from advlab.schema import AttackOutput, read_checked
from advlab.tensor_files import load_tensors


def _class_name(classes: Sequence[str], index: int) -> str:
    return _plain(classes[index]) if 0 <= index < len(classes) else f"class {index}"


def _draw_gallery(
    fig,
    x,
    x_adv,
    labels,
    logits_clean,
    logits_adv,
    *,
    classes: Sequence[str],
    eps: float,
    title: str = "",
    targets: torch.Tensor | None = None,
    title_size: float = 10,
) -> None:
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
            (
                _image(x[i]),
                cmap,
                dict(vmin=0, vmax=1),
                f"original: {_class_name(classes, pc)}\n{percent(float(prob_clean[i, pc]))} (true: {true})",
                "black",
            ),
            (
                delta,
                "seismic",
                dict(vmin=-limit, vmax=limit),
                f"+ perturbation\n(±{limit:.3g}, ε = {eps:.3g})",
                "black",
            ),
            (
                _image(x_adv[i]),
                cmap,
                dict(vmin=0, vmax=1),
                f"= adversarial: {_class_name(classes, pa)}\n{percent(float(prob_adv[i, pa]))}{target}",
                "firebrick" if fooled else "black",
            ),
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
    _draw_gallery(
        fig, x, x_adv, labels, logits_clean, logits_adv, classes=classes, eps=eps, title=title, targets=targets
    )
    return fig


def save_gallery(path: str | Path, *tensors: torch.Tensor, **options) -> Path:
    """Render :func:`gallery_figure` (same arguments after ``path``) to a PNG file, atomically."""
    fig = gallery_figure(*tensors, **options)
    return atomic_write_bytes(path, figure_bytes(fig))


def comparison_gallery_figure(tensors: dict, info: dict, metrics: dict):
    """:func:`gallery_figure`'s panels for each gallery model side by side, on the same images."""
    names = [n for n in info.get("models", []) if f"{n}.x_adv" in tensors]
    n = tensors["x"].shape[0]
    fig = _pyplot().figure(figsize=(6.6 * len(names), 2.2 * n + 1.4), layout="constrained")
    for sub, name in zip(fig.subfigures(1, len(names), wspace=0.04, squeeze=False)[0], names):
        _draw_gallery(
            sub,
            tensors["x"],
            tensors[f"{name}.x_adv"],
            tensors["labels"],
            tensors[f"{name}.logits_clean"],
            tensors[f"{name}.logits_adv"],
            classes=metrics["classes"],
            eps=info.get("eps", 0.0),
            title=_plain(model_label(metrics, name)),
            title_size=11,
        )
    fig.suptitle(
        f"{_plain(info.get('attack', 'attack'))} at ε = {info.get('eps', 0):g}: the same images against "
        "each model (red: the attack fooled the model)",
        fontsize=11,
    )
    return fig


def targeted_gallery_figure(tensors: dict, info: dict, metrics: dict):
    name, attack = info.get("targeted_model", "standard"), str(info.get("targeted_attack", "attack"))
    eps = info.get("targeted_eps", info.get("eps", 0.0))
    return gallery_figure(
        tensors["x"],
        tensors["targeted.x_adv"],
        tensors["labels"],
        tensors["targeted.logits_clean"],
        tensors["targeted.logits_adv"],
        classes=metrics["classes"],
        eps=eps,
        targets=tensors["targeted.targets"],
        title=f"{_plain(attack if 'targeted' in attack else 'targeted ' + attack)} against "
        f"{_plain(model_label(metrics, name))} at ε = {eps:g}\n"
        "(red: the model now predicts the target class)",
    )


def save_attack_gallery(folder: str | Path) -> Path:
    """Draw ``gallery.png`` (at most 16 rows) in ``folder`` from the ``adversarial.safetensors`` and
    ``attack.json`` that :func:`advlab.jobs.attack_checkpoint` wrote there; return its path."""
    folder = Path(folder)
    summary = read_checked(folder / "attack.json", AttackOutput)
    tensors, _ = load_tensors(folder / "adversarial.safetensors")
    needed = {"x", "x_adv", "labels", "logits_clean", "logits_adv"}
    if not needed <= set(tensors) or not isinstance(summary.get("classes"), list):
        raise AdvlabError(
            f"{folder} holds no complete attack output (images, logits, class names); rerun `advlab attack`"
        )
    target = summary.get("target")
    eps = float(summary.get("eps", 0.0))
    title = f"{summary.get('label', summary.get('attack', 'attack'))}, ε = {eps:g}"
    if target is not None:
        title += f", target: {summary['classes'][target]}"
    rows = slice(0, 16)
    return save_gallery(
        folder / "gallery.png",
        *(tensors[k][rows] for k in ("x", "x_adv", "labels", "logits_clean", "logits_adv")),
        classes=summary["classes"],
        eps=eps,
        title=title,
        targets=tensors["targets"][rows] if "targets" in tensors else None,
    )
