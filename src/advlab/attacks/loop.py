"""The one gradient loop behind every gradient attack and training method: start, gradient, step, project.

Low level: :func:`perturb` checks nothing and never changes the model's mode, so that training methods
with objectives of their own (TRADES' KL term, say) use the very loop the attacks use::

    from advlab.attacks.loop import perturb, LOSSES
    x_adv = perturb(model, x, y, eps=0.1, alpha=0.01, steps=20, objective=LOSSES["ce"])

The attacks users call (:mod:`advlab.attacks.gradient`, :mod:`advlab.attacks.apgd`) wrap it with input
checks, eval mode, restarts and the CPU layout. What every gradient attack shares lives here, once: the
losses an attack can ascend (:data:`LOSSES`, by name), the gradient at a point
(:func:`objective_and_gradient`: EOT, precision, the fp16 scale), the rule that keeps each example's
strongest result (:class:`Strongest`), the classes a targeted attack aims at (:func:`likely_wrong_classes`)
and the batch shapes of early exit (:func:`bucket_size`, :func:`pad_to_bucket`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

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


def likely_wrong_classes(logits: torch.Tensor, labels: torch.Tensor, count: int | None = None) -> list[torch.Tensor]:
    """The ``count`` (at most C − 1, default all) most likely wrong classes of each example by ``logits``,
    most likely first: the targets of a targeted attack, as AutoAttack's APGD-T picks them from the clean
    logits. Shapes: ``logits`` (N, C), ``labels`` (N,); returns ``count`` tensors of shape (N,), int64."""
    classes = logits.shape[1]
    count = classes - 1 if count is None else min(count, classes - 1)
    wrong = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)
    return [wrong[:, rank].clone() for rank in range(count)]


def success_rate(model: nn.Module, x_adv: torch.Tensor, target, success: Objective, draws: int) -> torch.Tensor:
    """Per example, the share of ``draws`` fresh forward passes (no gradient) in which the attack gets its
    way (``success(logits, target)``): how a randomized model is judged, so that no attack keeps a point or
    lets an example go on one lucky draw. Shapes: ``x_adv`` (N, ...); returns (N,) float32 in [0, 1]."""
    with torch.no_grad():
        hits = sum(success(model(x_adv), target).float() for _ in range(draws))
    return hits / draws


@dataclass
class Strongest:
    """Each example's strongest result so far, updated in place by :meth:`keep`: PGD's restarts, APGD's
    iterates, runs and targets all keep theirs by this one rule. Shapes: ``x`` (N, ...); ``success`` (N,)
    did ``x`` get the attack its way: a bool, or on a randomized model the share of passes it did
    (:func:`success_rate`), kept as float32 either way; ``value`` (N,), the objective at ``x`` (−inf:
    nothing kept)."""

    x: torch.Tensor
    success: torch.Tensor
    value: torch.Tensor

    def __post_init__(self) -> None:
        self.success = self.success.float()

    @property
    def done(self) -> torch.Tensor:
        """Per example: its kept result succeeds outright (on every pass judged), nothing left to gain."""
        return self.success >= 1

    def keep(
        self,
        rows: torch.Tensor,
        candidate: torch.Tensor,
        success: torch.Tensor,
        value: torch.Tensor,
        *,
        first_success: bool = False,
    ) -> torch.Tensor:
        """Keep ``candidate`` (results for the examples ``rows``) where it is stronger: a success beats a
        failure (a higher success rate a lower one), then the higher objective wins. With ``first_success``
        a kept success is never replaced (early exit: an example is frozen at its first success). Returns
        the mask over ``rows`` of what was kept. Shapes: ``rows`` (M,) indices, ``candidate`` (M, ...),
        ``success`` (bool or rates) and ``value`` (M,)."""
        had, success = self.success[rows], success.float()
        better = (success > had) | ((success == had) & (value > self.value[rows]))
        if first_success:
            better &= had < 1
        taken = rows[better]
        self.x[taken], self.success[taken], self.value[taken] = candidate[better], success[better], value[better]
        return better


BUCKET = 32


def bucket_size(left: int, current: int) -> int:
    """How many rows the early-exit loop keeps when ``left`` of its ``current`` rows are unfinished.

    Rounding up to a multiple of 32 (finished rows ride along, their results already kept) bounds the
    batch shapes an evaluation ever sees: without it every step has a new size, which fragments the
    allocator's heap and fills oneDNN's primitive cache, so peak memory grew with the number of images
    (benchmarks/bench_eval.py). It also saves a copy on steps that fool only a few examples.
    """
    return min(current, -(-left // BUCKET) * BUCKET)


def pad_to_bucket(mask: torch.Tensor, left: int | None = None) -> torch.Tensor:
    """The rows to keep when ``mask`` marks the unfinished ones: all of them, then the first finished ones
    up to :func:`bucket_size`, in their old order (sorted indices). The extra rows are worked on for nothing
    and their results are ignored by the caller; in exchange the batch shapes stay few. ``left`` is
    ``mask.sum()`` where the caller already has it (a wait for the device saved). Shapes: ``mask`` (N,)
    bool; returns (M,) int64, M = bucket_size(left, N), all of ``arange(N)`` when M = N."""
    left = int(mask.sum()) if left is None else left
    size = bucket_size(left, mask.numel())
    return torch.argsort((~mask).to(torch.uint8), stable=True)[:size].sort().values


# Under fp16 autocast the input gradient of a well-classified example can underflow to zero (fp16 stops
# near 6e-8), which would leave it unattacked; the objective is scaled up by 2¹⁰ before the backward pass
# and the gradient scaled back after (GradScaler's 2¹⁶ would overflow fp16 on a margin loss's ±1 per logit).
FP16_GRADIENT_SCALE = 1024.0


def _gradient_scale(x: torch.Tensor) -> float:
    device = x.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16:
        return FP16_GRADIENT_SCALE
    return 1.0


class ObjectiveGradient(NamedTuple):
    """What :func:`objective_and_gradient` finds at a point, each the mean over the EOT passes."""

    value: torch.Tensor  # (N,) the per-example objective
    grad: torch.Tensor | None  # the input gradient of its sum, x's shape (None when not asked for)
    logits: torch.Tensor  # (N, C) detached: what decides success


def objective_and_gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    target,
    objective: Objective,
    *,
    eot: int = 1,
    need_grad: bool = True,
) -> ObjectiveGradient:
    """The per-example ``objective(logits, target)`` at ``x_adv``, its input gradient and the logits, for
    every gradient attack (PGD's loop, APGD): the one place that knows EOT, precision and the fp16 scale.

    The objective sees the logits as the model returns them (under autocast, in its dtype); an objective
    that wants float32 upcasts them itself, as APGD's losses do. ``eot`` > 1 (Expectation over
    Transformation, Athalye et al. 2018, for a randomized model) averages the objective, the gradient and
    the logits over that many passes, so no example counts as fooled on one lucky draw. Under fp16 autocast
    the objective is scaled before the backward pass and the gradient scaled back, so a confident example's
    gradient does not underflow to zero. ``need_grad=False`` runs the passes without autograd and returns
    ``grad=None``. Shapes: ``x_adv`` (N, ...); returns (N,), (N, ...), (N, C).
    """
    scale = _gradient_scale(x_adv) if need_grad else 1.0
    value_sum, grad_sum, logits_sum = None, None, None
    x_adv = x_adv.detach().requires_grad_(True) if need_grad else x_adv
    with torch.enable_grad() if need_grad else torch.no_grad():
        for _ in range(eot):
            logits = model(x_adv)
            value = objective(logits, target)
            if need_grad:
                (grad,) = torch.autograd.grad(value.sum() * scale, x_adv)
                grad_sum = grad if grad_sum is None else grad_sum + grad
            value, logits = value.detach(), logits.detach()
            value_sum = value if value_sum is None else value_sum + value
            logits_sum = logits if logits_sum is None else logits_sum + logits
    if eot > 1:
        value_sum, logits_sum = value_sum / eot, logits_sum / eot
        grad_sum = None if grad_sum is None else grad_sum / eot
    if scale != 1.0:
        grad_sum = grad_sum / scale  # exact: a power of two
    return ObjectiveGradient(value_sum, grad_sum, logits_sum)


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
    (:func:`objective_and_gradient`, which also keeps fp16 gradients from underflowing).
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
    for _ in range(steps):
        _, grad, logits = objective_and_gradient(model, x_adv, t_act, objective, eot=eot)
        if early_stop:
            done = success(logits, t_act) & ~finished
            # The loop's one wait for the device: both counts in a single transfer.
            fooled, left = torch.stack([done.sum(), (~(finished | done)).sum()]).tolist()
            if fooled:
                result[active[done]] = x_adv[done]
                finished |= done
                if left == 0:
                    return result
                keep = pad_to_bucket(~finished, left)
                if keep.numel() < active.numel():
                    active, x_act, t_act, x_adv, grad, finished = (
                        t[keep] for t in (active, x_act, t_act, x_adv, grad, finished)
                    )
        x_adv = project(x_adv + alpha * step_direction(grad, norm), x_act, eps, norm)
    if early_stop:
        result[active[~finished]] = x_adv[~finished]
        return result
    return x_adv
