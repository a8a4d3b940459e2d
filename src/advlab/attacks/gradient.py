"""Gradient attacks on image classifiers: FGSM and PGD (L∞ and L2), plus the random-noise baseline.

Every attack is a plain function with one shared, keyword-only signature::

    x_adv = fgsm(model, x, y, eps=0.1)
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.01, steps=20, norm="linf", restarts=5)
    x_adv = pgd(model, x, target, eps=1.5, norm="l2", targeted=True, loss="margin")

``x`` is a float batch of images with pixels in [0, 1] (normalization belongs inside the model), ``y``
holds the true labels (or, with ``targeted=True``, the target labels), and ``model`` is any ``nn.Module``
that returns logits. The result has ``x``'s shape, lies in [0, 1] and within ε of ``x`` in the chosen
norm. The model runs in eval mode during the attack and gets its own modes back afterwards; parameter
gradients are never touched (gradients are taken with ``torch.autograd.grad`` w.r.t. the input only),
and with ``channels_last`` (the default) a CPU attack runs its convolutions in NHWC on a twin of the
model (:func:`advlab.runtime.channels_last_twin`): the caller's weights are never changed.

From the command line: ``advlab attack RUN_DIR --attack pgd20 --eps 0.1 --out OUT``; the names the CLI and
configs accept are those of :mod:`advlab.attacks.registry` (``fgsm``, ``noise``, ``pgd50x10-l2``, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.loop import (
    LOSSES,
    Objective,
    Strongest,
    attack_objective,
    attack_success,
    eval_mode,
    objective_and_gradient,
    perturb,
    success_rate,
)
from advlab.attacks.registry import register_attack
from advlab.attacks.threat import Norm, check_attack_inputs, check_count, step_direction
from advlab.errors import AdvlabError, check_range
from advlab.runtime import fast_layout

MADRY_STEP_FACTOR = 2.5  # Madry et al.: α = 2.5·ε/steps reaches the ball's edge from any start


def madry_alpha(eps: float, steps: int) -> float:
    """PGD's default step size, 2.5·ε/steps (Madry et al. 2018): the one place this rule lives."""
    return MADRY_STEP_FACTOR * eps / steps


@register_attack(
    "pgd",
    title="PGD",
    summary="projected gradient descent (Madry et al. 2018): pgd = pgd20, pgdSTEPS, pgdSTEPSxRESTARTS",
    counts=r"(?:-?(?P<steps>\d+))?(?:x(?P<restarts>\d+))?",
    syntax="pgd[STEPS][xRESTARTS]",
    default_steps=20,
    step_ratio=lambda steps: madry_alpha(1.0, steps),
    options=("steps", "restarts", "random_start", "alpha", "step_ratio", "loss", "targeted", "eot", "draws"),
)
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
    channels_last: bool = True,
    eot: int = 1,
    draws: int = 1,
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
    ``channels_last`` runs CPU convolutions in NHWC on a copy of the model (same values, faster). ``eot``
    averages each step's gradient, and the logits that judge success, over that many passes, for randomized
    models (``pgd50-eot20``). ``draws`` > 1 (an evaluation of a randomized model) judges each restart's
    result by the share of that many fresh passes it fools (:func:`advlab.attacks.loop.success_rate`), and
    no example leaves early on one pass's say.

    Shapes: ``x`` (N, C, H, W) float in [0, 1], ``y`` (N,) int64; returns (N, C, H, W) in [0, 1].
    """
    check_attack_inputs(model, x, y, eps, norm)
    steps, restarts, eot = check_count("steps", steps), check_count("restarts", restarts), check_count("eot", eot)
    draws = check_count("draws", draws)
    early_stop = early_stop and draws == 1  # on a randomized model one pass never lets an example go
    if loss not in LOSSES:
        raise AdvlabError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    alpha = madry_alpha(eps, steps) if alpha is None else alpha
    check_range("alpha", alpha, 0.0)
    x = x.detach()
    y = y.detach().to(device=x.device, dtype=torch.long)
    objective, success = attack_objective(loss, targeted), attack_success(targeted)
    run = dict(
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm=norm,
        random_start=random_start,
        objective=objective,
        success=success if early_stop else None,
        generator=generator,
        eot=eot,
    )
    with eval_mode(model), torch.enable_grad(), fast_layout(model, x, channels_last) as (net, x_fast):
        best = perturb(net, x_fast, y, **run)
        if restarts > 1:
            best = _more_restarts(
                net, x_fast, y, best, run=run, more=restarts - 1, success=success, early_stop=early_stop, draws=draws
            )
    return best.contiguous()


def _more_restarts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    best: torch.Tensor,
    *,
    run: dict,
    more: int,
    success: Objective,
    early_stop: bool,
    draws: int = 1,
) -> torch.Tensor:
    """``more`` further random starts, each example keeping its strongest result (:class:`Strongest`: a
    success first, then the higher objective); with ``early_stop`` a restart runs only on the examples not
    yet fooled. Each result is judged by its objective and logits averaged over the run's EOT passes, and
    with ``draws`` > 1 by the share of that many fresh passes it fools."""

    def judge(x_adv: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, _, logits = objective_and_gradient(
            model, x_adv, target, run["objective"], eot=run["eot"], need_grad=False
        )
        if draws > 1:
            return success_rate(model, x_adv, target, success, draws), value
        return success(logits, target), value

    kept = Strongest(best, *judge(best, y))
    for _ in range(more):
        todo = (~kept.done if early_stop else torch.ones_like(kept.done)).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        candidate = perturb(model, x[todo], y[todo], **run)
        kept.keep(todo, candidate, *judge(candidate, y[todo]))
    return kept.x


@register_attack(
    "fgsm",
    title="FGSM",
    summary="fast gradient sign method (Goodfellow et al. 2015); one step of ε",
    default_steps=1,
    step_ratio=lambda steps: 1.0,
    options=("loss", "targeted", "eot"),
)
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
    channels_last: bool = True,
    eot: int = 1,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples", arXiv:1412.6572): one step of size ε along the gradient's sign (L∞; for L2,
    along the normalized gradient, the "fast gradient method"), then clip to [0, 1].

    Identical to ``pgd(..., steps=1, alpha=eps, random_start=False)``. ``generator`` is accepted for a
    uniform signature and unused. Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,); returns ``x``'s shape.
    """
    return pgd(
        model,
        x,
        y,
        eps=eps,
        alpha=eps,
        steps=1,
        norm=norm,
        random_start=False,
        restarts=1,
        targeted=targeted,
        loss=loss,
        generator=generator,
        early_stop=early_stop,
        channels_last=channels_last,
        eot=eot,
    )


@register_attack("noise", title="noise", summary="random noise of size ε (a baseline, not an attack)", gradient=False)
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
    channels_last: bool = True,
) -> torch.Tensor:
    """Not an attack but its baseline: random noise of the full size ε, the strongest noise of that size
    (L∞: uniform over the corners ±ε; L2: a uniform direction on the sphere of radius ε), clipped to
    [0, 1]. A sanity check against gradient masking: it must hurt less than PGD. The model is not run;
    the other arguments are accepted for a uniform signature."""
    check_attack_inputs(model, x, y, eps, norm)
    x = x.detach()
    if norm == "linf":
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        return (x + eps * signs).clamp(0.0, 1.0)
    direction = step_direction(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), "l2")
    return (x + eps * direction).clamp(0.0, 1.0)
