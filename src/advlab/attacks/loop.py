"""The one gradient loop behind every gradient attack and training method: start, gradient, step, project.

Low level: :func:`perturb` checks nothing and never changes the model's mode, so that training methods
with objectives of their own (TRADES' KL term, say) use the very loop the attacks use::

    from advlab.attacks.loop import perturb, LOSSES
    x_adv = perturb(model, x, y, eps=0.1, alpha=0.01, steps=20, objective=LOSSES["ce"])

The attacks users call (:mod:`advlab.attacks.gradient`) wrap it with input checks, eval mode, restarts
and the CPU layout. The losses an attack can ascend are in :data:`LOSSES`, by name.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks.threat import project, step_direction
from advlab.attacks.threat import random_start as random_point_in_ball
from advlab.errors import AdvlabError

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of the labels."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example ``max_{j≠y} z_j − z_y`` (Carlini & Wagner 2017): positive exactly when misclassified."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true_logit


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example difference of logits ratio ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e−12)``, π sorting
    the logits in decreasing order (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", arXiv:2003.01690). The margin loss divided by the spread of
    the top logits: positive exactly when misclassified, and unchanged when the logits are shifted or scaled.
    """
    if logits.shape[1] < 3:
        raise AdvlabError(
            f"the DLR loss needs at least 3 classes (it divides by z_π1 − z_π3), "
            f"but the model gives {logits.shape[1]}; use cross-entropy instead"
        )
    top = logits.topk(3, dim=1).values
    return margin_loss(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


# The losses an attack can ascend, by the name used in attack names ("pgd20-margin") and configs.
LOSSES: dict[str, Objective] = {"ce": cross_entropy, "margin": margin_loss, "dlr": dlr_loss}


def attack_objective(loss: str, targeted: bool) -> Objective:
    """The per-example value an attack ascends: the loss of the true class, or minus that of the target."""
    value = LOSSES[loss]
    if not targeted:
        return value
    return lambda logits, labels: -value(logits, labels)


def attack_success(targeted: bool) -> Objective:
    """Per example: did the attack get its way (a wrong prediction, or the target's)?"""
    if targeted:
        return lambda logits, labels: logits.argmax(dim=1) == labels
    return lambda logits, labels: logits.argmax(dim=1) != labels


BUCKET = 32


def bucket_size(left: int, current: int) -> int:
    """How many rows the early-exit loop keeps when ``left`` of its ``current`` rows are unfinished.

    Rounding up to a multiple of 32 (finished rows ride along, their results already kept) bounds the
    batch shapes an evaluation ever sees: without it every step has a new size, which fragments the
    allocator's heap and fills oneDNN's primitive cache, so peak memory grew with the number of images
    (benchmarks/bench_eval.py). It also saves a copy on steps that fool only a few examples.
    """
    return min(current, -(-left // BUCKET) * BUCKET)


def _gradient_scale(x: torch.Tensor) -> float:
    """Under fp16 autocast the input gradient of a well-classified example can underflow to zero (fp16
    stops near 6e-8), which would leave it unattacked; the objective is scaled up by 2¹⁰ first (GradScaler's
    2¹⁶ would overflow fp16 on a margin loss's ±1 per logit). Only the gradient's direction is used (its
    sign, or its direction under L2), so the scale changes nothing else."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16:
        return 1024.0
    return 1.0


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
    clip_start: bool = True,
    objective: Objective,
    success: Objective | None = None,
    generator: torch.Generator | None = None,
    eot: int = 1,
) -> torch.Tensor:
    """Ascend ``objective`` from ``x`` (or a random point of its ε-ball) for ``steps`` projected steps.

    ``objective(logits, target)`` gives a per-example value to ascend; ``target`` is anything indexable
    along the batch (labels, or clean probabilities). With ``success`` (same signature, a boolean per
    example), an example leaves the loop at its first iterate that succeeds, found for free from the
    logits of the gradient pass: the attack stays exactly as strong and costs much less on weak models.
    ``eot`` > 1 averages each step's gradient, and the logits that decide success, over that many passes
    (Expectation over Transformation, for a randomized model: no example leaves on one lucky draw).
    ``clip_start=False`` takes the first gradient at the random start before it is clipped to [0, 1], as
    some training recipes do (:func:`advlab.attacks.threat.random_start`); every step is projected as ever.
    """
    if not clip_start and success is not None:
        raise ValueError("an unclipped random start is for training, not for an attack that keeps its iterates")
    x_adv = random_point_in_ball(x, eps, norm, generator, clip=clip_start) if random_start and eps > 0 else x.clone()
    early_stop = success is not None
    result = x_adv.clone() if early_stop else x_adv
    active = torch.arange(x.shape[0], device=x.device)  # the examples still in the loop (rows of x)
    finished = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # their result is already kept
    x_act, t_act = x, target
    scale = _gradient_scale(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        (grad,) = torch.autograd.grad(objective(logits, t_act).sum() * scale, x_adv)
        for _ in range(eot - 1):  # EOT: the mean gradient and logits over the draws of a random model
            more = model(x_adv)
            grad = grad + torch.autograd.grad(objective(more, t_act).sum() * scale, x_adv)[0]
            logits = logits.detach() + more.detach()
        if eot > 1:
            grad, logits = grad / eot, logits / eot
        x_adv = x_adv.detach()
        if early_stop:
            done = success(logits.detach(), t_act) & ~finished
            # The loop's one wait for the device: both counts in a single transfer.
            fooled, left = torch.stack([done.sum(), (~(finished | done)).sum()]).tolist()
            if fooled:
                result[active[done]] = x_adv[done]
                finished |= done
                if left == 0:
                    return result
                size = bucket_size(left, active.numel())
                if size < active.numel():
                    # Unfinished rows first, then finished ones to fill the bucket, in their old order.
                    keep = torch.argsort(finished.to(torch.uint8), stable=True)[:size].sort().values
                    active, x_act, t_act, x_adv, grad, finished = (
                        t[keep] for t in (active, x_act, t_act, x_adv, grad, finished)
                    )
        x_adv = project(x_adv + alpha * step_direction(grad, norm), x_act, eps, norm)
    if early_stop:
        result[active[~finished]] = x_adv[~finished]
        return result
    return x_adv
