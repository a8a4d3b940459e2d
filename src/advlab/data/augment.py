"""Data augmentation as batched tensor ops, on whatever device the batch is on (no torchvision).

CIFAR-10's adversarial-training code (Wong, Rice & Kolter 2020's fast_adversarial, Rice et al. 2020's
robust_overfitting) trains on random 32×32 crops of the image zero-padded by 4 pixels, flipped left-right
half of the time: torchvision's ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``. :func:`crop_flip`
does the same for a whole batch at once, each example with its own offsets and flip, drawn only from ``generator``::

    from advlab.data.augment import augment
    generator = torch.Generator(device=x.device).manual_seed(0)
    x = augment("crop-flip", x, generator=generator)     # or crop_flip(x, padding=4, generator=generator)

A training run picks one by name with its ``augment`` setting (``augment = "crop-flip"`` in the CIFAR-10
presets); the names are :data:`AUGMENTATIONS`. The same generator state gives the same batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from advlab.errors import AdvlabError


def draw_crop_flip(
    n: int, padding: int, generator: torch.Generator | None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random part of :func:`crop_flip` for ``n`` examples: ``(dy, dx, flip)``, int64 offsets uniform in
    ``0..2*padding`` (the crop's top-left corner in the padded image) and a bool "mirror it", true with
    probability 1/2. Drawn in this order from ``generator`` (on ``device``), so the draws are reproducible."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dy, dx, flip


def crop_flip(x: torch.Tensor, *, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each example of ``x`` (N, C, H, W) cropped back to H×W at a random offset from itself zero-padded by
    ``padding`` pixels on every side, then flipped left-right with probability 1/2.

    ``padding=0`` only flips. ``x`` is left as it is; the result has its shape, dtype, device and memory
    format (channels_last stays channels_last). ``generator`` must be on ``x``'s device.
    """
    if x.dim() != 4:
        raise AdvlabError(f"crop_flip needs a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise AdvlabError(f"crop_flip's padding must be a whole number of pixels, at least 0, got {padding!r}")
    n, c, h, w = x.shape
    dy, dx, flip = draw_crop_flip(n, padding, generator, x.device)
    # One gather over the flattened padded image: of what was measured on a (128, 3, 32, 32) CPU batch
    # (4-index advanced indexing, unfold, per-axis gathers, masking instead of padding) it was the fastest.
    columns = torch.arange(w, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H) in the padded image
    cols = dx[:, None] + torch.where(flip[:, None], columns.flip(0), columns)  # (N, W), mirrored if flip
    padded = F.pad(x, (padding, padding, padding, padding))
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = padded.reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)
    return out.contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# name -> the augmentation; training looks its `augment` setting up here.
_AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "none": lambda x, generator: x,
    # The CIFAR-10 papers' pipeline: RandomCrop(32, padding=4) then RandomHorizontalFlip().
    "crop-flip": lambda x, generator: crop_flip(x, padding=4, generator=generator),
}

AUGMENTATIONS: tuple[str, ...] = tuple(_AUGMENT)


def augment(name: str, x: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """``x`` augmented by the augmentation called ``name`` (one of :data:`AUGMENTATIONS`); ``"none"`` gives
    ``x`` itself. Random draws come from ``generator`` only."""
    if name not in _AUGMENT:
        raise AdvlabError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    return _AUGMENT[name](x, generator)


__all__ = ["AUGMENTATIONS", "augment", "crop_flip", "draw_crop_flip"]
