"""Pictures of adversarial examples: the original, the perturbation made visible, the adversarial image.

Python::

    from advlab.report import save_gallery
    save_gallery("gallery.png", x, x_adv, y, logits_clean, logits_adv, classes=info.classes, eps=0.1)

Command line: ``advlab attack RUN_DIR --attack pgd20 --eps 0.1 --out attack-out`` writes ``gallery.png``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import torch

from advlab.runs import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _image(t: torch.Tensor):
    """(C, H, W) in [0, 1] to what imshow wants: (H, W) for grey, (H, W, C) for colour."""
    t = t.detach().float().cpu()
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def figure_bytes(fig, *, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


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
    plt = _pyplot()
    n = x.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n + 0.4), squeeze=False)
    prob_clean, prob_adv = logits_clean.softmax(1), logits_adv.softmax(1)
    limit = max(float((x_adv - x).abs().max()), 1e-8)
    cmap = "gray" if x.shape[1] == 1 else None
    for i in range(n):
        true = classes[int(labels[i])]
        pc, pa = int(prob_clean[i].argmax()), int(prob_adv[i].argmax())
        delta = (x_adv[i] - x[i]).mean(0).detach().cpu().numpy()
        panels = [
            (_image(x[i]), cmap, dict(vmin=0, vmax=1),
             f"original: {classes[pc]}\n{100 * float(prob_clean[i, pc]):.1f}% (true: {true})"),
            (delta, "seismic", dict(vmin=-limit, vmax=limit), f"perturbation\n(±{limit:.3g}, ε = {eps:.3g})"),
            (_image(x_adv[i]), cmap, dict(vmin=0, vmax=1),
             f"adversarial: {classes[pa]}\n{100 * float(prob_adv[i, pa]):.1f}%"
             + (f" (target: {classes[int(targets[i])]})" if targets is not None else "")),
        ]
        for ax, (img, colours, scale, text) in zip(axes[i], panels):
            ax.imshow(img, cmap=colours, **scale)
            ax.set_title(text, fontsize=8, color="firebrick" if "adversarial" in text and pa != int(labels[i]) else "black")
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_gallery(path: str | Path, *args, **kwargs) -> Path:
    """Render :func:`gallery_figure` to a PNG file, atomically."""
    return atomic_write_bytes(path, figure_bytes(gallery_figure(*args, **kwargs)))
