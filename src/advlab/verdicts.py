"""The verdicts of an evaluation: is an example still classified correctly, clean and after each attack?

Every verdict is a fresh forward pass in fp32 on the images an attack returned (never the attack's own
bookkeeping), each adversarial batch checked to lie in its ε-ball and in [0, 1] first. A targeted attack
aims at each of the most likely wrong classes in turn, and an example is robust only if it survives every
target. A randomized model is judged by the majority of :data:`DRAWS` passes, so that one lucky draw neither
saves nor breaks an example, and its attacks never let an example go on one draw's say. Under reduced
precision an example an attack let go because its low-precision logits looked fooled, but that fp32 judges
robust, is attacked again in fp32 (:func:`recheck_in_fp32`). :func:`measure_batch` runs a batch through
every attack and ε for :func:`advlab.evaluate.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, likely_wrong_classes, pad_to_bucket
from advlab.attacks.threat import verify_adversarial
from advlab.runtime import Runtime
from advlab.tally import DRAWS, BatchVerdicts


@dataclass(frozen=True)
class Plan:
    """How an evaluation attacks: where and in what precision, its generator, whether examples leave early
    (``early_stop``), whether each attack runs only on what the earlier ones left (``chain``), and the passes
    per verdict (``draws``)."""

    runtime: Runtime
    generator: torch.Generator
    early_stop: bool
    chain: bool
    draws: int = 1


def verdict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Per example: classified as ``y`` (fp32 forward passes, no gradient). With ``draws`` > 1 (a randomized
    model) it must be so in more than half of ``draws`` passes: one lucky draw neither saves nor breaks it."""
    with torch.inference_mode():
        if draws == 1:
            held = model(x).argmax(1) == y
        else:
            held = sum((model(x).argmax(1) == y).int() for _ in range(draws)) * 2 > draws
    return held.clone()  # outside inference mode: a normal tensor, which callers may update in place


def goals(model: nn.Module, attack: AttackSpec, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The labels to hand the attack: the true ones, or for a targeted attack each of the most likely
    wrong classes by the clean logits, most likely first."""
    if not attack.targeted:
        return [y]
    with torch.inference_mode():
        logits = model(x).float()
    return likely_wrong_classes(logits, y, attack.targets)


def survivors(
    model: nn.Module,
    attack: AttackSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    todo: torch.Tensor,
    *,
    eps: float,
    plan: Plan,
) -> torch.Tensor:
    """Per example: classified correctly (in fp32; a randomized model by the majority of its draws) after
    ``attack`` at ``eps``; False outside ``todo``. On a randomized model an attack never lets an example go
    on one draw's say: its own early exit is off, and between targets only the verdict counts."""
    runtime, early_stop, draws = plan.runtime, plan.early_stop, plan.draws
    robust = torch.zeros_like(todo)
    index = pad_to_bucket(todo)
    if index.numel() == 0:
        return robust
    xs, ys = x[index], y[index]
    survived = todo[index].clone()
    for goal in goals(model, attack, xs, ys):
        # With early exit, each further target attacks only what the earlier ones left standing.
        rows = pad_to_bucket(survived) if early_stop else torch.arange(len(ys), device=ys.device)
        if rows.numel() == 0:
            break
        with runtime.autocast():
            x_adv = attack(
                model,
                xs[rows],
                goal[rows],
                eps=eps,
                generator=plan.generator,
                early_stop=early_stop and draws == 1,
                channels_last=runtime.channels_last,
            )
        verify_adversarial(xs[rows], x_adv, eps, attack.norm, what=attack.label)
        held = verdict(model, x_adv.float(), ys[rows], draws)  # a normal tensor: updated below
        if early_stop and draws == 1 and runtime.precision != "fp32" and bool(held.any()):
            held[held.clone()] = recheck_in_fp32(
                model, attack, (xs[rows][held], goal[rows][held], ys[rows][held]), x_adv[held], eps=eps, plan=plan
            )
        survived[rows] &= held
    robust[index] = survived
    return robust


def recheck_in_fp32(
    model: nn.Module,
    attack: AttackSpec,
    examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    x_adv: torch.Tensor,
    *,
    eps: float,
    plan: Plan,
) -> torch.Tensor:
    """Reduced precision must not overstate: an example the attack let go early because its low-precision
    logits looked fooled, but that fp32 judges robust, was never attacked to the end. Those few are attacked
    again in fp32, and the fp32 verdict on that attack decides. ``examples``: (x, goal, y). Returns, per row,
    robust in fp32."""
    x, goal, y = examples
    runtime = plan.runtime
    with torch.inference_mode(), runtime.autocast():
        fooled_low = model(x_adv).argmax(1) != y if not attack.targeted else model(x_adv).argmax(1) == goal
    fooled_low = fooled_low.clone()
    robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
    if not bool(fooled_low.any()):
        return robust
    again = attack(
        model,
        x[fooled_low],
        goal[fooled_low],
        eps=eps,
        generator=plan.generator,
        early_stop=True,
        channels_last=runtime.channels_last,
    )
    verify_adversarial(x[fooled_low], again, eps, attack.norm, what=attack.label)
    with torch.no_grad():
        robust[fooled_low] = model(again.float()).argmax(1) == y[fooled_low]
    return robust


def measure_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    *,
    attacks: Sequence[AttackSpec],
    eps: Sequence[float],
    plan: Plan,
) -> BatchVerdicts:
    """Every attack at every ε on one batch whose clean verdicts are ``correct``: what survives each, the
    worst case, and what the gradient-free attacks broke that every gradient attack left."""
    out = BatchVerdicts()
    for i, e in enumerate(eps):
        still_robust, white = correct.clone(), correct.clone()
        ran: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for attack in attacks:
            # Only clean-correct examples can be robust; chained attacks also skip the broken ones.
            # Without early exit every example is attacked, as a naive evaluation would.
            todo = still_robust if plan.chain else correct if plan.early_stop else torch.ones_like(correct)
            robust = survivors(model, attack, x, y, todo, eps=e, plan=plan) & correct
            out.robust[(attack.label, i)] = robust & still_robust if plan.chain else robust
            still_robust &= robust
            if attack.kind.black_box:
                ran[attack.label] = (todo & correct, robust)
            else:
                white &= todo & robust
        out.worst[i] = still_robust
        out.white_robust[i] = int(white.sum())
        for label, (attacked, robust) in ran.items():
            out.black_broke[(label, i)] = int((white & attacked & ~robust).sum())
    return out


__all__ = ["DRAWS", "Plan", "goals", "measure_batch", "recheck_in_fp32", "survivors", "verdict"]
