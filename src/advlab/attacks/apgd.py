"""Auto-PGD (APGD), AutoAttack's parameter-free PGD: APGD-CE, APGD-DLR and APGD-T, for L∞ and L2.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (arXiv:2003.01690); reference code fra31/auto-attack, autoattack/autopgd_base.py.
APGD needs no step size: it starts at 2ε and halves the step, per example, at checkpoints where the loss
stopped rising, restarting those examples from their best point. This module holds the attacks and their
driver (targets, restarts); the step rule and one run are in :mod:`advlab.attacks.apgd_steps`. Python::

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
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from advlab.attacks.apgd_steps import (
    MOMENTUM,
    OBJECTIVES,
    RHO,
    APGDRun,
    apgd_run,
    apgd_start,
    checkpoints,
    halve_step,
    targeted_dlr_loss,
)
from advlab.attacks.loop import (
    Strongest,
    attack_success,
    eval_mode,
    likely_wrong_classes,
    objective_and_gradient,
    success_rate,
)
from advlab.attacks.registry import register_attack
from advlab.attacks.threat import Norm, check_attack_inputs, check_count
from advlab.errors import AdvlabError
from advlab.runtime import fast_layout

TARGETS = 9  # APGD-T's default: the 9 most likely wrong classes (all of them on 10-class data)


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
    draws: int = 1,
) -> torch.Tensor:
    """The driver behind the three registered attacks: checks, eval mode, runs per target and restart."""
    check_attack_inputs(model, x, y, eps, norm)
    eot, draws = check_count("eot", eot), check_count("draws", draws)
    early_stop = early_stop and draws == 1  # on a randomized model one pass never lets an example go
    if targeted or spec_loss != "ce":
        raise AdvlabError(
            f"{title} chooses its own loss and target classes and attacks the true labels; "
            f"call it with targeted=False and loss='ce' (got targeted={targeted!r}, loss={spec_loss!r})"
        )
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    objective = OBJECTIVES[loss]
    x = x.detach()
    y = y.detach().to(device=x.device, dtype=torch.long)
    with eval_mode(model), torch.enable_grad(), fast_layout(model, x, channels_last) as (net, x_fast):
        # The clean logits, EOT-averaged like every verdict of the run; the objective checks the classes
        # (DLR needs 3 or 4) before any work.
        clean = objective_and_gradient(
            net, x_fast, y, lambda logits, labels: objective(logits, labels, labels), eot=eot, need_grad=False
        ).logits.float()
        # Misclassified already: x itself succeeds. On a randomized model only where every draw is wrong:
        # any attacked point beats x otherwise (their shares of fooled draws differ by noise alone).
        wrong = clean.argmax(dim=1) != y
        if draws > 1:
            wrong = success_rate(net, x_fast, y, attack_success(False), draws) >= 1
        kept = Strongest(x_fast.clone(), wrong, torch.full_like(clean[:, 0], float("-inf")))
        for goal in likely_wrong_classes(clean, y, targets) if targets else [y]:
            for _ in range(restarts):
                # Drawn for the whole batch, so an example's start does not depend on which others are left.
                start = apgd_start(x_fast, eps, norm, generator) if random_start else x_fast
                # The reference attacks only what is still standing; without early exit, everything.
                todo = (~kept.done).nonzero().squeeze(1) if early_stop else torch.arange(len(y), device=y.device)
                if todo.numel() == 0:
                    break
                candidate, fooled, value, _ = apgd_run(
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
                    draws=draws,
                )
                kept.keep(todo, candidate, fooled, value)
    return kept.x.contiguous()


_COUNTS = r"(?:-?(?P<steps>\d+))?(?:x(?P<restarts>\d+))?"
_OPTIONS = ("steps", "restarts", "random_start", "eot", "draws")


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
    draws: int = 1,
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
    averages each step's loss, gradient and logits over that many passes, for randomized models (``-eot20``):
    an example counts as misclassified by the mean logits, never by one pass. ``draws`` > 1 (an evaluation of a
    randomized model) turns early exit off and keeps, per run and across runs, the point fooling the larger
    share of that many fresh passes (:meth:`advlab.attacks.apgd_steps.APGDRun.judge_by_draws`).

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
        draws=draws,
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
    fixed_loss="dlr",
    min_classes=3,
    cross_entropy_twin="apgd-ce",
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
    draws: int = 1,
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
        draws=draws,
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
    fixed_loss="dlr-targeted",
    picks_targets=TARGETS,
    min_classes=4,
    fallback="apgd-dlr",
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
    draws: int = 1,
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
        draws=draws,
    )


__all__ = [
    "MOMENTUM",
    "OBJECTIVES",
    "RHO",
    "TARGETS",
    "APGDRun",
    "PassCount",
    "apgd_ce",
    "apgd_dlr",
    "apgd_run",
    "apgd_start",
    "apgd_t",
    "checkpoints",
    "count_passes",
    "halve_step",
    "targeted_dlr_loss",
]
