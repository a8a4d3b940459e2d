"""FAB, the Fast Adaptive Boundary attack (L∞ and L2): untargeted ``fab`` and targeted ``fab-t``, AutoAttack's third.

Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack"
(arXiv:1907.02044); facts from the reference code, fra31/auto-attack ``autoattack/fab_base.py``,
``fab_pt.py`` and ``fab_projections.py``. Each step linearizes the classifier at the current point, projects
both that point and the original image onto the nearest linearized decision boundary inside [0, 1]^D,
and moves to a mix of the two projections biased towards the original (α ≤ α_max), overshooting by η; an
adversarial iterate is recorded and pulled back towards the original by β. Python::

    from advlab.attacks.fab import fab_minimal, fab_t
    result = fab_minimal(model, x, y, norm="l2")            # each example's smallest adversarial found
    x_adv = fab_t(model, x, y, eps=8 / 255, early_stop=True)  # AutoAttack's FAB-T at ε: 9 targets × 100

Command line: ``advlab attack RUN_DIR --attack fab-t --eps 8/255 --out OUT`` (``fab``, ``fab-t``, each
``[STEPS][xRESTARTS]``, default 100 iterations and 1 run; ``fab-t-topK``; ``fab:eta=1.1,beta=0.8``).
"""

from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.loop import likely_wrong_classes, pad_to_bucket
from advlab.attacks.minimum_norm import (
    AttackParameter,
    MinimalPerturbation,
    dual_norm,
    misclassified,
    run_minimal,
    target_count,
    untargeted_only,
    within_eps,
)
from advlab.attacks.registry import register_attack
from advlab.attacks.threat import Norm, check_attack_inputs, check_count, per_example_norm
from advlab.errors import AdvlabError

STEPS = 100  # the reference's iterations per run (AutoAttack's standard version)
TARGETS = 9  # FAB-T's targets: the 9 most likely wrong classes (AutoAttack's standard version)
ALPHA_MAX = 0.1  # the largest weight of the original image's projection in a step (the reference's)
ETA = 1.05  # overshoot past the linearized boundary (the reference's)
BETA = 0.9  # an adversarial iterate is pulled back to x + β(x_adv − x) (the reference's)
# Restart k > 0 starts at distance r/2 from x in a random direction, r = min(ε, best norm found) as the
# original FAB code; without ε and before anything is found, the reference's default ε per norm.
START_EPS = {"linf": 0.3, "l2": 1.0}


def to_hyperplane(points: torch.Tensor, w: torch.Tensor, level: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest step ``d`` (in ``norm``) with ⟨w, points + d⟩ = level and points + d in [0, 1]^D; where
    the box cannot reach the hyperplane, the step in the box that gets closest. Shapes (B, D), (B, D), (B,).

    Optimality gives d_i = v_i·min(λ, r_i): v = w and λ a multiplier for L2, v = sign(w) and λ the radius
    for L∞; r_i is where coordinate i meets the box. ⟨w, d⟩ = Σ a_i min(λ, r_i) (a = w·v ≥ 0) grows piecewise
    linearly in λ, so sorting the r_i finds λ exactly (the reference bisects over the same breakpoints).
    """
    need = level - (w * points).sum(dim=1)
    w = w * torch.where(need < 0, -1.0, 1.0).to(w.dtype)[:, None]  # now ⟨w, d⟩ = |need|: move along +w
    need = need.abs()
    room = torch.where(w > 0, 1 - points, points)
    v = w if norm == "l2" else w.sign()
    a = w * v
    r = torch.where(a > 0, room / torch.where(a > 0, v.abs(), 1.0), 0.0)  # a = 0: the coordinate never moves
    r_sorted, order = r.sort(dim=1)
    a_sorted = a.gather(1, order)
    reach = (a_sorted * r_sorted).cumsum(dim=1)  # Σ_{j≤k} a_j r_j: the saturated coordinates' share
    rest = a_sorted.flip(1).cumsum(dim=1).flip(1)  # Σ_{j≥k} a_j
    at_breakpoint = reach + r_sorted * (rest - a_sorted)  # ⟨w, d⟩ at λ = r_k
    k = (at_breakpoint < need[:, None]).sum(dim=1, keepdim=True)  # λ lies in (r_{k−1}, r_k]
    zero = need.new_zeros(len(need), 1)
    before = torch.cat([zero, reach], dim=1).gather(1, k).squeeze(1)
    free = torch.cat([rest, zero], dim=1).gather(1, k).squeeze(1)
    lam = torch.where(free > 0, (need - before) / free.clamp_min(torch.finfo(free.dtype).tiny), float("inf"))
    return v * torch.minimum(lam[:, None], r)


def _nearest_boundary(
    net: nn.Module, x1: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """f_j − f_y at ``x1`` and its input gradient (flattened) for one class j per example: the ``goal`` (one
    backward pass), or untargeted the class whose linearized boundary is nearest, |f_j − f_y| / ‖∇‖_dual
    (one backward pass per other class, as the reference's Jacobian)."""
    x1 = x1.detach().requires_grad_(True)
    logits = net(x1).to(x1.dtype)  # in x's precision (float32 under fp16 autocast)
    true = logits.gather(1, y[:, None]).squeeze(1)
    if goal is not None:
        diff = logits.gather(1, goal[:, None]).squeeze(1) - true
        (grad,) = torch.autograd.grad(diff.sum(), x1)
        return diff.detach(), grad.flatten(1)
    classes = logits.shape[1]
    best_df, best_dg, best_distance = None, None, None
    for shift in range(1, classes):
        diff = logits.gather(1, ((y + shift) % classes)[:, None]).squeeze(1) - true
        (grad,) = torch.autograd.grad(diff.sum(), x1, retain_graph=shift < classes - 1)
        diff, grad = diff.detach(), grad.flatten(1)
        distance = diff.abs() / (dual_norm(grad, norm) + 1e-12)
        if best_df is None:
            best_df, best_dg, best_distance = diff, grad, distance
            continue
        closer = distance < best_distance
        best_df, best_distance = torch.where(closer, diff, best_df), torch.where(closer, distance, best_distance)
        best_dg = torch.where(closer[:, None], grad, best_dg)
    return best_df, best_dg


def _fab_step(x1: torch.Tensor, x0: torch.Tensor, df: torch.Tensor, dg: torch.Tensor, norm: str, mix: dict):
    """One FAB step on flat rows: project the iterate ``x1`` and the original ``x0`` onto the boundary
    linearized at ``x1`` (f_j − f_y + ⟨dg, z − x1⟩ = 0), then move to the mix of the two, overshooting."""
    level = (dg * x1).sum(dim=1) - df
    steps = to_hyperplane(torch.cat([x1, x0]), torch.cat([dg, dg]), torch.cat([level, level]), norm)
    d1, d2 = steps.chunk(2)
    a1 = per_example_norm(d1, norm).clamp_min(1e-8)
    a2 = per_example_norm(d2, norm).clamp_min(1e-8)
    alpha = (a1 / (a1 + a2)).clamp(0.0, mix["alpha_max"])[:, None]
    eta = mix["eta"]
    return ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(0.0, 1.0)


def _fab_run(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    goal: torch.Tensor | None,
    start: torch.Tensor,
    *,
    best: list[torch.Tensor],
    rows: torch.Tensor,
    norm: str,
    steps: int,
    stop_at: float,
    mix: dict,
) -> None:
    """One run of ``steps`` FAB iterations from ``start`` on the examples ``rows`` of ``x`` (flat (N, D)),
    updating ``best`` = [points (N, D), norms (N,)] in place. An example whose best norm falls to
    ``stop_at`` (ε with early exit) leaves the run: it is adversarial within ε whatever comes after."""
    layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    x0, x1, labels = x.flatten(1)[rows], start, y[rows]
    target = None if goal is None else goal[rows]
    for _ in range(steps):
        df, dg = _nearest_boundary(net, _image(x1, x, layout), labels, target, norm)
        x1 = _fab_step(x1, x0, df, dg, norm, mix)
        with torch.no_grad():
            logits = net(_image(x1, x, layout))
        fooled = logits.argmax(dim=1) != labels  # the reference's rule for the pull-back
        size = per_example_norm(x1 - x0, norm)
        better = misclassified(logits, labels) & (size < best[1][rows])  # kept: clear of rounding
        best[0][rows[better]], best[1][rows[better]] = x1[better], size[better]
        x1 = torch.where(fooled[:, None], x0 + mix["beta"] * (x1 - x0), x1)
        if stop_at < 0:
            continue
        keep = pad_to_bucket(best[1][rows] > stop_at)  # early exit: the examples with none within ε, in buckets
        if keep.numel() == 0:
            return
        if keep.numel() < rows.numel():
            rows, x0, x1, labels = rows[keep], x0[keep], x1[keep], labels[keep]
            target = None if target is None else target[keep]


def _image(flat: torch.Tensor, like: torch.Tensor, layout) -> torch.Tensor:
    """Flat rows back to ``like``'s image shape, channels-last where the model's twin wants it."""
    image = flat.view(flat.shape[0], *like.shape[1:])
    return image.contiguous(memory_format=layout) if layout is not None else image


def _random_start(x0: torch.Tensor, radius: torch.Tensor, norm: str, generator) -> torch.Tensor:
    """x0 moved by radius/2 in a random direction (L∞: a uniform draw scaled to max-norm 1; L2: a Gaussian
    draw on the unit sphere), in [0, 1]: the reference's restart."""
    if norm == "linf":
        t = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) * 2 - 1
    else:
        t = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = t / per_example_norm(t, norm).clamp_min(1e-12)[:, None]
    return (x0 + 0.5 * radius[:, None] * t).clamp(0.0, 1.0)


def _fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    targets: int | None,
    norm: str,
    steps: int,
    restarts: int,
    eps: float | None,
    early_stop: bool,
    generator: torch.Generator | None,
    channels_last: bool,
    mix: dict,
) -> MinimalPerturbation:
    """The driver behind both attacks: every target (``targets`` None: untargeted; 0: the default count) in
    turn, each with ``restarts`` runs (the first from x), on the examples x classifies correctly."""
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    _check_mix(mix)
    stop_at = eps if early_stop and eps is not None else -1.0

    def search(net: nn.Module, x_net: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = net(x_net)
        count = None if targets is None else target_count("FAB-T", targets, clean.shape[1], TARGETS)
        goals = [None] if count is None else likely_wrong_classes(clean, labels, count)
        x_flat = x_net.flatten(1)
        correct = ~misclassified(clean, labels)
        best = [x_flat.clone(), torch.where(correct, float("inf"), 0.0).to(x_flat.dtype)]
        for goal in goals:
            for restart in range(restarts):
                rows = (correct & (best[1] > stop_at)).nonzero().squeeze(1)
                if rows.numel() == 0:
                    return best[0].view_as(x_net)
                start = x_flat
                if restart > 0:  # drawn for the whole batch: a start does not depend on who is left
                    radius = torch.minimum(best[1], torch.full_like(best[1], eps or START_EPS[norm]))
                    start = _random_start(x_flat, radius, norm, generator)
                run = dict(best=best, rows=rows, norm=norm, steps=steps, stop_at=stop_at, mix=mix)
                _fab_run(net, x_net, labels, goal, start[rows], **run)
        return best[0].view_as(x_net)

    return run_minimal(model, x, y, norm=norm, channels_last=channels_last, search=search)


def _check_mix(mix: dict) -> None:
    if not (0 <= mix["alpha_max"] <= 1 and mix["eta"] >= 1 and 0 < mix["beta"] < 1):
        raise AdvlabError(f"FAB needs 0 ≤ alpha_max ≤ 1, eta ≥ 1 and 0 < beta < 1, got {mix}")


_PARAMETERS = (
    AttackParameter(
        "alpha_max", float, ALPHA_MAX, "largest weight of x's projection", "in [0, 1]", lambda v: 0 <= v <= 1
    ),
    AttackParameter("eta", float, ETA, "overshoot past the linearized boundary", "≥ 1", lambda v: v >= 1),
    AttackParameter("beta", float, BETA, "pull-back of an adversarial iterate", "in (0, 1)", lambda v: 0 < v < 1),
)
_COUNTS = r"(?:-?(?P<steps>\d+))?(?:x(?P<restarts>\d+))?"


def fab_minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm = "linf",
    steps: int = STEPS,
    restarts: int = 1,
    targets: int | None = None,
    eps: float | None = None,
    early_stop: bool = False,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
) -> MinimalPerturbation:
    """FAB's smallest adversarial per example (see :func:`fab`); ``targets`` None runs untargeted FAB, an
    integer FAB-T on that many most likely wrong classes (0: the default 9, at most C − 1). ``eps`` sets the
    restarts' radius and, with ``early_stop``, lets an example go once it has an adversarial within ε."""
    mix = {"alpha_max": alpha_max, "eta": eta, "beta": beta}
    run = dict(norm=norm, steps=steps, restarts=restarts, eps=eps, early_stop=early_stop, generator=generator)
    return _fab(model, x, y, targets=targets, channels_last=channels_last, mix=mix, **run)


@register_attack(
    "fab",
    title="FAB",
    summary="Fast Adaptive Boundary attack, minimum norm (Croce & Hein 2020): fab = fab100, fabSTEPS[xRESTARTS]",
    counts=_COUNTS,
    syntax="fab[STEPS][xRESTARTS]",
    default_steps=STEPS,
    options=("steps", "restarts"),
    fixed_loss="margin",
    minimal=lambda model, x, y, **options: fab_minimal(model, x, y, targets=None, **options),
    parameters=_PARAMETERS,
)
def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = STEPS,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    channels_last: bool = True,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
) -> torch.Tensor:
    """FAB (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", arXiv:1907.02044), untargeted, at one ε.

    Threat model: white-box, minimum L∞ or L2 norm, pixels in [0, 1]; success is a wrong prediction. Each
    run takes ``steps`` iterations (100, the reference's); run 1 starts at x, each of the ``restarts`` − 1
    others at a random point at distance min(ε, best found)/2. Each step needs the gradient of every logit
    difference f_j − f_y (C − 1 backward passes); the targeted :func:`fab_t` needs one. ``alpha_max`` 0.1,
    ``eta`` 1.05 and ``beta`` 0.9 are the reference's. Returns the adversarial found where its norm is at
    most ``eps``, else x (:func:`~advlab.attacks.minimum_norm.within_eps`); with ``early_stop`` an example
    stops once it has one within ε, and later runs attack only what is left (the verdict is the same).
    ``targeted`` and ``loss`` must stay at the registry's neutral values.

    Shapes: ``x`` (N, C, H, W) float in [0, 1], ``y`` (N,) int64; returns (N, C, H, W) in [0, 1].
    """
    check_attack_inputs(model, x, y, eps, norm)
    untargeted_only("FAB", targeted, loss)
    run = dict(norm=norm, steps=steps, restarts=restarts, eps=eps, early_stop=early_stop, generator=generator)
    result = fab_minimal(model, x, y, channels_last=channels_last, alpha_max=alpha_max, eta=eta, beta=beta, **run)
    return within_eps(result, x.detach(), eps)


@register_attack(
    "fab-t",
    title="FAB-T",
    summary="targeted FAB against the 9 most likely wrong classes, one after another (Croce & Hein 2020; "
    "AutoAttack's): fab-t = fab-t100, fab-tSTEPS[xRESTARTS] per target",
    counts=_COUNTS,
    syntax="fab-t[STEPS][xRESTARTS][-topK]",
    default_steps=STEPS,
    options=("steps", "restarts", "targets"),
    fixed_loss="margin-targeted",
    picks_targets=TARGETS,
    min_classes=2,  # on 2 classes its one target is the other class: untargeted FAB, step for step
    fallback="fab",
    minimal=lambda model, x, y, targets=0, **options: fab_minimal(model, x, y, targets=targets, **options),
    parameters=_PARAMETERS,
)
def fab_t(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = STEPS,
    restarts: int = 1,
    targets: int = 0,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    channels_last: bool = True,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
) -> torch.Tensor:
    """FAB-T: targeted FAB (arXiv:1907.02044), as AutoAttack's standard version runs it, at one ε.

    In turn against each of the ``targets`` most likely wrong classes by the clean logits (0: 9, at most
    C − 1; more than C − 1 is an error), each with ``restarts`` runs of ``steps`` iterations (1 × 100, the
    reference's). A step linearizes only f_target − f_y: one backward pass. Success is any wrong prediction.
    With ``early_stop`` (an evaluation's way) each target and restart attacks only the examples with no
    adversarial within ε yet, and an example leaves a run once it has one: exactly as strong at ε as
    running on. Other arguments, threat model and shapes as :func:`fab`.
    """
    check_attack_inputs(model, x, y, eps, norm)
    untargeted_only("FAB-T", targeted, loss)
    run = dict(norm=norm, steps=steps, restarts=restarts, eps=eps, early_stop=early_stop, generator=generator)
    mix = dict(alpha_max=alpha_max, eta=eta, beta=beta)
    result = fab_minimal(model, x, y, targets=_count(targets), channels_last=channels_last, **mix, **run)
    return within_eps(result, x.detach(), eps)


def _count(targets: int) -> int:
    return 0 if targets == 0 else check_count("targets", targets)


__all__ = ["ALPHA_MAX", "BETA", "ETA", "STEPS", "TARGETS", "fab", "fab_minimal", "fab_t", "to_hyperplane"]
