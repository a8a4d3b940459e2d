"""The verdicts of an evaluation: is an example still classified correctly, clean and after each attack?

Every verdict is a fresh forward pass in fp32 on the images an attack returned (never the attack's own
bookkeeping), each adversarial batch checked to lie in its ε-ball and in [0, 1] first. A targeted attack
aims at each of the most likely wrong classes in turn, and an example is robust only if it survives every
target. A verdict counts the passes that classify an example correctly: one pass for a deterministic model
(0 or 1), :data:`DRAWS` for a randomized one, so that the evaluation can report both what the deployed
random model scores on average (the expected accuracy, the headline) and the majority vote; an attack on a
randomized model is handed ``draws`` and never keeps a point or lets an example go on one draw's say, and
across targets and attacks each example keeps its fewest correct passes. Under reduced
precision an example an attack let go because its low-precision logits looked fooled, but that fp32 judges
robust, is attacked again in fp32 (:func:`recheck_in_fp32`). :func:`measure_batch` runs a batch through
every attack and ε for :func:`advlab.evaluate.evaluate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, likely_wrong_classes, pad_to_bucket
from advlab.attacks.minimum_norm import robust_at
from advlab.attacks.threat import IntegrityError, per_example_norm, verify_adversarial
from advlab.runtime import Runtime
from advlab.tally import DRAWS, BatchVerdicts, majority


@dataclass(frozen=True)
class Plan:
    """How an evaluation attacks: where and in what precision, its generator, whether examples leave early
    (``early_stop``), whether each attack runs only on what the earlier ones left (``chain``), the passes
    per verdict (``draws``), and the most images an attack is handed at once (``batch``; None: all)."""

    runtime: Runtime
    generator: torch.Generator
    early_stop: bool
    chain: bool
    draws: int = 1
    batch: int | None = None


def chunks(t: torch.Tensor, batch: int | None) -> list[torch.Tensor]:
    """``t`` (row indices, or images) in consecutive pieces of at most ``batch`` along its first dimension
    (all of it at once with ``batch`` None)."""
    return [t] if batch is None or len(t) <= batch else list(t.split(batch))


def logits_in_batches(model: nn.Module, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """``model``'s fp32 logits for ``x``, ``batch`` images a forward pass; (N, C)."""
    return torch.cat([model(part).float() for part in chunks(x, batch)])


def correct_draws(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1, *, batch: int | None = None
) -> torch.Tensor:
    """Per example: in how many of ``draws`` fp32 forward passes (no gradient) it is classified as ``y``,
    ``batch`` images at a time; (N,) uint8, 0 or 1 for a deterministic model."""
    with torch.inference_mode():
        counts = sum((logits_in_batches(model, x, batch).argmax(1) == y).to(torch.uint8) for _ in range(draws))
    return counts.clone()  # outside inference mode: a normal tensor, which callers may update in place


def verdict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Per example: classified as ``y`` (fp32 forward passes, no gradient). With ``draws`` > 1 (a randomized
    model) it must be so in more than half of ``draws`` passes: the majority vote (:func:`correct_draws` has
    the counts behind the expected accuracy)."""
    return majority(correct_draws(model, x, y, draws), draws)


def goals(
    model: nn.Module, attack: AttackSpec, x: torch.Tensor, y: torch.Tensor, *, batch: int | None = None
) -> list[torch.Tensor]:
    """The labels to hand the attack: the true ones, or for a targeted attack each of the most likely
    wrong classes by the clean logits (``batch`` images a pass), most likely first."""
    if not attack.targeted:
        return [y]
    with torch.inference_mode():
        logits = logits_in_batches(model, x, batch)
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
    """Per example: in how many of the plan's ``draws`` fp32 passes it is still classified correctly after
    ``attack`` at ``eps`` (uint8; 0 or 1 for a deterministic model), the fewest over the targets; 0 outside
    ``todo``. On a randomized model the attack is handed ``draws`` (it keeps no point and lets no example go
    on one draw's say) and its own early exit is off."""
    early_stop, draws = plan.early_stop, plan.draws
    robust = torch.zeros(todo.shape, dtype=torch.uint8, device=todo.device)
    index = pad_to_bucket(todo)
    if index.numel() == 0:
        return robust
    xs, ys = x[index], y[index]
    survived = torch.where(todo[index], draws, 0).to(torch.uint8)
    for goal in goals(model, attack, xs, ys, batch=plan.batch):
        # With early exit, each further target attacks only what the earlier ones left standing, pooled
        # into batches of at most plan.batch.
        left = pad_to_bucket(survived > 0) if early_stop else torch.arange(len(ys), device=ys.device)
        if left.numel() == 0:
            break
        for rows in chunks(left, plan.batch):
            held = _attacked(model, attack, (xs[rows], goal[rows], ys[rows]), eps=eps, plan=plan)
            survived[rows] = torch.minimum(survived[rows], held)
    robust[index] = survived
    return robust


def _attacked(
    model: nn.Module,
    attack: AttackSpec,
    examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    eps: float,
    plan: Plan,
) -> torch.Tensor:
    """One batch through ``attack`` at ``eps``: per example, its correct fp32 passes at the returned point
    (uint8), after the fp32 recheck under reduced precision. ``examples``: (x, goal, y)."""
    x, goal, y = examples
    runtime, early_stop, draws = plan.runtime, plan.early_stop, plan.draws
    with runtime.autocast():
        x_adv = attack(
            model,
            x,
            goal,
            eps=eps,
            generator=plan.generator,
            early_stop=early_stop and draws == 1,
            channels_last=runtime.channels_last,
            draws=draws,
        )
    verify_adversarial(x, x_adv, eps, attack.norm, what=attack.label)
    held = correct_draws(model, x_adv.float(), y, draws)  # a normal tensor: updated below
    if early_stop and draws == 1 and runtime.precision != "fp32" and bool(held.any()):
        mask = held.bool()
        held[mask] = recheck_in_fp32(model, attack, (x[mask], goal[mask], y[mask]), x_adv[mask], eps=eps, plan=plan).to(
            torch.uint8
        )
    return held


def curve_run(attack: AttackSpec, plan: Plan) -> bool:
    """Does ``attack`` run once for the whole ε grid (a minimum-norm attack, judged on its own: not in a chain,
    where it attacks only what is left at each ε, and not on a randomized model, judged on its draws)?"""
    return attack.kind.minimum_norm and not plan.chain and plan.draws == 1


def minimal_norms(
    model: nn.Module, attack: AttackSpec, x: torch.Tensor, y: torch.Tensor, todo: torch.Tensor, *, plan: Plan
) -> torch.Tensor:
    """Per example: the norm of the smallest adversarial ``attack`` (minimum-norm) found, as the verdicts
    see it: its point must lie in [0, 1] and be misclassified by an fp32 forward pass, else inf; 0 where the
    clean image is already wrong (outside ``todo``). (N,) float32."""
    norms = torch.zeros(len(y), dtype=torch.float32, device=y.device)
    index = pad_to_bucket(todo)
    if index.numel() == 0:
        return norms
    for rows in chunks(index, plan.batch):
        with plan.runtime.autocast():
            found = attack.minimal(
                model, x[rows], y[rows], generator=plan.generator, channels_last=plan.runtime.channels_last
            )
        x_adv = found.x_adv.float()
        if not bool(torch.isfinite(x_adv).all()) or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
            raise IntegrityError(f"{attack.label} returned pixels outside [0, 1] or not finite")
        with torch.inference_mode():
            wrong = model(x_adv).argmax(1) != y[rows]
        size = per_example_norm(x_adv - x[rows].float(), attack.norm)
        norms[rows] = torch.where(wrong, size, torch.full_like(size, float("inf")))
    return torch.where(todo, norms, torch.zeros_like(norms))


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
    """Every attack at every ε on one batch whose clean verdicts are ``correct`` (correct passes per example,
    :func:`correct_draws`): what survives each, the worst case (each example's fewest correct passes), and
    what the gradient-free attacks broke that every gradient attack left (by the majority vote)."""
    out = BatchVerdicts()
    draws = plan.draws
    for attack in attacks:  # a minimum-norm attack runs once for every ε (on its own, deterministic model)
        if curve_run(attack, plan):
            start = time.perf_counter()
            out.norms[attack.label] = minimal_norms(model, attack, x, y, correct > 0, plan=plan)
            out.seconds[attack.label] = time.perf_counter() - start
    for i, e in enumerate(eps):
        still_robust, white = correct.clone(), majority(correct, draws)
        ran: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for attack in attacks:
            # Only clean-correct examples can be robust; chained attacks also skip the broken ones.
            # Without early exit every example is attacked, as a naive evaluation would.
            todo = (still_robust if plan.chain else correct if plan.early_stop else torch.ones_like(correct)) > 0
            start = time.perf_counter()
            if attack.label in out.norms:  # from its one run: robust where the smallest adversarial exceeds ε
                robust = torch.minimum(robust_at(out.norms[attack.label], e).to(torch.uint8), correct)
            else:
                robust = torch.minimum(survivors(model, attack, x, y, todo, eps=e, plan=plan), correct)
            out.seconds[attack.label] = out.seconds.get(attack.label, 0.0) + time.perf_counter() - start
            out.robust[(attack.label, i)] = torch.minimum(robust, still_robust) if plan.chain else robust
            still_robust = torch.minimum(still_robust, robust)
            held = majority(robust, draws)
            if attack.kind.black_box:
                ran[attack.label] = (todo & majority(correct, draws), held)
            else:
                white &= todo & held
        out.worst[i] = still_robust
        out.white_robust[i] = int(white.sum())
        for label, (attacked, robust) in ran.items():
            out.black_broke[(label, i)] = int((white & attacked & ~robust).sum())
    return out


__all__ = [
    "DRAWS",
    "Plan",
    "chunks",
    "correct_draws",
    "curve_run",
    "goals",
    "logits_in_batches",
    "majority",
    "measure_batch",
    "minimal_norms",
    "recheck_in_fp32",
    "survivors",
    "verdict",
]
