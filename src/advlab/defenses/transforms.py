"""The preprocessing defenses, each a :class:`Preprocessing` module registered by name, and
:func:`parse_defense` for their names.

A new defense is a subclass in one file (here, or a module of your own), decorated with
:func:`register_defense`: a ``name``, a ``summary`` for ``--help``, its parameters as keyword arguments of
``__init__`` with defaults (checked there, one clear error each) and ``parameters_dict``. ``--defense
NAME:KEY=VALUE`` and the study's ``defenses`` list then find it (docs/architecture.md has an example)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advlab.errors import AdvlabError


class Preprocessing(nn.Module):
    """A transform of the input images in [0, 1] that stays in [0, 1] and keeps their shape.

    ``forward`` applies :meth:`transform`. With ``straight_through`` set (by the ``-bpda`` attack option,
    :func:`advlab.attacks.adaptive.straight_through`), the forward value is the same but the backward pass
    is the identity: BPDA (Athalye, Carlini & Wagner 2018), the adaptive attack on a transform that hides
    the gradient. ``randomized`` says whether two passes may differ (then EOT averages over draws)."""

    name = "?"
    summary = ""  # a few words for --help
    randomized = False

    def __init__(self) -> None:
        super().__init__()
        self.straight_through = False

    def transform(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - each defense defines it
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise AdvlabError(f"the {self.name} defense takes images of shape (N, C, H, W), got {tuple(x.shape)}")
        out = self.transform(x)
        if self.straight_through:
            return x + (out - x).detach()  # forward: the transform; backward: the identity
        return out

    def parameters_dict(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"defense": self.name, **self.parameters_dict(), "randomized": self.randomized}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.parameters_dict().items())


DEFENSES: dict[str, type[Preprocessing]] = {}


def register_defense(cls: type[Preprocessing]) -> type[Preprocessing]:
    """Class decorator: make a defense available by its ``name`` (``--defense NAME``, study configs)."""
    if not cls.name or cls.name in DEFENSES:
        raise ValueError(f"defense {cls.name!r} has no name or is registered twice")
    DEFENSES[cls.name] = cls
    return cls


def defense_help() -> str:
    """Each registered defense with its parameters' defaults and what it does, for --help."""
    parts = []
    for name, cls in DEFENSES.items():
        params = ",".join(f"{k}={v}" for k, v in cls().parameters_dict().items())
        parts.append(f"{name}{':' + params if params else ''} ({cls.summary})")
    return "; ".join(parts)


def _int(name: str, value, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise AdvlabError(f"{name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise AdvlabError(f"{name} must be {bound}, got {number}")
    return number


@register_defense
class BitDepth(Preprocessing):
    """Round every channel to ``bits`` bits (2^bits levels): Xu, Evans & Qi's feature squeezing (NDSS 2018)."""

    name = "bits"
    summary = "bit-depth reduction"

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        self.bits = _int("bits: bits", bits, 1, 8)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels

    def parameters_dict(self) -> dict:
        return {"bits": self.bits}


@register_defense
class Jpeg(Preprocessing):
    """JPEG compression and decompression at ``quality`` through Pillow's codec (Guo et al., ICLR 2018):
    the real, non-differentiable transform, computed outside autograd (its gradient is zero)."""

    name = "jpeg"
    summary = "JPEG through Pillow's codec"

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        self.quality = _int("jpeg: quality", quality, 1, 100)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        if x.shape[1] not in (1, 3):
            raise AdvlabError(f"the jpeg defense takes 1- or 3-channel images, got {x.shape[1]} channels")
        pixels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out = []
        for image in pixels.permute(0, 2, 3, 1).numpy():
            picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=self.quality)
            decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(picture.mode))
            out.append(decoded.reshape(image.shape))
        result = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255
        return result + 0 * x  # in the graph, with the gradient autograd sees through a codec: zero

    def parameters_dict(self) -> dict:
        return {"quality": self.quality}


@register_defense
class Median(Preprocessing):
    """A ``size`` × ``size`` median filter per channel (spatial smoothing), reflecting at the edges.
    Differentiable: the gradient flows to the pixel each median picks."""

    name = "median"
    summary = "a median filter"

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        self.size = _int("median: size", size, 1)
        if self.size % 2 == 0:
            raise AdvlabError(f"median: size must be odd (a window centred on its pixel), got {self.size}")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        if k == 1:
            return x
        n, c, h, w = x.shape
        padded = F.pad(x, (k // 2,) * 4, mode="reflect" if min(h, w) > k // 2 else "replicate")
        windows = F.unfold(padded.reshape(n * c, 1, h + k - 1, w + k - 1), k)  # (N·C, k², H·W)
        return windows.median(dim=1).values.reshape(n, c, h, w)

    def parameters_dict(self) -> dict:
        return {"size": self.size}


@register_defense
class ResizePad(Preprocessing):
    """A random resize of the image to between ``min_scale`` and 1 of its side, placed at a random spot of an
    image of the original size padded with zeros (in the manner of Xie et al., ICLR 2018, at the data set's
    image size). One draw per image per forward pass, from ``torch``'s global generator."""

    name = "resize-pad"
    summary = "a random resize and pad"
    randomized = True

    def __init__(self, min_scale: float = 0.8) -> None:
        super().__init__()
        try:
            self.min_scale = float(min_scale)
        except (TypeError, ValueError):
            raise AdvlabError(f"resize-pad: min_scale must be a number, got {min_scale!r}") from None
        if not 0 < self.min_scale <= 1:
            raise AdvlabError(f"resize-pad: min_scale must be in (0, 1], got {self.min_scale}")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = torch.zeros_like(x)
        smallest = max(1, math.floor(self.min_scale * min(h, w)))
        sides = torch.randint(smallest, min(h, w) + 1, (n,)).tolist()
        for i, side in enumerate(sides):
            small = F.interpolate(x[i : i + 1], size=(side, side), mode="bilinear", align_corners=False)
            top = int(torch.randint(0, h - side + 1, ()).item())
            left = int(torch.randint(0, w - side + 1, ()).item())
            out[i : i + 1, :, top : top + side, left : left + side] = small
        return out.clamp(0, 1)

    def parameters_dict(self) -> dict:
        return {"min_scale": self.min_scale}


def parse_defense(text: str) -> Preprocessing:
    """``jpeg:quality=75``, ``bits:bits=4``, ``median:size=3``, ``resize-pad:min_scale=0.8`` (or a bare name,
    with its defaults) into the defense module."""
    name, _, rest = str(text).strip().lower().partition(":")
    if name not in DEFENSES:
        raise AdvlabError(f"unknown defense {name!r}; choose one of: {', '.join(DEFENSES)} (e.g. jpeg:quality=75)")
    cls = DEFENSES[name]
    settings = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise AdvlabError(
                f"defense {text!r}: write its parameters as key=value, e.g. {name}:"
                f"{next(iter(cls().parameters_dict()), 'key')}=..."
            )
        settings[key.strip().replace("-", "_")] = value.strip()
    known = cls().parameters_dict()
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise AdvlabError(f"defense {name} has no parameter {', '.join(unknown)}; it takes: {', '.join(known)}")
    return cls(**settings)


__all__ = [
    "DEFENSES",
    "BitDepth",
    "Jpeg",
    "Median",
    "Preprocessing",
    "ResizePad",
    "defense_help",
    "parse_defense",
    "register_defense",
]
