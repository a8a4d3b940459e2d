"""The threat model: L∞ and L2 balls around an image, intersected with the pixel cube [0, 1].

Everything that knows what a norm is lives here, for attacks and evaluation alike: the size of a
perturbation, the projection back into the ball, a random start inside it, the unit step of steepest
ascent, and :func:`verify_adversarial`, the check that every evaluation ends with::

    from advlab.attacks.threat import project, verify_adversarial
    x_adv = project(x_adv, x, eps=0.1, norm="linf")
    verify_adversarial(x, x_adv, 0.1, "linf")       # raises IntegrityError outside the ball or [0, 1]
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from advlab.errors import AdvlabError, check_range

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
NORM_LABELS = {"linf": "L∞", "l2": "L2"}

# Float slack for the ε-ball check: projections are exact up to float32 rounding of x ± ε.
BALL_TOLERANCE = 1e-6


class IntegrityError(RuntimeError):
    """An attack returned a point outside its threat model: a bug, never a result to report."""


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise AdvlabError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    return norm


def check_count(name: str, value: int) -> int:
    """``value`` as an int if it is a whole number of at least 1 (steps, restarts, queries, targets, EOT
    passes), else one clear AdvlabError."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise AdvlabError(f"{name} must be an integer of at least 1, got {value!r}")
    return int(value)


def max_eps(norm: str, x: torch.Tensor) -> float:
    """The largest meaningful ε: the whole pixel range for L∞, the cube's diagonal for L2."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


def per_example_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """‖t_i‖ for each example i of the batch, in ``norm``."""
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point (for L∞; radial scaling for L2) of the ε-ball around ``x`` that lies in [0, 1]."""
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        scale = (eps / per_example_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        x_adv = x + delta * _bcast(scale, delta)
    # Clipping to [0, 1] only moves coordinates towards x, so the result stays inside the ball.
    return x_adv.clamp(0.0, 1.0)


def step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size in the norm: sign for L∞, normalized gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _bcast(per_example_norm(grad, "l2").clamp_min(1e-12), grad)


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None, *, clip: bool = True
) -> torch.Tensor:
    """A uniform draw from the ε-ball (L∞: the cube; L2: the ball), clipped to [0, 1] unless ``clip`` is
    False. An unclipped start (pixels may leave [0, 1]) is for training only, where a paper's code takes the
    first gradient there (Wong et al.'s MNIST fast FGSM); an attack's result is always projected.

    For L2 this lies almost on the sphere of radius ε in high dimension. torchattacks instead draws the
    radius uniformly in [0, ε], a start concentrated near x; the two give L2 PGD results about a point
    apart on a standard Fashion-MNIST model (BENCHMARKS.md, "Agreement"), which restarts narrow.
    """
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        direction = step_direction(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), "l2")
        dims = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
        noise = direction * _bcast(radius * eps, x)
    return project(x + noise, x, eps, norm) if clip else x + noise


def check_attack_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> None:
    """One clear AdvlabError for anything an attack cannot work with."""
    if not isinstance(model, nn.Module):
        raise AdvlabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_norm(norm)
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.dim() < 2:
        raise AdvlabError(f"x must be a float batch of shape (N, ...), got {getattr(x, 'shape', x)!r}")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape[:1]:
        raise AdvlabError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(getattr(y, 'shape', ()))}")
    # ε in pixel units: L∞ cannot exceed the [0, 1] range; L2 cannot exceed the diagonal of the cube.
    check_range("eps", eps, 0.0, max_eps(norm, x))
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise AdvlabError(
            "x must hold pixels in [0, 1] (put normalization inside the model, e.g. advlab.models.Normalize); "
            f"got values in [{x.min().item():.3g}, {x.max().item():.3g}]"
        )


def verify_adversarial(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, *, what: str = "attack") -> None:
    """Fail loudly unless ``x_adv`` is finite, in [0, 1] and within ``eps`` of ``x`` in ``norm``."""
    if x_adv.shape != x.shape:
        raise IntegrityError(f"{what}: adversarial batch has shape {tuple(x_adv.shape)}, not {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise IntegrityError(f"{what}: adversarial examples contain NaN or infinity")
    if x_adv.numel() and (x_adv.min() < 0 or x_adv.max() > 1):
        raise IntegrityError(f"{what}: adversarial pixels leave [0, 1] ({x_adv.min().item()}, {x_adv.max().item()})")
    size = per_example_norm((x_adv - x).float(), norm)
    limit = eps + BALL_TOLERANCE if norm == "linf" else eps * (1 + 1e-5) + BALL_TOLERANCE
    if size.numel() and size.max() > limit:
        raise IntegrityError(f"{what}: perturbation of size {size.max().item():.6g} exceeds ε = {eps:g} ({norm})")
