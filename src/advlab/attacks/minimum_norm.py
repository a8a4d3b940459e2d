"""What the minimum-norm attacks (FAB, FMN, C&W, DeepFool) share: their result, its curve, and their use at one ε.

A minimum-norm attack answers "how close is the nearest adversarial example it can find?" rather than "is
there one within ε?": one run gives each example's smallest adversarial perturbation, and so the robust
accuracy at every ε at once. Python::

    from advlab.attacks import curve, parse_attack
    result = parse_attack("fmn-l2").minimal(model, x, y)     # a MinimalPerturbation
    result.norms                                             # (N,): 0 misclassified already, inf none found
    curve(result.norms, [0.5, 1.0, 1.5])                     # robust accuracy at each ε, from that one run
    x_adv = parse_attack("fab-t")(model, x, y, eps=8 / 255)  # at one ε: what was found within ε, else x

Command line: ``advlab attack RUN_DIR --attack fab-t --eps 8/255 --out OUT`` (or ``fmn-l2``, ``cw``,
``deepfool-linf``); at one ε they run through :func:`within_eps`, so the ε-ball check always holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from advlab.attacks.loop import eval_mode
from advlab.attacks.threat import BALL_TOLERANCE, check_attack_inputs, per_example_norm
from advlab.errors import AdvlabError
from advlab.runtime import fast_layout

# What search(model, x, y) returns: each example's smallest adversarial found, x itself where none.
Search = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackParameter:
    """A setting of one attack, declared by its kind in the registry and spelt ``NAME:key=value`` (C&W's ``c``,
    DeepFool's ``overshoot``). The minimum-norm attacks are the ones with such settings, hence it lives here;
    any attack may declare them (``register_attack(..., parameters=(...))``)."""

    name: str  # the key, a Python identifier: passed to the attack function as a keyword
    type: type  # int or float: how the text after "=" is read
    default: float  # the attack function's own default, written once beside it
    help: str  # one line for --help and docs
    rule: str = ""  # what ``check`` asks, for the error message: "> 0"
    check: Callable[[float], bool] = lambda value: True
    by_norm: Mapping[str, float] | None = None  # a default per threat model, where it depends on it (FMN's α)

    def default_for(self, norm: str) -> float:
        """The default in the threat model ``norm``: what runs, and what a metrics file records."""
        return self.by_norm[norm] if self.by_norm is not None else self.default

    def read(self, value: Any, attack: str) -> float:
        """``value`` (text from a name, or a number from Python or TOML) as this parameter's type, checked."""
        try:
            if isinstance(value, bool) or (isinstance(value, float) and self.type is int):
                raise TypeError(value)
            number = self.type(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            kind = "an integer" if self.type is int else "a number"
            raise AdvlabError(f"attack {attack}: {self.name} must be {kind}, got {value!r}") from None
        if number != number or not self.check(number):  # number != number: NaN
            raise AdvlabError(f"attack {attack}: {self.name} must be {self.rule}, got {number!r}")
        return number


def robust_at(norms: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: robust at ``eps``, i.e. its minimal norm exceeds ε by more than the float slack that
    :func:`advlab.attacks.threat.verify_adversarial` allows (1e-6). Shapes: ``norms`` (N,); returns (N,) bool."""
    return norms > eps + BALL_TOLERANCE


def curve(norms: torch.Tensor, eps_grid: Sequence[float]) -> torch.Tensor:
    """Robust accuracy at each ε of ``eps_grid``: the share of examples whose minimal norm exceeds it (an
    example misclassified already has norm 0 and is never robust). Returns (E,) float64."""
    if norms.numel() == 0:
        raise AdvlabError("a robust-accuracy curve needs at least one example")
    return torch.stack([robust_at(norms, float(eps)).double().mean() for eps in eps_grid])


# A point counts as adversarial only if its margin beats float rounding by far: max_{j≠y} f_j − f_y above
# 100 machine epsilons of the largest logit. These attacks end right at the decision boundary, where the
# rounding of another batch size (a different matrix kernel) can flip a tie; a point kept by this rule is
# misclassified in any batch, and costs a relative norm of about 1e-5 more.
ROUNDING_MARGIN = 100


def misclassified(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per example: predicted wrong by more than rounding (and by ``kappa``, C&W's confidence). Shapes (N, C),
    (N,) → (N,) bool; judged in float32 (float64 logits: float64)."""
    wide = logits.double() if logits.dtype == torch.float64 else logits.float()
    true = wide.gather(1, y[:, None]).squeeze(1)
    others = wide.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    slack = ROUNDING_MARGIN * torch.finfo(wide.dtype).eps * wide.abs().amax(dim=1).clamp_min(1.0)
    return others - true > kappa + slack


def dual_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """‖t_i‖ in the dual of ``norm`` (ℓ1 for L∞, ℓ2 for L2): a linear function's value changes by at most this
    times the perturbation's size, so |f| / ‖∇f‖_dual is the distance to its zero. Shapes (N, ...) → (N,)."""
    flat = t.flatten(1)
    return flat.abs().sum(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


@dataclass(frozen=True)
class MinimalPerturbation:
    """Each example's smallest adversarial example found by a minimum-norm attack.

    ``x_adv`` (N, ...) in [0, 1]: misclassified by the model wherever ``norms`` is finite, ``x`` itself
    elsewhere; ``norms`` (N,) float32: ‖x_adv − x‖ in ``norm``, 0 for an example misclassified already and
    inf where nothing was found. Every finite norm was checked by a forward pass at the returned point.
    """

    x_adv: torch.Tensor
    norms: torch.Tensor
    norm: str

    def robust_at(self, eps: float) -> torch.Tensor:
        """(N,) bool: no adversarial found within ``eps``."""
        return robust_at(self.norms, eps)

    def curve(self, eps_grid: Sequence[float]) -> torch.Tensor:
        """(E,) robust accuracy at each ε of ``eps_grid``."""
        return curve(self.norms, eps_grid)


def within_eps(result: MinimalPerturbation, x: torch.Tensor, eps: float) -> torch.Tensor:
    """A minimum-norm attack used at one ε (in a suite, or ``advlab attack --eps``): the adversarial found
    where its norm is at most ε, and ``x`` itself elsewhere. Nothing is projected into the ball, so no
    point is called adversarial that was not checked as found; the ε-ball check always holds. Shapes: ``x``
    (N, ...) as ``result.x_adv``; returns (N, ...)."""
    robust = result.robust_at(eps).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(robust, x, result.x_adv)


def target_count(title: str, targets: int, classes: int, default: int) -> int:
    """How many of the most likely wrong classes a targeted minimum-norm attack (FAB-T, FMN-T) aims at:
    ``targets``, or ``default`` where it is 0, at most the C − 1 wrong classes (more is an error)."""
    wrong = classes - 1
    if targets == 0:
        return min(default, wrong)
    if targets > wrong:
        raise AdvlabError(f"{title} cannot aim at {targets} classes: the model has {classes}, so {wrong} wrong ones")
    return targets


def untargeted_only(title: str, targeted: bool, loss: str) -> None:
    """One clear error for what the registry's neutral values forbid: these attacks choose their own loss."""
    if targeted or loss != "ce":
        raise AdvlabError(
            f"{title} minimizes the perturbation that changes the true label and chooses its own objective; "
            f"call it with targeted=False and loss='ce' (got targeted={targeted!r}, loss={loss!r})"
        )


def run_minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    channels_last: bool,
    search: Search,
) -> MinimalPerturbation:
    """The frame of every minimum-norm attack: check the inputs, run ``search(model, x, y)`` in eval mode
    (on the CPU's channels-last twin with ``channels_last``), then judge what it returns with one forward
    pass (:func:`misclassified`): a point the model does not misclassify becomes ``x`` with norm inf; one it
    does keeps its measured norm (0 where ``search`` left ``x`` misclassified as it was)."""
    check_attack_inputs(model, x, y, 0.0, norm)
    x = x.detach()
    y = y.detach().to(device=x.device, dtype=torch.long)
    with eval_mode(model), torch.enable_grad(), fast_layout(model, x, channels_last) as (net, x_fast):
        found = search(net, x_fast, y).detach()
        with torch.no_grad():
            fooled = misclassified(net(found), y)
    x_adv = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), found, x_fast).contiguous()
    # Measured as verify_adversarial measures (float32), so that the curve and the ε-ball check agree.
    size = per_example_norm((x_adv - x).float(), norm)
    return MinimalPerturbation(x_adv, torch.where(fooled, size, torch.full_like(size, float("inf"))), norm)


__all__ = [
    "AttackParameter",
    "MinimalPerturbation",
    "Search",
    "curve",
    "dual_norm",
    "misclassified",
    "robust_at",
    "run_minimal",
    "target_count",
    "untargeted_only",
    "within_eps",
]
