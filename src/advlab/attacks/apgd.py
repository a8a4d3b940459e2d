"""Auto-PGD (APGD), AutoAttack's parameter-free PGD: APGD-CE, APGD-DLR and APGD-T, for L∞ and L2.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (arXiv:2003.01690); reference code fra31/auto-attack, autoattack/autopgd_base.py.
APGD needs no step size: it starts at 2ε and halves the step, per example, at checkpoints where the loss
stopped rising, restarting those examples from their best point. Python::

    from advlab.attacks.apgd import apgd_ce, apgd_t, count_passes
    x_adv = apgd_ce(model, x, y, eps=8 / 255, steps=100, early_stop=True)
    with count_passes(model) as passes:
        x_adv = apgd_t(model, x, y, eps=0.5, norm="l2")     # 9 targets × 100 iterations
    passes.gradients                                        # examples through a forward-backward pass

Command line: ``advlab attack RUN_DIR --attack apgd-ce100x5 --eps 8/255 --out OUT`` (``apgd-ce``,
``apgd-dlr``, ``apgd-t``, each ``[STEPS][xRESTARTS]``, default 100 iterations and 1 run, ``-l2``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from advlab.attacks.loop import bucket_size, cross_entropy, dlr_loss, eval_mode
from advlab.attacks.registry import register_attack
from advlab.attacks.threat import (
    Norm,
    check_attack_inputs,
    check_count,
    per_example_norm,
    project,
    step_direction,
)
from advlab.errors import AdvlabError
from advlab.runtime import fast_layout

RHO = 0.75  # the paper's ρ: halve the step where under 75% of an interval's steps raised the loss
MOMENTUM = 0.75  # the paper's α: weight of the new step against the last move (0.25)
TARGETS = 9  # APGD-T's default: the 9 most likely wrong classes (all of them on 10-class data)

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels, targets)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example targeted DLR loss ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12)`` of Croce & Hein
    2020 (arXiv:2003.01690), π sorting the logits in decreasing order: positive once the target ``t``
    outscores the label ``y``. Shapes: ``logits`` (N, C) with C ≥ 4, ``labels`` and ``targets`` (N,)."""
    if logits.shape[1] < 4:
        raise AdvlabError(
            f"the targeted DLR loss of APGD-T needs at least 4 classes (it divides by "
            f"z_π1 − (z_π3 + z_π4)/2), but the model gives {logits.shape[1]}; use apgd-ce instead"
        )
    top = logits.topk(4, dim=1).values
    gap = logits.gather(1, targets[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)
    return gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


_OBJECTIVES: dict[str, Objective] = {
    "ce": lambda logits, labels, targets: cross_entropy(logits, labels),
    "dlr": lambda logits, labels, targets: dlr_loss(logits, labels),
    "dlr-targeted": targeted_dlr_loss,
}


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ⌈p_j·steps⌉`` (j ≥ 1, no repeats) at which APGD may halve its step, from
    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` while ``p_j ≤ 1``
    (Croce & Hein 2020, Sec. 3.2). For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99. Computed in hundredths,
    exactly: in floats 0.22 + 0.19 exceeds 0.41 and its ceiling would be 42. The reference code rounds the
    interval lengths down instead (⌊0.22N⌋, shrinking by ⌊0.03N⌋ to ⌊0.06N⌋), the same for multiples of 100.
    """
    points: list[int] = []
    previous, current = 0, 22
    while current <= 100:
        point = -(-current * steps // 100)
        if point not in points:
            points.append(point)
        previous, current = current, current + max(current - previous - 3, 6)
    return points


def halve_step(
    increases: torch.Tensor,
    interval: int,
    best_loss: torch.Tensor,
    best_loss_before: torch.Tensor,
    halved_before: torch.Tensor,
    rho: float = RHO,
) -> torch.Tensor:
    """Per example, whether APGD halves its step at a checkpoint (Croce & Hein 2020, Sec. 3.2): (1) fewer
    than ``rho·interval`` of the ``interval`` steps since the last checkpoint raised the loss, or (2) the
    step was not halved at the last checkpoint and the best loss has not risen since. Shapes: (N,).
    As the paper, (1) is strict and counts f(x^(k+1)) > f(x^(k)) from k = w_{j−1}; the reference code
    halves at equality too, and in the first interval compares f(x^(1)) with 0 instead of f(x^(0))."""
    oscillating = increases < rho * interval
    stalled = ~halved_before & (best_loss <= best_loss_before)
    return oscillating | stalled


def apgd_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """APGD's random start, as the reference draws it: L∞, a uniform draw from [−1, 1]^d scaled so that its
    largest coordinate is ε; L2, a Gaussian direction of length ε. Then clipped to [0, 1]."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        noise = noise / per_example_norm(noise, "linf").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    else:
        noise = step_direction(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), "l2")
    return project(x + eps * noise, x, eps, norm)


@dataclass
class PassCount:
    """What :func:`count_passes` saw: examples (rows) through the model's forward pass."""

    forwards: int = 0  # all forward passes
    gradients: int = 0  # those recorded for autograd: forward-backward passes of an attack


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the examples that go through ``model`` inside the ``with`` block (a forward hook on it; the
    channels-last twin of :func:`advlab.runtime.fast_layout` shares the caller's hooks, so it counts too)."""
    count = PassCount()

    def hook(module: nn.Module, args, output) -> None:
        count.forwards += output.shape[0]
        if output.requires_grad:
            count.gradients += output.shape[0]

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def _loss_and_grad(
    model: nn.Module,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    goals: torch.Tensor,
    objective: Objective,
    need_grad: bool,
    eot: int = 1,
):
    """Logits, per-example objective and (with ``need_grad``) its input gradient at ``x_adv``. With
    ``eot`` > 1 (Expectation over Transformation, Athalye et al. 2018, for randomized models) the objective
    and its gradient are averaged over that many forward-backward passes, as AutoAttack's ``rand`` version
    does; the logits are the last pass's."""
    if not need_grad:
        with torch.no_grad():
            logits = model(x_adv)
            return logits, objective(logits.float(), labels, goals), None
    x_adv = x_adv.detach().requires_grad_(True)
    loss_sum, grad_sum = None, None
    for _ in range(eot):
        logits = model(x_adv)
        loss = objective(logits.float(), labels, goals)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        grad_sum = grad if grad_sum is None else grad_sum + grad
    return logits.detach(), loss_sum / eot, grad_sum / eot


def apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    goals: torch.Tensor,
    start: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    objective: Objective,
    early_stop: bool,
    eot: int = 1,
):
    """One APGD run of ``steps`` iterations from ``start`` (Croce & Hein 2020, Algorithm 1), low level: no
    checks, no eval mode. ``objective(logits, labels, goals)`` is ascended; success is a wrong prediction.

    Returns per example ``(x_adv, fooled, loss, step)``: the strongest iterate (a misclassified one first,
    then the higher objective; with ``early_stop`` the first misclassified one, after which the example
    leaves the batch), whether it is misclassified, its objective, and the final step size η.
    Shapes: ``x``, ``start`` (N, ...); ``labels``, ``goals`` (N,); returns (N, ...), (N,), (N,), (N,).
    """
    n = x.shape[0]
    out_x, out_fooled = start.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    out_loss = torch.full((n,), float("-inf"), device=x.device)
    out_step = torch.full((n,), 2.0 * eps, device=x.device)
    marks = [k for k in checkpoints(steps) if k < steps]  # a checkpoint after the last step changes nothing
    logits, loss, grad = _loss_and_grad(model, start, labels, goals, objective, steps > 0, eot)
    # Per-row state of the rows still in the batch; with early exit, fooled rows leave it.
    s = {
        "row": torch.arange(n, device=x.device),
        "x": x,
        "labels": labels,
        "goals": goals,
        "cur": start,
        "prev": start,
        "grad": grad,
        "loss": loss,
        "best": start.clone(),
        "best_loss": loss.clone(),
        "best_grad": grad,  # x_max, its loss and gradient
        "best_loss_before": loss.clone(),
        "halved_before": torch.ones(n, dtype=torch.bool, device=x.device),
        "increases": torch.zeros(n, dtype=torch.long, device=x.device),
        "step": torch.full((n,), 2.0 * eps, device=x.device),
        "fooled": torch.zeros(n, dtype=torch.bool, device=x.device),
    }
    bcast = (-1, *([1] * (x.dim() - 1)))
    last_mark = 0
    for k in range(steps + 1):
        if k > 0:  # x^(k) from x^(k−1): a projected step, then momentum (none on the first step)
            cur, prev, eta = s["cur"], s["prev"], s["step"].view(bcast)
            z = project(cur + eta * step_direction(s["grad"], norm), s["x"], eps, norm)
            new = (
                z if k == 1 else project(cur + MOMENTUM * (z - cur) + (1 - MOMENTUM) * (cur - prev), s["x"], eps, norm)
            )
            logits, loss, grad = _loss_and_grad(model, new, s["labels"], s["goals"], objective, k < steps, eot)
            s["increases"] += loss > s["loss"]
            s["prev"], s["cur"], s["grad"], s["loss"] = cur, new, grad, loss
            better = loss > s["best_loss"]
            s["best"] = torch.where(better.view(bcast), new, s["best"])
            s["best_loss"] = torch.where(better, loss, s["best_loss"])
            if grad is not None:
                s["best_grad"] = torch.where(better.view(bcast), grad, s["best_grad"])
        # Keep each row's strongest iterate: a success first, then the higher objective.
        wrong = logits.argmax(dim=1) != s["labels"]
        rows = s["row"]
        take = (wrong & ~s["fooled"]) | ((wrong == s["fooled"]) & (loss > out_loss[rows]))
        if early_stop:
            take &= ~s["fooled"]  # frozen at its first success
        out_x[rows[take]], out_loss[rows[take]], out_fooled[rows[take]] = s["cur"][take], loss[take], wrong[take]
        newly = wrong & ~s["fooled"]
        s["fooled"] = s["fooled"] | wrong
        if k == steps:
            break
        if k in marks:
            halve = halve_step(s["increases"], k - last_mark, s["best_loss"], s["best_loss_before"], s["halved_before"])
            s["step"] = torch.where(halve, s["step"] / 2, s["step"])
            s["cur"] = torch.where(halve.view(bcast), s["best"], s["cur"])  # restart from x_max
            s["grad"] = torch.where(halve.view(bcast), s["best_grad"], s["grad"])
            s["halved_before"], s["best_loss_before"] = halve, s["best_loss"].clone()
            s["increases"] = torch.zeros_like(s["increases"])
            last_mark = k
        if early_stop and bool(newly.any()):
            left = int((~s["fooled"]).sum())
            if left == 0:
                break
            out_step[s["row"]] = s["step"]
            size = bucket_size(left, s["row"].numel())
            if size < s["row"].numel():
                # Unfooled rows first, then fooled ones to fill the bucket (see loop.bucket_size), in order.
                keep = torch.argsort(s["fooled"].to(torch.uint8), stable=True)[:size].sort().values
                s = {key: value[keep] for key, value in s.items()}
    out_step[s["row"]] = s["step"]
    return out_x, out_fooled, out_loss, out_step


def _apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    title: str,
    loss: str,
    targets: int,
    eps: float,
    norm: str,
    steps: int,
    restarts: int,
    random_start: bool,
    targeted: bool,
    spec_loss: str,
    generator: torch.Generator | None,
    early_stop: bool,
    channels_last: bool,
    eot: int = 1,
) -> torch.Tensor:
    """The driver behind the three registered attacks: checks, eval mode, runs per target and restart."""
    check_attack_inputs(model, x, y, eps, norm)
    eot = check_count("eot", eot)
    if targeted or spec_loss != "ce":
        raise AdvlabError(
            f"{title} chooses its own loss and target classes and attacks the true labels; "
            f"call it with targeted=False and loss='ce' (got targeted={targeted!r}, loss={spec_loss!r})"
        )
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    objective = _OBJECTIVES[loss]
    x = x.detach()
    y = y.detach().to(device=x.device, dtype=torch.long)
    with eval_mode(model), torch.enable_grad(), fast_layout(model, x, channels_last) as (net, x_fast):
        with torch.no_grad():
            logits = net(x_fast).float()
        classes = logits.shape[1]
        objective(logits, y, y)  # DLR's own check of the number of classes, before any work
        best, fooled = x_fast.clone(), logits.argmax(dim=1) != y  # misclassified already: x itself succeeds
        best_loss = torch.full_like(logits[:, 0], float("-inf"))
        if targets:  # APGD-T: the most likely wrong classes by the clean logits, most likely first
            wrong = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
            goals = [wrong[:, r] for r in range(min(targets, classes - 1))]
        else:
            goals = [y]
        for goal in goals:
            for _ in range(restarts):
                # Drawn for the whole batch, so an example's start does not depend on which others are left.
                start = apgd_start(x_fast, eps, norm, generator) if random_start else x_fast
                # The reference attacks only what is still standing; without early exit, everything.
                todo = (~fooled).nonzero().squeeze(1) if early_stop else torch.arange(len(y), device=y.device)
                if todo.numel() == 0:
                    break
                cand, cand_fooled, cand_loss, _ = apgd_run(
                    net,
                    x_fast[todo],
                    y[todo],
                    goal[todo],
                    start[todo],
                    eps=eps,
                    norm=norm,
                    steps=steps,
                    objective=objective,
                    early_stop=early_stop,
                    eot=eot,
                )
                was = fooled[todo]
                better = (cand_fooled & ~was) | ((cand_fooled == was) & (cand_loss > best_loss[todo]))
                best[todo[better]] = cand[better]
                fooled[todo[better]] = cand_fooled[better]
                best_loss[todo[better]] = cand_loss[better]
    return best.contiguous()


_COUNTS = r"(?:-?(?P<steps>\d+))?(?:x(?P<restarts>\d+))?"
_OPTIONS = ("steps", "restarts", "random_start", "eot")


@register_attack(
    "apgd-ce",
    title="APGD-CE",
    summary="Auto-PGD on cross-entropy (Croce & Hein 2020): apgd-ce = apgd-ce100, apgd-ceSTEPS, apgd-ceSTEPSxRESTARTS",
    counts=_COUNTS,
    syntax="apgd-ce[STEPS][xRESTARTS]",
    default_steps=100,
    step_ratio=None,
    options=_OPTIONS,
)
def apgd_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 100,
    restarts: int = 1,
    random_start: bool = True,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    channels_last: bool = True,
    eot: int = 1,
) -> torch.Tensor:
    """APGD-CE: Auto-PGD on the cross-entropy loss (Croce & Hein 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", arXiv:2003.01690), AutoAttack's first attack.

    Threat model: white-box, ‖x_adv − x‖ ≤ ε in L∞ or L2, pixels in [0, 1]; success is a wrong prediction.
    ``y`` holds the true labels: APGD chooses its own loss and targets, so ``targeted`` must stay False and
    ``loss`` "ce" (the registry's neutral values). Each run takes ``steps`` iterations from a random start
    (``random_start=False``: from ``x``) with step size 2ε, halved per example at the checkpoints of
    :func:`checkpoints`. Each example keeps its strongest point over all runs (a misclassified one first,
    then the higher loss). With ``early_stop`` (the reference's way, and an evaluation's), examples
    misclassified at ``x`` come back as they are, each further restart runs only on the examples not yet
    fooled, and an example leaves a run at its first misclassified iterate (exactly as strong, cheaper);
    without it every example runs every iteration of every restart, as a naive evaluation would.
    ``channels_last`` runs CPU convolutions in NHWC on a twin of the model (same values, faster). ``eot``
    averages each step's loss and gradient over that many passes, for randomized models (``-eot20``).

    Shapes: ``x`` (N, C, H, W) float in [0, 1], ``y`` (N,) int64; returns (N, C, H, W) in [0, 1].
    """
    return _apgd(
        model,
        x,
        y,
        title="APGD-CE",
        loss="ce",
        targets=0,
        eps=eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        random_start=random_start,
        targeted=targeted,
        spec_loss=loss,
        generator=generator,
        early_stop=early_stop,
        channels_last=channels_last,
        eot=eot,
    )


@register_attack(
    "apgd-dlr",
    title="APGD-DLR",
    summary="Auto-PGD on the DLR loss (Croce & Hein 2020; 3+ classes): "
    "apgd-dlr = apgd-dlr100, apgd-dlrSTEPS[xRESTARTS]",
    counts=_COUNTS,
    syntax="apgd-dlr[STEPS][xRESTARTS]",
    default_steps=100,
    step_ratio=None,
    options=_OPTIONS,
)
def apgd_dlr(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 100,
    restarts: int = 1,
    random_start: bool = True,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    channels_last: bool = True,
    eot: int = 1,
) -> torch.Tensor:
    """APGD-DLR: Auto-PGD on the difference of logits ratio (Croce & Hein 2020, arXiv:2003.01690;
    :func:`advlab.attacks.loop.dlr_loss`), which shifting or rescaling the logits does not change. Needs 3
    classes. Arguments, threat model and shapes as :func:`apgd_ce`."""
    return _apgd(
        model,
        x,
        y,
        title="APGD-DLR",
        loss="dlr",
        targets=0,
        eps=eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        random_start=random_start,
        targeted=targeted,
        spec_loss=loss,
        generator=generator,
        early_stop=early_stop,
        channels_last=channels_last,
        eot=eot,
    )


@register_attack(
    "apgd-t",
    title="APGD-T",
    summary="Auto-PGD on the targeted DLR loss against the 9 most likely wrong "
    "classes (Croce & Hein 2020; 4+ classes): apgd-t = apgd-t100, apgd-tSTEPS[xRESTARTS] per target",
    counts=_COUNTS,
    syntax="apgd-t[STEPS][xRESTARTS][-topK]",
    default_steps=100,
    step_ratio=None,
    options=(*_OPTIONS, "targets"),
)
def apgd_t(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 100,
    restarts: int = 1,
    random_start: bool = True,
    targeted: bool = False,
    loss: str = "ce",
    targets: int = TARGETS,
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    channels_last: bool = True,
    eot: int = 1,
) -> torch.Tensor:
    """APGD-T: Auto-PGD on the targeted DLR loss (:func:`targeted_dlr_loss`; Croce & Hein 2020,
    arXiv:2003.01690), AutoAttack's second attack: in turn against each of the ``targets`` (default 9, at
    most C − 1) most likely wrong classes by the clean logits, each with ``restarts`` runs of ``steps``
    iterations on the examples still standing. Success is any wrong prediction, not only the target's.
    Needs 4 classes. Other arguments, threat model and shapes as :func:`apgd_ce`."""
    return _apgd(
        model,
        x,
        y,
        title="APGD-T",
        loss="dlr-targeted",
        targets=check_count("targets", targets),
        eps=eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        random_start=random_start,
        targeted=targeted,
        spec_loss=loss,
        generator=generator,
        early_stop=early_stop,
        channels_last=channels_last,
        eot=eot,
    )
