"""DeepFool (L2 and L∞): step to the nearest boundary of the classifier linearized at the current point.

Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, "DeepFool: a simple and accurate method to fool deep neural
networks" (arXiv:1511.04599); facts from the authors' code (LTS4/DeepFool, ``deepfool.py``) and
jeromerony/adversarial-library (``deepfool.py``). Among the ``candidates`` most likely classes by the clean
logits (the true one included), each step picks the wrong class l whose linearized boundary is nearest,
|f_l − f_y| / ‖∇(f_l − f_y)‖_dual, and adds the step that reaches it (+1e-4, the authors'); the image is
x + (1 + overshoot)·(sum of the steps), clipped to [0, 1], and the first misclassified one is the answer.
Python::

    from advlab.attacks.deepfool import deepfool, deepfool_minimal
    result = deepfool_minimal(model, x, y, norm="l2")     # each example's first adversarial found
    x_adv = deepfool(model, x, y, eps=0.1)

Command line: ``advlab attack RUN_DIR --attack deepfool-l2 --eps 0.5 --out OUT`` (``deepfool[STEPS]``,
default ``deepfool50``; ``deepfool:overshoot=0.05,candidates=5``).
"""

from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.loop import likely_wrong_classes
from advlab.attacks.minimum_norm import (
    AttackParameter,
    MinimalPerturbation,
    dual_norm,
    misclassified,
    run_minimal,
    untargeted_only,
    within_eps,
)
from advlab.attacks.registry import register_attack
from advlab.attacks.threat import Norm, check_attack_inputs, check_count
from advlab.errors import AdvlabError

STEPS = 50  # the authors' max_iter; most examples need a handful
OVERSHOOT = 0.02  # the authors': the total step is stretched by 2 % to land past the boundary
CANDIDATES = 10  # the authors' num_classes: the most likely classes, the true one included


def _nearest_step(
    net: nn.Module, point: torch.Tensor, y: torch.Tensor, others: torch.Tensor, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at ``point`` and DeepFool's step from it: towards the nearest linearized boundary among
    the classes ``others`` (N, K), one backward pass each. Shapes: (N, C) and flat (N, D)."""
    point = point.detach().requires_grad_(True)
    logits = net(point)
    wide = logits.to(point.dtype)  # in x's precision (float32 under fp16 autocast)
    true = wide.gather(1, y[:, None]).squeeze(1)
    best_distance, best_grad = None, None
    for rank in range(others.shape[1]):
        diff = wide.gather(1, others[:, rank : rank + 1]).squeeze(1) - true
        (grad,) = torch.autograd.grad(diff.sum(), point, retain_graph=rank < others.shape[1] - 1)
        grad = grad.flatten(1)
        distance = diff.detach().abs() / dual_norm(grad, norm).clamp_min(1e-12)
        closer = distance < best_distance if best_distance is not None else torch.ones_like(distance, dtype=bool)
        best_distance = distance if best_distance is None else torch.where(closer, distance, best_distance)
        best_grad = grad if best_grad is None else torch.where(closer[:, None], grad, best_grad)
    size = best_distance + 1e-4  # the authors' slack past the linearized boundary
    if norm == "linf":
        return logits.detach(), size[:, None] * best_grad.sign()
    return logits.detach(), size[:, None] * best_grad / best_grad.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _deepfool_search(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, steps: int, overshoot: float, candidates: int
) -> torch.Tensor:
    """DeepFool on every example: its first misclassified iterate (x where none within ``steps`` steps, or
    where x is misclassified already). An example leaves at its first misclassified iterate."""
    with torch.no_grad():
        clean = net(x)
    others = torch.stack(likely_wrong_classes(clean, y, candidates - 1), dim=1)
    layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    x0 = x.flatten(1)
    found = x0.clone()
    rows = torch.arange(len(y), device=y.device)
    total = torch.zeros_like(x0)
    point = x
    for step in range(steps + 1):
        logits, direction = _nearest_step(net, point, y[rows], others[rows], norm)
        fooled = misclassified(logits, y[rows])
        found[rows[fooled]] = point.detach().flatten(1)[fooled]
        if step == steps or bool(fooled.all()):
            break
        going = ~fooled
        rows, total = rows[going], total[going] + direction[going]
        image = (x0[rows] + (1 + overshoot) * total).clamp(0.0, 1.0).view(len(rows), *x.shape[1:])
        point = image.contiguous(memory_format=layout) if layout is not None else image
    return found.view(x.shape)


def deepfool_minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm = "linf",
    steps: int = STEPS,
    eps: float | None = None,
    early_stop: bool = False,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
    overshoot: float = OVERSHOOT,
    candidates: int = CANDIDATES,
) -> MinimalPerturbation:
    """DeepFool's adversarial per example (see :func:`deepfool`). DeepFool stops each example at its first
    adversarial point anyway, so ``eps`` and ``early_stop`` change nothing; it draws nothing at random."""
    if not (overshoot >= 0 and candidates >= 2):
        raise AdvlabError(f"DeepFool needs overshoot ≥ 0 and candidates ≥ 2, got {overshoot!r}, {candidates!r}")
    run = dict(norm=norm, steps=check_count("steps", steps), overshoot=overshoot, candidates=int(candidates))

    def search(net: nn.Module, x_net: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _deepfool_search(net, x_net, labels, **run)

    return run_minimal(model, x, y, norm=norm, channels_last=channels_last, search=search)


@register_attack(
    "deepfool",
    title="DeepFool",
    summary="DeepFool (Moosavi-Dezfooli et al. 2016), minimum norm: deepfool = deepfool50, deepfoolSTEPS",
    counts=r"(?:-?(?P<steps>\d+))?",
    syntax="deepfool[STEPS]",
    default_steps=STEPS,
    options=("steps",),
    fixed_loss="margin",
    minimal=deepfool_minimal,
    parameters=(
        AttackParameter("overshoot", float, OVERSHOOT, "stretch of the total step", "≥ 0", lambda v: v >= 0),
        AttackParameter(
            "candidates", int, CANDIDATES, "classes considered, the true one included", "≥ 2", lambda v: v >= 2
        ),
    ),
)
def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = STEPS,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    channels_last: bool = True,
    overshoot: float = OVERSHOOT,
    candidates: int = CANDIDATES,
) -> torch.Tensor:
    """DeepFool (Moosavi-Dezfooli et al., CVPR 2016, "DeepFool: a simple and accurate method to fool deep
    neural networks", arXiv:1511.04599) at one ε.

    Threat model: white-box, minimum L2 or L∞ norm (the paper's ℓp form: the L∞ step is the distance
    times sign(∇)), pixels in [0, 1]; success is a wrong prediction. At most ``steps`` (50, the authors')
    steps, each one forward pass and ``candidates`` − 1 (9) backward passes; ``overshoot`` 0.02 (the
    authors'). Returns the adversarial found where its norm is at most ``eps``, else x. ``targeted`` and
    ``loss`` must stay at the registry's neutral values.

    Shapes: ``x`` (N, C, H, W) float in [0, 1], ``y`` (N,) int64; returns (N, C, H, W) in [0, 1].
    """
    check_attack_inputs(model, x, y, eps, norm)
    untargeted_only("DeepFool", targeted, loss)
    run = dict(norm=norm, steps=steps, channels_last=channels_last, overshoot=overshoot, candidates=candidates)
    return within_eps(deepfool_minimal(model, x, y, **run), x.detach(), eps)


__all__ = ["CANDIDATES", "OVERSHOOT", "STEPS", "deepfool", "deepfool_minimal"]
