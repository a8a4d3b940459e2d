"""Gradient attacks on image classifiers: FGSM and PGD (L∞ and L2), plus a random-noise baseline.

Every attack is a plain function with one shared, keyword-only signature::

    x_adv = fgsm(model, x, y, eps=0.1)
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.01, steps=20, norm="linf", restarts=5)
    x_adv = pgd(model, x, target, eps=1.5, norm="l2", targeted=True)

``x`` is a float batch of images with pixels in [0, 1] (normalization belongs inside the model), ``y``
holds the true labels (or, with ``targeted=True``, the target labels), and ``model`` is any ``nn.Module``
that returns logits. The result has ``x``'s shape, lies in [0, 1] and within ε of ``x`` in the chosen
norm. The model runs in eval mode during the attack and gets its own modes back afterwards; parameter
gradients are never touched (gradients are taken with ``torch.autograd.grad`` w.r.t. the input only).

From the command line: ``advlab attack --checkpoint RUN/model.safetensors --attack pgd20 --eps 0.1``.
Attack names for the CLI and configs are parsed by :func:`parse_attack`: ``fgsm``, ``pgd`` (PGD-20),
``pgd50``, ``pgd50x10`` (50 steps, 10 restarts), ``noise``; append ``-l2`` for the L2 threat model.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advlab.errors import AdvlabError, check_range

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
LOSSES: tuple[str, ...] = ("ce", "margin")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and give every submodule its own train/eval flag back afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


_CHANNELS_LAST = [True]


def set_channels_last(enabled: bool) -> bool:
    """Turn the channels-last layout of CPU attacks on (the default) or off; returns the previous setting.

    The layout changes no value, but max pooling breaks ties between equal maxima differently in each
    layout, so a few gradient entries route to another (equally valid) pixel: on Fashion-MNIST, FGSM
    differs from torchattacks' and ART's in 26 of 7.84 million pixels with it and in 1 (a rounding of a
    ~1e-12 gradient) without it (benchmarks/bench_fgsm_identity.py). Turn it off to compare exactly.
    """
    previous = _CHANNELS_LAST[0]
    _CHANNELS_LAST[0] = bool(enabled)
    return previous


def channels_last_weights(model: nn.Module, device: torch.device) -> list[nn.Parameter]:
    """The convolution weights to keep channels-last: those of a CPU model while the layout is on."""
    if not _CHANNELS_LAST[0] or torch.device(device).type != "cpu":
        return []
    return [p for p in model.parameters() if p.dim() == 4]


@contextlib.contextmanager
def channels_last(model: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Run ``model`` on CPU with its convolution weights and ``x`` in channels-last layout; yield that ``x``.

    oneDNN's CPU convolutions are fastest in NHWC: measured 1.3–1.5× more PGD steps per second for
    small_cnn on Fashion-MNIST (benchmarks/bench_attacks.py, "limit" against "limit NCHW"; BENCHMARKS.md).
    Only the layout changes, never a value: the weights' own storage is swapped back afterwards, so the
    Parameter objects, their values and ``.grad`` are exactly the caller's. Does nothing on other devices
    or for inputs that are not image batches.
    """
    weights = channels_last_weights(model, x.device) if x.dim() == 4 else []
    if not weights:
        yield x
        return
    saved = [p.data for p in weights]
    try:
        for p in weights:
            p.data = p.data.to(memory_format=torch.channels_last)  # .to restrides even when C = 1
        yield x.to(memory_format=torch.channels_last)
    finally:
        for p, data in zip(weights, saved):
            p.data = data


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example ``max_{j≠y} z_j − z_y`` (Carlini & Wagner 2017): positive exactly when misclassified."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true_logit


def _objective(logits: torch.Tensor, labels: torch.Tensor, loss: str, targeted: bool) -> torch.Tensor:
    """Per-example quantity the attack ascends: the loss of the true class, or minus that of the target."""
    if loss == "ce":
        value = F.cross_entropy(logits, labels, reduction="none")
    else:
        value = margin_loss(logits, labels)
    return -value if targeted else value


def _succeeded(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    prediction = logits.argmax(dim=1)
    return prediction == labels if targeted else prediction != labels


def _per_example_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point (for L∞; radial scaling for L2) of the ε-ball around ``x`` that lies in [0, 1]."""
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        scale = (eps / _per_example_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        x_adv = x + delta * _bcast(scale, delta)
    # Clipping to [0, 1] only moves coordinates towards x, so the result stays inside the ball.
    return x_adv.clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform draw from the ε-ball (L∞: the cube; L2: the ball), clipped to [0, 1].

    For L2 this lies almost on the sphere of radius ε in high dimension. torchattacks instead draws the
    radius uniformly in [0, ε]; measured on 10,000 Fashion-MNIST images at ε = 1.5 with PGD-10
    (benchmarks/bench_agreement.py), that start leaves 7.4 points more robust examples on a robust model
    (54.12% against 46.68%) and 1.2 fewer on a standard one (17.86% against 19.06%): the uniform-ball start
    is kept, as the one that does not overstate robustness where it matters.
    """
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        direction = _step_direction(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), "l2")
        dims = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
        noise = direction * _bcast(radius * eps, x)
    return _project(x + noise, x, eps, norm)


def _step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size in the norm: sign for L∞, normalized gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _bcast(_per_example_norm(grad, "l2").clamp_min(1e-12), grad)


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> None:
    if not isinstance(model, nn.Module):
        raise AdvlabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if norm not in NORMS:
        raise AdvlabError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if not torch.is_floating_point(x) or x.dim() < 2:
        raise AdvlabError(f"x must be a float batch of shape (N, ...), got {tuple(x.shape)} {x.dtype}")
    if y.shape != x.shape[:1]:
        raise AdvlabError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    # ε in pixel units: L∞ cannot exceed the [0, 1] range; L2 cannot exceed the diagonal of the cube.
    check_range("eps", eps, 0.0, 1.0 if norm == "linf" else math.sqrt(x[0].numel()))
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise AdvlabError(
            "x must hold pixels in [0, 1] (put normalization inside the model, e.g. advlab.models.Normalize); "
            f"got values in [{x.min().item():.3g}, {x.max().item():.3g}]"
        )


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    objective: Objective,
    success: Objective | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The one gradient loop behind every attack: start, gradient, step, project, clip.

    Low level, for training methods with their own objective (TRADES' KL term, say): no input checks
    and no change of the model's mode. ``objective(logits, target)`` gives a per-example value to
    ascend; ``target`` is anything indexable along the batch (labels, or clean probabilities). With
    ``success`` (same signature, a boolean per example), an example leaves the loop at its first
    iterate that succeeds — found for free from the logits of the gradient pass — which keeps the
    attack exactly as strong and makes it much cheaper on weak models.
    """
    x_adv = _random_start(x, eps, norm, generator) if random_start and eps > 0 else x.clone()
    early_stop = success is not None
    result = x_adv.clone() if early_stop else x_adv
    active = torch.arange(x.shape[0], device=x.device)  # the examples still in the loop (rows of x)
    finished = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # their result is already kept
    x_act, t_act = x, target
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        (grad,) = torch.autograd.grad(objective(logits, t_act).sum(), x_adv)
        x_adv = x_adv.detach()
        if early_stop:
            done = success(logits.detach(), t_act) & ~finished
            if bool(done.any()):
                result[active[done]] = x_adv[done]
                finished |= done
                left = int((~finished).sum())
                if left == 0:
                    return result
                size = bucket_size(left, active.numel())
                if size < active.numel():
                    # Unfinished rows first, then finished ones to fill the bucket, in their old order.
                    keep = torch.argsort(finished.to(torch.uint8), stable=True)[:size].sort().values
                    active, x_act, t_act, x_adv, grad, finished = (
                        t[keep] for t in (active, x_act, t_act, x_adv, grad, finished))
        x_adv = _project(x_adv + alpha * _step_direction(grad, norm), x_act, eps, norm)
    if early_stop:
        result[active[~finished]] = x_adv[~finished]
        return result
    return x_adv


BUCKET = 32


def bucket_size(left: int, current: int) -> int:
    """How many rows the early-exit loop keeps when ``left`` of its ``current`` rows are unfinished.

    Rounding up to a multiple of 32 (finished rows ride along, their results already kept) bounds the
    batch shapes an evaluation ever sees: without it every step has a new size, which fragments the
    allocator's heap and fills oneDNN's primitive cache, so peak memory grew with the number of images
    (benchmarks/bench_eval.py). It also saves a copy on steps that fool only a few examples.
    """
    return min(current, -(-left // BUCKET) * BUCKET)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 20,
    norm: Norm = "linf",
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", arXiv:1706.06083).

    Threat model: white-box, ‖x_adv − x‖ ≤ ε in L∞ or L2, pixels in [0, 1].
    Untargeted (default) ascends the loss of the true label ``y``; ``targeted=True`` descends the loss
    of the target label ``y``. ``alpha`` defaults to 2.5·ε/steps (Madry et al.). With ``restarts > 1``
    each further random start runs only on the examples not yet fooled, and each example keeps its
    strongest result (a success first, then the higher loss). ``loss`` is ``"ce"`` (cross-entropy)
    or ``"margin"`` (Carlini–Wagner logit margin). ``early_stop`` freezes an example at its first
    successful iterate (use it for evaluation, where any success counts); without it every restart
    runs on every example, as a naive evaluation would, and the strongest result is still kept.

    Shapes: ``x`` (N, C, H, W) float in [0, 1], ``y`` (N,) int64; returns (N, C, H, W) in [0, 1].
    """
    _check_inputs(model, x, y, eps, norm)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise AdvlabError(f"steps must be an integer of at least 1, got {steps!r}")
    if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
        raise AdvlabError(f"restarts must be an integer of at least 1, got {restarts!r}")
    if loss not in LOSSES:
        raise AdvlabError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    check_range("alpha", alpha, 0.0)
    x = x.detach()
    y = y.detach().to(device=x.device, dtype=torch.long)
    def objective(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _objective(logits, labels, loss, targeted)

    def success(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _succeeded(logits, labels, targeted)

    run = dict(eps=eps, alpha=alpha, steps=int(steps), norm=norm, random_start=random_start,
               objective=objective, success=success if early_stop else None, generator=generator)
    with eval_mode(model), torch.enable_grad(), channels_last(model, x) as x_fast:
        return _pgd_restarts(model, x_fast, y, run, int(restarts), loss, targeted, early_stop).contiguous()


def _pgd_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, run: dict, restarts: int, loss: str,
                  targeted: bool, early_stop: bool) -> torch.Tensor:
    """PGD from ``restarts`` random starts, each example keeping its strongest result (a success first,
    then the higher objective); with ``early_stop`` a restart runs only on the examples not yet fooled."""
    best = perturb(model, x, y, **run)
    if restarts == 1:
        return best
    with torch.no_grad():
        logits = model(best)
    best_success = _succeeded(logits, y, targeted)
    best_objective = _objective(logits, y, loss, targeted)
    for _ in range(restarts - 1):
        todo = (~best_success if early_stop else torch.ones_like(best_success)).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        candidate = perturb(model, x[todo], y[todo], **run)
        with torch.no_grad():
            logits = model(candidate)
        success = _succeeded(logits, y[todo], targeted)
        objective = _objective(logits, y[todo], loss, targeted)
        was = best_success[todo]
        better = (success & ~was) | ((success == was) & (objective > best_objective[todo]))
        best[todo[better]] = candidate[better]
        best_success[todo[better]] = success[better]
        best_objective[todo[better]] = objective[better]
    return best


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples", arXiv:1412.6572): one step of size ε along the gradient's sign (L∞; for L2,
    along the normalized gradient, the "fast gradient method"), then clip to [0, 1].

    Identical to ``pgd(..., steps=1, alpha=eps, random_start=False)``. ``generator`` is accepted for a
    uniform signature and unused. Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,); returns ``x``'s shape.
    """
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm=norm, random_start=False, restarts=1,
               targeted=targeted, loss=loss, generator=generator, early_stop=early_stop)


def random_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """Not an attack but its baseline: random noise of the full size ε, the strongest noise of that size
    (L∞: uniform over the corners ±ε; L2: a uniform direction on the sphere of radius ε), clipped to
    [0, 1]. A sanity check against gradient masking: it must hurt less than PGD."""
    _check_inputs(model, x, y, eps, norm)
    x = x.detach()
    if norm == "linf":
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        return (x + eps * signs).clamp(0.0, 1.0)
    direction = _step_direction(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), "l2")
    return (x + eps * direction).clamp(0.0, 1.0)


AttackFn = Callable[..., torch.Tensor]
ATTACKS: dict[str, AttackFn] = {"fgsm": fgsm, "pgd": pgd, "noise": random_noise}


@dataclass(frozen=True)
class AttackSpec:
    """A named, fully specified attack whose step size scales with ε, for evaluations over an ε grid."""

    name: str = "pgd"  # a key of ATTACKS
    norm: str = "linf"  # the threat model of the paper's tables
    steps: int = 20  # PGD-20: the usual evaluation budget for small models
    restarts: int = 1  # more restarts only ever strengthen the attack (per-example best is kept)
    step_ratio: float | None = None  # α = step_ratio·ε; None: 2.5/steps (Madry et al.), 1 for FGSM
    random_start: bool = True  # Madry et al.: start inside the ball, not at x
    loss: str = "ce"
    targeted: bool = False

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise AdvlabError(f"unknown attack {self.name!r}; choose one of: {', '.join(sorted(ATTACKS))}")
        if self.norm not in NORMS:
            raise AdvlabError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if self.steps < 1 or self.restarts < 1:
            raise AdvlabError(f"steps and restarts must be at least 1, got {self.steps} and {self.restarts}")
        if self.step_ratio is not None:
            check_range("step size ratio", self.step_ratio, 0.0)

    @property
    def label(self) -> str:
        """Short display name, e.g. ``PGD-50×10 L∞``."""
        norm = "L∞" if self.norm == "linf" else "L2"
        if self.name == "fgsm":
            return f"FGSM {norm}"
        if self.name == "noise":
            return f"noise {norm}"
        restarts = f"×{self.restarts}" if self.restarts > 1 else ""
        return f"PGD-{self.steps}{restarts} {norm}" + (" targeted" if self.targeted else "")

    def alpha(self, eps: float) -> float:
        if self.name == "fgsm":
            return eps
        return (self.step_ratio if self.step_ratio is not None else 2.5 / self.steps) * eps

    def to_dict(self) -> dict:
        return asdict(self)

    def hyperparameters(self, eps: float) -> dict:
        """Everything needed to rerun this attack at ``eps``: for reports and metrics files."""
        steps = 1 if self.name == "fgsm" else 0 if self.name == "noise" else self.steps
        return {"attack": self.name, "norm": self.norm, "eps": eps, "alpha": self.alpha(eps) if steps else None,
                "steps": steps, "restarts": self.restarts if self.name == "pgd" else 1,
                "random_start": self.random_start if self.name == "pgd" else False,
                "loss": self.loss, "targeted": self.targeted}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 generator: torch.Generator | None = None, early_stop: bool = False) -> torch.Tensor:
        common = dict(eps=eps, norm=self.norm, targeted=self.targeted, loss=self.loss,
                      generator=generator, early_stop=early_stop)
        if self.name == "pgd":
            return pgd(model, x, y, alpha=self.alpha(eps), steps=self.steps, random_start=self.random_start,
                       restarts=self.restarts, **common)
        return ATTACKS[self.name](model, x, y, **common)


_ATTACK_PATTERN = re.compile(r"^(fgsm|noise|pgd)(?:-?(\d+))?(?:x(\d+))?(?:-(linf|l2))?$")


def parse_attack(text: str, *, norm: str | None = None) -> AttackSpec:
    """Parse ``fgsm``, ``noise``, ``pgd``, ``pgd50``, ``pgd-50x10``, ``pgd20-l2`` into an :class:`AttackSpec`.

    ``norm`` is the default threat model where the name does not give one.
    """
    match = _ATTACK_PATTERN.match(text.strip().lower().replace("∞", "inf"))
    if not match:
        raise AdvlabError(
            f"unknown attack {text!r}; use fgsm, noise, pgd, pgdSTEPS or pgdSTEPSxRESTARTS "
            "(e.g. pgd50x10), optionally with -l2 or -linf"
        )
    name, steps, restarts, spec_norm = match.groups()
    if name != "pgd" and (steps or restarts):
        raise AdvlabError(f"attack {name} takes no step or restart count, got {text!r}")
    return AttackSpec(name=name, norm=spec_norm or norm or "linf", steps=int(steps or 20), restarts=int(restarts or 1))
