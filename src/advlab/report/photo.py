"""The picture every talk on adversarial examples starts with (Goodfellow et al. 2015, figure 1): for each
attacked photo, the clean image with the model's top-5 classes and probabilities, the perturbation
amplified to be seen, and the adversarial image with its top-5; the attack and ε in the caption.

    advlab attack ... --data image:panda.jpg --out panda      # panda/figure.png and panda/figure.svg
    save_photo_figure("panda")                                  # the same, from the attack's files
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import torch

from advlab.errors import AdvlabError
from advlab.files import atomic_write_bytes
from advlab.report.figures import DPI, _image, _plain, _pyplot
from advlab.schema import AttackOutput, read_checked
from advlab.tensor_files import load_tensors

TOP = 5
MAX_ROWS = 8  # photos drawn in one figure


def top_classes(logits: torch.Tensor, classes: Sequence[str], k: int = TOP) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one row of logits, with their softmax probabilities."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [(str(classes[i]), float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def _top_text(top: list[tuple[str, float]]) -> str:
    return "\n".join(f"{_plain(name)[:28]}: {100 * p:.1f}%" for name, p in top)


def photo_figure(tensors: dict[str, torch.Tensor], summary: dict):
    """One row per photo (at most :data:`MAX_ROWS`): clean + top-5, perturbation, adversarial + top-5."""
    plt = _pyplot()
    x, x_adv = tensors["x"][:MAX_ROWS], tensors["x_adv"][:MAX_ROWS]
    classes, eps = summary["classes"], float(summary["eps"])
    rows = len(x)
    fig, axes = plt.subplots(rows, 3, figsize=(10.5, 3.9 * rows), squeeze=False)
    for row in range(rows):
        delta = x_adv[row] - x[row]
        scale = max(float(delta.abs().max()), 1e-12)
        shown = (delta / (2 * scale) + 0.5).clamp(0, 1)  # the perturbation stretched to the full range
        panels = (
            (x[row], f"clean\n{_top_text(top_classes(tensors['logits_clean'][row], classes))}"),
            (shown, f"+ perturbation (×{0.5 / scale:.0f} to be seen)\nlargest pixel change {scale:.4f}"),
            (x_adv[row], f"adversarial\n{_top_text(top_classes(tensors['logits_adv'][row], classes))}"),
        )
        for ax, (image, text) in zip(axes[row], panels):
            picture = _image(image)
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(text, fontsize=9, loc="left")
    target = summary.get("target")
    goal = f", aimed at {_plain(classes[target])}" if target is not None else ""
    steps = eps * 255
    shown = f"{round(steps)}/255" if eps > 0 and abs(steps - round(steps)) < 1e-6 else f"{eps:g}"
    caption = f"{_plain(summary.get('label', 'attack'))}, ε = {shown} (pixel units{goal})"
    fig.suptitle(caption, fontsize=11)
    fig.tight_layout()
    return fig


def save_photo_figure(folder: str | Path) -> tuple[Path, Path]:
    """Draw ``figure.png`` and ``figure.svg`` in ``folder`` from the attack's files; return both paths."""
    folder = Path(folder)
    summary = read_checked(folder / "attack.json", AttackOutput)
    tensors, _ = load_tensors(folder / "adversarial.safetensors")
    if not {"x", "x_adv", "logits_clean", "logits_adv"} <= set(tensors) or not summary.get("classes"):
        raise AdvlabError(f"{folder} holds no complete attack output; rerun `advlab attack`")
    fig, written = photo_figure(tensors, summary), []  # drawn once, saved in both formats
    for kind in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=DPI, bbox_inches="tight", facecolor="white")
        written.append(atomic_write_bytes(folder / f"figure.{kind}", buffer.getvalue()))
    _pyplot().close(fig)
    return written[0], written[1]


__all__ = ["photo_figure", "save_photo_figure", "top_classes"]
