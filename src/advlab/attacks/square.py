"""The Square Attack: a score-based black-box attack by random search (L∞ and L2), with no gradients.

It only reads the model's logits, so it is the check against gradient masking that AutoAttack's
standard suite runs last (5000 queries, one run)::

    from advlab.attacks.square import square, p_schedule
    x_adv = square(model, x, y, eps=8 / 255)                           # L∞, 5000 queries
    x_adv = square(model, x, y, eps=0.5, norm="l2", steps=1000, restarts=2)

From the command line: ``advlab attack RUN_DIR --attack square1000 --eps 0.1 --out OUT`` (``square`` is
``square5000``; ``square1000x2`` runs a second start of 1000 queries on what the first left unbroken).

Each query changes one random square of the current perturbation and keeps the change if the margin
(logit of the true class minus the largest other logit) goes down. The side of the square follows
:func:`p_schedule`. The facts come from the authors' code (max-andr/square-attack, ``attack.py``) and
AutoAttack's port (fra31/auto-attack, ``autoattack/square.py``); where the two differ, the AutoAttack
version is followed unless a comment says otherwise.
"""

from __future__ import annotations

import bisect
import functools
import math

import torch
from torch import nn

from advlab.attacks.loop import LOSSES, eval_mode, margin_loss
from advlab.attacks.registry import register_attack
from advlab.attacks.threat import Norm, check_attack_inputs, check_count, per_example_norm
from advlab.errors import AdvlabError
from advlab.runtime import fast_layout

# AutoAttack's value for its standard suite. The authors' script defaults to 0.05 (L∞) and 0.1 (L2) for
# standard ImageNet models and notes that robust models need a larger p.
P_INIT = 0.8
# The reference's schedule: p halves after each of these queries of a 10,000-query budget, and the points
# scale with the budget actually used (AutoAttack's ``resc_schedule``, on by default).
SCHEDULE_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_BUDGET = 10_000
# The authors' L∞ code redraws a square's signs while the draw would leave the image as it is (a square
# landing on an earlier square with the same signs); it compares pixels to 1e-7. A cap keeps an ε below
# that resolution from looping for ever; above it a redraw repeats with probability at most 2^-C (C
# channels), so the cap is not reached in practice.
CHANGE_TOLERANCE = 1e-7
MAX_REDRAWS = 20


def p_schedule(iteration: int, queries: int, p_init: float = P_INIT) -> float:
    """The fraction of the image's pixels the square covers at ``iteration`` (0-based) of a ``queries`` budget.

    ``p_init``, halved at each of :data:`SCHEDULE_POINTS` passed, the iteration first rescaled to a
    10,000-query budget: the reference's ``p_selection`` (``int(it / n_queries * 10000)``).
    """
    scaled = int(iteration / queries * SCHEDULE_BUDGET)
    return p_init / 2 ** bisect.bisect_left(SCHEDULE_POINTS, scaled)


def linf_side(p: float, height: int, width: int) -> int:
    """The L∞ square's side for a fraction ``p`` of the pixels: round(√(p·H·W)), at least 1, at most the image."""
    return min(max(round(math.sqrt(p * height * width)), 1), height, width)


def l2_side(p: float, height: int, width: int) -> int:
    """The L2 windows' side: round(√(p·H·W)), at least 3 and odd (the reference), at most the image."""
    side = max(round(math.sqrt(p * height * width)), 3)
    return min(side + 1 - side % 2, height, width)


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def _corners(
    n: int, side: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's own top-left corner, uniform over every position where the square fits.

    The reference draws from [0, H − side), so its squares never touch the last row or column; every
    position is drawn here, the last included.
    """
    rows = torch.randint(0, height - side + 1, (n,), generator=generator, device=device)
    cols = torch.randint(0, width - side + 1, (n,), generator=generator, device=device)
    return rows, cols


def _square_mask(rows: torch.Tensor, cols: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """(N, 1, H, W) booleans: True inside each example's square."""
    r = torch.arange(height, device=rows.device)
    c = torch.arange(width, device=rows.device)
    in_rows = (r >= rows[:, None]) & (r < rows[:, None] + side)
    in_cols = (c >= cols[:, None]) & (c < cols[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _window_index(rows: torch.Tensor, cols: torch.Tensor, side: int) -> tuple[torch.Tensor, ...]:
    """Indices for ``t[batch, :, r, c]``: each example's (side × side) window, as (N, side, side, C)."""
    offsets = torch.arange(side, device=rows.device)
    batch = torch.arange(rows.numel(), device=rows.device)[:, None, None]
    return batch, (rows[:, None] + offsets)[:, :, None], (cols[:, None] + offsets)[:, None, :]


@functools.cache
def _rectangles(height: int, width: int) -> torch.Tensor:
    """Concentric rectangles around the centre (H // 2, W // 2), unit L2 norm: the reference's
    ``eta_rectangles``. Ring k (Chebyshev distance k from the centre) and every ring inside it receive
    1/(k+1)², so a pixel at distance d holds Σ_{k ≥ d} 1/(k+1)²."""
    if height == 0:
        return torch.zeros(0, width, dtype=torch.float64)
    rings = max(height, width) // 2 + 1
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{k=d}^{rings-1} 1/(k+1)²
    dist_rows = (torch.arange(height) - height // 2).abs()
    dist_cols = (torch.arange(width) - width // 2).abs()
    pattern = tail[torch.maximum(dist_rows[:, None], dist_cols[None, :])]
    return pattern / pattern.norm()


@functools.cache
def _pseudo_gaussian(side: int) -> torch.Tensor:
    """The L2 attack's (side × side) bump, unit norm: rectangles of + on the top half, of − on the bottom
    (the reference's ``eta`` before its random transpose)."""
    pattern = torch.cat([_rectangles(side // 2, side), -_rectangles(side - side // 2, side)])
    return pattern / pattern.norm()


def _bump(side: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    pattern = _pseudo_gaussian(side).to(device=like.device, dtype=like.dtype, copy=True)
    flip = torch.rand(1, generator=generator, device=like.device).item() > 0.5  # halves left and right instead
    return pattern.T if flip else pattern


def _on_sphere(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``delta`` rescaled to L2 norm ε (a zero perturbation stays zero)."""
    size = per_example_norm(delta, "l2").view(-1, 1, 1, 1)
    return delta * (eps / (size + 1e-12))


def _linf_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """Vertical stripes: each column of each channel moves by +ε or −ε, at random."""
    n, c, _, w = x.shape
    return (x + eps * _signs((n, c, 1, w), generator, x)).clamp(0.0, 1.0)


def _linf_candidate(
    x: torch.Tensor, best: torch.Tensor, eps: float, side: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``best`` with one square per example set to x ± ε, a sign per channel, in [0, 1].

    Only each example's (side × side) window is read and written: late in the schedule a square covers a
    few pixels, and work on the whole image per query was a third of Square's time on small networks."""
    n, c, h, w = x.shape
    rows, cols = _corners(n, side, h, w, generator, x.device)
    window = _window_index(rows, cols, side)
    x_win = x[window[0], :, window[1], window[2]]  # (N, side, side, C)
    best_win = best[window[0], :, window[1], window[2]]
    signs = _signs((n, c, 1, 1), generator, x)
    # Whether each channel's square would change the image with sign −1 and with +1, (2, N, C), worked out
    # once: the redraws below then decide on these booleans alone, not on a new candidate image each time.
    moves = torch.stack(
        [((x_win + eps * s).clamp(0.0, 1.0) - best_win).abs().ge(CHANGE_TOLERANCE).flatten(1, 2).any(1)
         for s in (-1.0, 1.0)]
    )  # fmt: skip
    for _ in range(MAX_REDRAWS):  # the authors' code: a draw that changes nothing is no query; draw again
        unchanged = ~torch.where(signs.view(n, c) > 0, moves[1], moves[0]).any(dim=1)
        if not bool(unchanged.any()):
            break
        signs = torch.where(unchanged[:, None, None, None], _signs((n, c, 1, 1), generator, x), signs)
    candidate = best.clone()
    candidate[window[0], :, window[1], window[2]] = (x_win + eps * signs.view(n, 1, 1, c)).clamp(0.0, 1.0)
    return candidate


def _l2_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A grid of pseudo-Gaussian bumps (side H // 5), each with a random sign per channel, scaled to the
    sphere of radius ε. The reference assumes H ≥ 5 and blocks that fit; smaller images get 1-pixel blocks
    and blocks are cut at the image's edge."""
    n, c, h, w = x.shape
    side = max(h // 5, 1)
    start = max((h - 5 * side) // 2, 0)
    delta = torch.zeros_like(x)
    for top in range(start, min(h, start + (h // side) * side), side):
        for left in range(start, min(w, start + (w // side) * side), side):
            block = _bump(side, generator, x) * _signs((n, c, 1, 1), generator, x)
            rows, cols = min(side, h - top), min(side, w - left)
            delta[:, :, top : top + rows, left : left + cols] += block[:, :, :rows, :cols]
    return (x + _on_sphere(delta, eps)).clamp(0.0, 1.0)


def _l2_candidate(
    x: torch.Tensor, best: torch.Tensor, eps: float, side: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Move the perturbation's mass in two random windows into the first, plus a new bump, per channel,
    then back onto the sphere of radius ε, in [0, 1] (the reference's L2 step)."""
    n, c, h, w = x.shape
    delta = best - x
    rows, cols = _corners(n, side, h, w, generator, x.device)
    rows2, cols2 = _corners(n, side, h, w, generator, x.device)
    first = _window_index(rows, cols, side)
    second = _square_mask(rows2, cols2, side, h, w)
    both = _square_mask(rows, cols, side, h, w) | second
    window = delta[first[0], :, first[1], first[2]].permute(0, 3, 1, 2)  # (N, C, side, side)
    window_size = window.square().sum(dim=(2, 3), keepdim=True).sqrt()
    image_size = per_example_norm(delta, "l2").view(n, 1, 1, 1)
    # AutoAttack measures the two windows over all channels (the authors' script: per channel); the
    # result is put back on the sphere below either way, so this only shifts mass towards the window.
    windows_size = per_example_norm(delta * both, "l2").view(n, 1, 1, 1)
    new = _bump(side, generator, x) * _signs((n, c, 1, 1), generator, x) + window / (window_size + 1e-12)
    budget = ((eps**2 - image_size**2).clamp_min(0.0) / c + windows_size**2).sqrt()
    new = new / (new.square().sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * budget
    delta = delta.masked_fill(second, 0.0)
    delta[first[0], :, first[1], first[2]] = new.permute(0, 2, 3, 1)
    return (x + _on_sphere(delta, eps)).clamp(0.0, 1.0)


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit of the label minus the largest other logit: negative exactly when the example is fooled
    (in fp32, so that logits from a half-precision autocast compare without ties)."""
    return -margin_loss(logits.float(), labels)


def _judged_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """The margin that decides: one pass's, or on a randomized model (``draws`` > 1) the mean over that many
    passes, set to −inf where every pass is fooled (only then is an example done: never on a lucky draw)."""
    if draws == 1:
        return _margin(model(x), y)
    margins = torch.stack([_margin(model(x), y) for _ in range(draws)])
    return margins.mean(0).masked_fill((margins < 0).all(0), float("-inf"))


def _single_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    p_init: float,
    generator: torch.Generator | None,
    draws: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of ``steps`` queries from a fresh start: each example's best point and its margin.

    Only examples not yet fooled are queried (the reference's ``idx_to_fool``); the rows still in play
    are gathered again only when some example is fooled. On a randomized model (``draws`` > 1) every query
    is judged over ``draws`` passes (:func:`_judged_margin`, ``draws`` times the cost): a change is kept when
    it lowers the mean margin, and an example leaves only when every pass is fooled.
    """
    h, w = x.shape[-2:]
    start, candidate_for, side_for = (
        (_l2_start, _l2_candidate, l2_side) if norm == "l2" else (_linf_start, _linf_candidate, linf_side)
    )
    best = start(x, eps, generator)
    margin = _judged_margin(model, best, y, draws)
    active = (margin >= 0 if draws == 1 else margin > float("-inf")).nonzero().squeeze(1)
    x_act, y_act, best_act, margin_act = x[active], y[active], best[active], margin[active]
    for iteration in range(steps):
        if active.numel() == 0:
            break
        side = side_for(p_schedule(iteration, steps, p_init), h, w)
        candidate = candidate_for(x_act, best_act, eps, side, generator)
        value = _judged_margin(model, candidate, y_act, draws)
        improved = value < margin_act
        best_act = torch.where(improved[:, None, None, None], candidate, best_act)
        margin_act = torch.where(improved, value, margin_act)
        fooled = margin_act < 0 if draws == 1 else margin_act == float("-inf")
        if bool(fooled.any()):
            best[active[fooled]], margin[active[fooled]] = best_act[fooled], margin_act[fooled]
            keep = ~fooled
            active, x_act, y_act, best_act, margin_act = (t[keep] for t in (active, x_act, y_act, best_act, margin_act))
    best[active], margin[active] = best_act, margin_act
    return best, margin


@register_attack(
    "square",
    title="Square",
    summary="Square Attack (Andriushchenko et al. 2020), black-box random "
    "search on the margin: square = square5000, squareQUERIES, squareQUERIESxRESTARTS",
    counts=r"(?:-?(?P<steps>\d+))?(?:x(?P<restarts>\d+))?",
    syntax="square[QUERIES][xRESTARTS]",
    default_steps=5000,
    step_ratio=None,
    options=("steps", "restarts", "draws"),
    black_box=True,
    fixed_loss="margin",
)
def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 5000,
    restarts: int = 1,
    p_init: float = P_INIT,
    targeted: bool = False,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = True,
    channels_last: bool = True,
    draws: int = 1,
) -> torch.Tensor:
    """Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a
    query-efficient black-box adversarial attack via random search", arXiv:1912.00049).

    Threat model: score-based black-box (logits only, no gradients), untargeted, ‖x_adv − x‖ ≤ ε in L∞
    or L2, pixels in [0, 1]. L∞ starts from vertical stripes of ±ε and each query sets one random square
    (its side from :func:`p_schedule`, its place drawn per example) to x ± ε with a random sign per
    channel; L2 starts from a grid of pseudo-Gaussian bumps on the sphere of radius ε and each query moves
    the mass of two random windows into the first plus a new bump. A change is kept when it lowers the
    margin (true logit minus the largest other), whatever ``loss`` says: Square always uses the margin,
    and ``loss`` (``"ce"`` is the registry's neutral value) is accepted for a uniform signature.

    Budget: ``steps`` queries per example and run (``square`` = 5000, AutoAttack's standard suite), plus
    one for the start and one clean forward pass; an example stops being queried the moment it is fooled
    (margin < 0), so ``early_stop`` is always on and the argument is ignored. Examples the model already
    misclassifies are returned unchanged; each of the ``restarts − 1`` further runs starts afresh on the
    examples still not fooled, and an example never fooled keeps the lowest-margin point found.
    ``generator`` drives all randomness (same seed, same result); ``p_init`` is the first fraction of
    pixels a square covers (0.8, as AutoAttack). ``channels_last`` runs CPU convolutions in NHWC on a copy
    of the model (same values, faster). ``draws`` > 1 (an evaluation of a randomized model): each query is
    judged by its mean margin over ``draws`` passes (``draws`` times the cost), and no example is skipped
    or let go on one pass's say: it is done only when every one of the passes is fooled.

    Shapes: ``x`` (N, C, H, W) float in [0, 1], ``y`` (N,) int64; returns (N, C, H, W) in [0, 1].
    """
    check_attack_inputs(model, x, y, eps, norm)
    if x.dim() != 4:
        raise AdvlabError(f"square attacks images of shape (N, C, H, W), got shape {tuple(x.shape)}")
    steps, restarts = check_count("steps (queries)", steps), check_count("restarts", restarts)
    draws = check_count("draws", draws)
    if targeted:
        raise AdvlabError("square is untargeted: it lowers the true class's margin and takes no target labels")
    if loss not in LOSSES:
        raise AdvlabError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    if not 0 < p_init <= 1:  # also refuses NaN
        raise AdvlabError(f"p_init must be in (0, 1], got {p_init!r}")
    x = x.detach()
    y = y.detach().to(device=x.device, dtype=torch.long)
    with eval_mode(model), torch.no_grad(), fast_layout(model, x, channels_last) as (net, x_fast):
        best = x_fast.clone()
        margin = _judged_margin(net, x_fast, y, draws)  # the reference attacks only what the model gets right
        for _ in range(restarts if eps > 0 else 0):
            todo = (margin >= 0 if draws == 1 else margin > float("-inf")).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            found, value = _single_run(
                net,
                x_fast[todo],
                y[todo],
                eps=eps,
                norm=norm,
                steps=steps,
                p_init=p_init,
                generator=generator,
                draws=draws,
            )
            better = value < margin[todo]
            best[todo[better]], margin[todo[better]] = found[better], value[better]
    return best.contiguous()
