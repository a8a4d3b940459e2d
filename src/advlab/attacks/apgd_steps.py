"""APGD's own step rule (Croce & Hein 2020, arXiv:2003.01690, Algorithm 1): its losses, its checkpoints and
step-size halving, momentum, its random start, and one run from a start. The attacks users call, and the
driver that runs them per target and restart, are in :mod:`advlab.attacks.apgd`; the gradient at a point
(EOT, precision, the fp16 scale) and the rule that keeps each example's strongest point are the ones every
gradient attack shares (:mod:`advlab.attacks.loop`). Python::

    from advlab.attacks.apgd_steps import apgd_run, apgd_start, OBJECTIVES
    x_adv, fooled, loss, step = apgd_run(model, x, y, y, apgd_start(x, 0.1, "linf", None), eps=0.1,
                                         norm="linf", steps=100, objective=OBJECTIVES["ce"], early_stop=True)

No command line of its own: ``advlab attack RUN_DIR --attack apgd-ce`` runs it (:mod:`advlab.attacks.apgd`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from advlab.attacks.loop import (
    ObjectiveGradient,
    Strongest,
    attack_success,
    cross_entropy,
    dlr_loss,
    objective_and_gradient,
    pad_to_bucket,
    success_rate,
)
from advlab.attacks.threat import per_example_norm, project, step_direction
from advlab.errors import AdvlabError

RHO = 0.75  # the paper's ρ: halve the step where under 75% of an interval's steps raised the loss
MOMENTUM = 0.75  # the paper's α: weight of the new step against the last move (0.25)

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


# APGD's losses by name, each ``(logits, labels, targets)``: the untargeted ones ignore the targets. Each
# is taken in float32, under autocast too: a DLR ratio of half-precision logits keeps few digits.
OBJECTIVES: dict[str, Objective] = {
    "ce": lambda logits, labels, targets: cross_entropy(logits.float(), labels),
    "dlr": lambda logits, labels, targets: dlr_loss(logits.float(), labels),
    "dlr-targeted": lambda logits, labels, targets: targeted_dlr_loss(logits.float(), labels, targets),
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


class APGDRun:
    """One APGD run from a start (Croce & Hein 2020, Algorithm 1): per row of the batch still in play, its
    iterates, best point x_max and step size η, and per example of the batch its strongest point so far.
    With early exit a fooled example leaves the batch (in buckets, :func:`advlab.attacks.loop.pad_to_bucket`)
    at its first misclassified iterate. Low level: no checks, no eval mode; :func:`apgd_run` runs one."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        goals: torch.Tensor,
        start: torch.Tensor,
        *,
        eps: float,
        norm: str,
        objective: Objective,
        early_stop: bool,
        eot: int = 1,
        draws: int = 1,
    ) -> None:
        self.model, self.start, self.eps, self.norm, self.objective = model, start, eps, norm, objective
        self.early_stop, self.eot, self.draws = early_stop and draws == 1, eot, draws
        n = x.shape[0]
        no = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.kept = Strongest(start.clone(), no, torch.full((n,), float("-inf"), device=x.device))
        self.final_step = torch.full((n,), 2.0 * eps, device=x.device)
        self.bcast = (-1, *([1] * (x.dim() - 1)))
        self.last_mark = 0
        # Per-row state of the rows still in the batch; with early exit, fooled rows leave it.
        self.rows = {"row": torch.arange(n, device=x.device), "x": x, "labels": labels, "goals": goals}

    def evaluate(self, point: torch.Tensor, need_grad: bool) -> ObjectiveGradient:
        """Objective, gradient and logits at ``point`` (rows of the batch), EOT-averaged."""
        goals = self.rows["goals"]
        return objective_and_gradient(
            self.model,
            point,
            self.rows["labels"],
            lambda logits, labels: self.objective(logits, labels, goals),
            eot=self.eot,
            need_grad=need_grad,
        )

    def begin(self, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x^(0): its objective, gradient and the state built on them; returns the logits and objective."""
        start = self.start
        loss, grad, logits = self.evaluate(start, need_grad)
        n = start.shape[0]
        self.rows |= {
            "cur": start,
            "prev": start,
            "grad": grad,
            "loss": loss,
            "best": start.clone(),
            "best_loss": loss.clone(),
            "best_grad": grad,  # x_max, its loss and gradient
            "best_loss_before": loss.clone(),
            "halved_before": torch.ones(n, dtype=torch.bool, device=start.device),
            "increases": torch.zeros(n, dtype=torch.long, device=start.device),
            "step": torch.full((n,), 2.0 * self.eps, device=start.device),
            "fooled": torch.zeros(n, dtype=torch.bool, device=start.device),
        }
        return logits, loss

    def advance(self, k: int, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x^(k) from x^(k−1): a projected step, then momentum (none on the first step); x_max follows."""
        s, eps, norm = self.rows, self.eps, self.norm
        cur, prev, eta = s["cur"], s["prev"], s["step"].view(self.bcast)
        z = project(cur + eta * step_direction(s["grad"], norm), s["x"], eps, norm)
        new = z if k == 1 else project(cur + MOMENTUM * (z - cur) + (1 - MOMENTUM) * (cur - prev), s["x"], eps, norm)
        loss, grad, logits = self.evaluate(new, need_grad)
        s["increases"] += loss > s["loss"]
        s["prev"], s["cur"], s["grad"], s["loss"] = cur, new, grad, loss
        better = loss > s["best_loss"]
        s["best"] = torch.where(better.view(self.bcast), new, s["best"])
        s["best_loss"] = torch.where(better, loss, s["best_loss"])
        if grad is not None:
            s["best_grad"] = torch.where(better.view(self.bcast), grad, s["best_grad"])
        return logits, loss

    def record(self, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Keep each example's strongest iterate (frozen at its first success with early exit); returns
        the rows newly misclassified. ``logits`` are the EOT mean: no example is fooled by one lucky draw."""
        s = self.rows
        wrong = logits.argmax(dim=1) != s["labels"]
        self.kept.keep(s["row"], s["cur"], wrong, loss, first_success=self.early_stop)
        newly = wrong & ~s["fooled"]
        s["fooled"] = s["fooled"] | wrong
        return newly

    def checkpoint(self, k: int) -> None:
        """Halve η where :func:`halve_step` says so, and restart those rows from x_max."""
        s = self.rows
        halve = halve_step(
            s["increases"], k - self.last_mark, s["best_loss"], s["best_loss_before"], s["halved_before"]
        )
        s["step"] = torch.where(halve, s["step"] / 2, s["step"])
        s["cur"] = torch.where(halve.view(self.bcast), s["best"], s["cur"])  # restart from x_max
        s["grad"] = torch.where(halve.view(self.bcast), s["best_grad"], s["grad"])
        s["halved_before"], s["best_loss_before"] = halve, s["best_loss"].clone()
        s["increases"] = torch.zeros_like(s["increases"])
        self.last_mark = k

    def compact(self) -> bool:
        """Early exit: drop fooled rows, in buckets. False when no row is left to attack."""
        unfooled = ~self.rows["fooled"]
        left = int(unfooled.sum())
        if left == 0:
            return False
        self.final_step[self.rows["row"]] = self.rows["step"]
        keep = pad_to_bucket(unfooled, left)
        if keep.numel() < unfooled.numel():
            self.rows = {key: value[keep] for key, value in self.rows.items()}
        return True

    def run(self, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``steps`` iterations from the start; returns :func:`apgd_run`'s four tensors."""
        marks = [k for k in checkpoints(steps) if k < steps]  # a checkpoint after the last step changes nothing
        logits, loss = self.begin(steps > 0)
        for k in range(steps + 1):
            if k > 0:
                logits, loss = self.advance(k, k < steps)
            newly = self.record(logits, loss)
            if k == steps:
                break
            if k in marks:
                self.checkpoint(k)
            if self.early_stop and bool(newly.any()) and not self.compact():
                break
        self.final_step[self.rows["row"]] = self.rows["step"]
        if self.draws > 1:
            self.judge_by_draws()
        return self.kept.x, self.kept.success, self.kept.value, self.final_step

    def judge_by_draws(self) -> None:
        """A randomized model: the iterate kept because one pass (or the EOT mean) called it wrong may owe that
        to a lucky draw. Each example's two candidates, that point and x_max (the highest objective), are
        judged by the share of ``draws`` fresh passes they fool, and the better stays (then the higher
        objective). Every row is still in the batch here: without early exit none leaves."""
        s, success = self.rows, attack_success(False)
        kept = Strongest(
            self.kept.x, success_rate(self.model, self.kept.x, s["labels"], success, self.draws), self.kept.value
        )
        kept.keep(
            s["row"], s["best"], success_rate(self.model, s["best"], s["labels"], success, self.draws), s["best_loss"]
        )
        self.kept = kept


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
    draws: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run of ``steps`` iterations from ``start`` (Croce & Hein 2020, Algorithm 1), low level: no
    checks, no eval mode. ``objective(logits, labels, goals)`` is ascended; success is a wrong prediction by
    the logits averaged over ``eot`` passes (:func:`advlab.attacks.loop.objective_and_gradient`).

    Returns per example ``(x_adv, fooled, loss, step)``: the strongest iterate (a misclassified one first,
    then the higher objective; with ``early_stop`` the first misclassified one, after which the example
    leaves the batch), whether it is misclassified, its objective, and the final step size η. With ``draws``
    > 1 (a randomized model) there is no early exit, and ``fooled`` is the share of that many fresh passes the
    point fools (:meth:`APGDRun.judge_by_draws`).
    Shapes: ``x``, ``start`` (N, ...); ``labels``, ``goals`` (N,); returns (N, ...), (N,), (N,), (N,).
    """
    run = APGDRun(
        model,
        x,
        labels,
        goals,
        start,
        eps=eps,
        norm=norm,
        objective=objective,
        early_stop=early_stop,
        eot=eot,
        draws=draws,
    )
    return run.run(steps)
