"""Catastrophic overfitting: told apart from a run still on its way to robustness, and the remedy chosen.

Fast single-step training can collapse (Wong, Rice & Kolter 2020): the model learns to defeat its own
one-step attack (FGSM accuracy high, often near clean accuracy) while a multi-step attack breaks it (PGD
accuracy near zero). The guard attacks the same validation images with FGSM and with PGD-``check_steps``
every ``co_check_every`` optimizer steps (on ``co_check_examples`` images) and at the end of every epoch (on
``check_examples``), once ε has reached its full value, and reads two things:

- the **signature**: FGSM accuracy more than ``co_gap`` above PGD accuracy;
- a **fall**: PGD accuracy more than ``co_threshold`` below the best end-of-epoch reading so far.

Neither fires at once, because a run on its way to robustness shows both for a while: on MNIST at ε = 0.3
fast FGSM keeps the signature for its first one or two epochs before PGD robustness arrives, and dips for
one check at the peak of its learning rate (BENCHMARKS.md, "Reproducing the papers"). A collapse is a state
that lasts, so the guard fires when

- ``co_patience`` checks in a row show a fall (robustness the run had is gone), or
- ``co_patience`` checks in a row, all taken after the learning rate passed its peak (half-way through a
  flat schedule), show the signature or a fall (the run never became robust, and is no longer learning to).

A check that shows neither is a good point: the guard keeps those weights (:class:`Snapshot`). When it
fires the weights and optimizer go back to the last good point, and ``co_remedy`` decides: ``stop`` (those
weights become ``model.safetensors``); ``smaller-step`` (halve α and go on); ``fallback`` (go on with
``fallback_method``, multi-step PGD by default, at that method's own step size). After
:data:`MAX_REMEDIES` remedies the run stops. Every check is kept in the run's ``guard.jsonl``.

A run that ends without robustness (its final check shows the signature, or PGD accuracy below chance)
is flagged in its summary whether or not the guard fired (:func:`end_of_run_warnings`), and so is a model
still at chance on clean images after its first epoch.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.evaluate import evaluate

MAX_REMEDIES = 3  # a run that keeps collapsing after this many remedies stops


class CatastrophicOverfittingWarning(UserWarning):
    """Training collapsed (FGSM and PGD accuracy diverged, or PGD accuracy fell); see the run's summary."""


def collapse_signature(fgsm_accuracy: float, pgd_accuracy: float, gap: float) -> bool:
    """FGSM accuracy more than ``gap`` above PGD accuracy on the same images: the single-step attack no
    longer finds what the multi-step one does, so the loss surface bends inside the ε-ball."""
    return fgsm_accuracy - pgd_accuracy > gap


def falling_from(schedule: Callable[[float], float]) -> float:
    """The fraction of training after which ``schedule``'s learning rate has passed its peak: where it
    last stands at its maximum (0.4 for onecycle, 0.5 for triangle and piecewise), or half-way for a
    schedule that never falls (constant)."""
    grid = [i / 1000 for i in range(1, 1001)]
    values = [schedule(t) for t in grid]
    peak = max(values)
    last = max(t for t, value in zip(grid, values) if value >= peak - 1e-12)
    return 0.5 if last >= 1.0 else last


class Guard:
    """The collapse rules over a run's checks, kept in ``checks`` (the run's progress, saved for a resume).

    ``assess`` takes one check's reading and returns the rule that fires (``"fall"`` or ``"signature"``)
    or None; ``good`` says whether the last check was a good point (neither a fall nor the signature).
    """

    def __init__(self, config, checks: list[dict[str, Any]], *, falling_step: float) -> None:
        self.config, self.checks, self.falling_step = config, checks, falling_step

    @property
    def best(self) -> float | None:
        """The best PGD accuracy of an end-of-epoch check (on ``check_examples`` images)."""
        best = self.best_check
        return best["pgd"] if best is not None else None

    @property
    def best_check(self) -> dict[str, Any] | None:
        ends = [c for c in self.checks if not c["within_epoch"]]
        return max(ends, key=lambda c: c["pgd"]) if ends else None

    @property
    def good(self) -> bool:
        return not self.checks or not (self.checks[-1]["signature"] or self.checks[-1]["fall"])

    def assess(self, reading: dict[str, float], *, epoch: int, step: int, within: bool, examples: int) -> str | None:
        config, best = self.config, self.best
        signature = collapse_signature(reading["fgsm"], reading["pgd"], config.co_gap)
        fall = best is not None and best - reading["pgd"] > config.co_threshold
        falling = step >= self.falling_step
        previous = self.checks[-1] if self.checks and not self.checks[-1]["fired"] else None
        fall_run = (previous["fall_run"] + 1 if previous else 1) if fall else 0
        late_run = (previous["late_run"] + 1 if previous else 1) if (signature or fall) and falling else 0
        rule = "fall" if fall_run >= config.co_patience else "signature" if late_run >= config.co_patience else None
        self.checks.append(
            {
                "epoch": epoch,
                "step": step,
                "within_epoch": within,
                "examples": examples,
                "clean": reading["clean"],
                "fgsm": reading["fgsm"],
                "pgd": reading["pgd"],
                "best": best,
                "signature": signature,
                "fall": fall,
                "falling_lr": falling,
                "fall_run": fall_run,
                "late_run": late_run,
                "fired": rule,
            }
        )
        return rule


def probe(model: nn.Module, data, *, eps: float, steps: int, seed: int, runtime) -> dict[str, float]:
    """Clean, FGSM and PGD-``steps`` accuracy of ``model`` on ``data`` at ``eps`` (eval mode; the model's
    own mode is given back). The same seed each time, so that readings compare on equal terms."""
    fgsm, pgd = AttackSpec("fgsm"), AttackSpec("pgd", steps=steps)
    result = evaluate(model, data, attacks=[fgsm, pgd], eps=[eps], seed=seed, runtime=runtime, progress=False)
    return {"clean": result.clean_accuracy, "fgsm": result.robust[fgsm.label][0], "pgd": result.robust[pgd.label][0]}


class Snapshot:
    """The last good weights and optimizer state, in memory, to go back to when training collapses: taken
    at the end of every good epoch and at every within-epoch check that passes."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int) -> None:
        self.model, self.optimizer = model, optimizer
        self.take(epoch=epoch)

    def take(self, *, epoch: int, step: int | None = None, reading: dict[str, float] | None = None) -> None:
        """``epoch``: epochs completed; ``step``: the optimizer step of a within-epoch check (None: an
        epoch's end); ``reading``: that check's figures."""
        self.epoch, self.step, self.reading = epoch, step, reading
        self.weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optim = copy.deepcopy(self.optimizer.state_dict())

    @property
    def where(self) -> str:
        return f"the end of epoch {self.epoch}" if self.step is None else f"epoch {self.epoch + 1}, step {self.step}"

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        self.optimizer.load_state_dict(copy.deepcopy(self.optim))


def collapse_event(
    *,
    epoch: int,
    step: int,
    within: bool,
    reading: dict[str, float],
    examples: int,
    config,
    rule: str,
    guard: Guard,
    restored: Snapshot,
    remedy: str,
    alpha: float | None = None,
) -> dict[str, Any]:
    """The record of one collapse, with the numbers that showed it and what was done; ``message`` is the
    line printed on the console and kept in the run's summary."""
    where = f"epoch {epoch}, step {step}" if within else f"the end of epoch {epoch}"
    pgd_name = f"PGD-{config.check_steps}"
    row = f"{config.co_patience} checks in a row"
    last = guard.checks[-1]
    if rule == "signature":
        shown = "the signature" if last["signature"] else "a fall"
        why = (
            f"{row} since the learning rate passed its peak show the collapse signature or a fall; the last, on "
            f"{examples} validation images: FGSM accuracy {100 * reading['fgsm']:.1f}%, {pgd_name} accuracy "
            f"{100 * reading['pgd']:.1f}% ({shown})"
        )
    else:
        best = guard.checks[-2]["best"] if last["best"] is None and len(guard.checks) > 1 else last["best"]
        best_epoch = next((c["epoch"] for c in guard.checks if not c["within_epoch"] and c["pgd"] == best), None)
        why = (
            f"{row} show validation {pgd_name} accuracy more than {100 * config.co_threshold:.0f} points "
            f"below its best of {100 * best:.1f}% (epoch {best_epoch}); the last: {100 * reading['pgd']:.1f}% "
            f"on {examples} images"
        )
    step_size = f" (α = {alpha:.4g})" if alpha is not None else ""
    action = {
        "stop": "training stopped",
        "smaller-step": f"training goes on with half the step size{step_size}",
        "fallback": f"training goes on with method {config.fallback_method}{step_size}",
    }[remedy]
    message = (
        f"catastrophic overfitting at {where}: {why}; weights restored to {restored.where} (the last "
        f"good check); {action}"
    )
    return {
        "epoch": epoch,
        "step": step,
        "within_epoch": within,
        "rule": rule,
        "examples": examples,
        "clean_acc": reading.get("clean"),
        "fgsm_acc": reading["fgsm"],
        "pgd_acc": reading["pgd"],
        "restored_epoch": restored.epoch,
        "restored_step": restored.step,
        "restored_to": restored.where,
        "remedy": remedy,
        "alpha": alpha,
        "message": message,
    }


def end_of_run_warnings(
    config, reading: dict[str, float] | None, *, classes: int, robust: bool, where: str
) -> list[str]:
    """One line for each thing wrong with the weights a run ends with, from their last check
    (``reading``: clean, FGSM and PGD accuracy at the training ε); ``robust``: the method aims at
    robustness. Empty when nothing is wrong, or when there was no check."""
    if reading is None:
        return []
    warnings = []
    chance = 1.0 / classes
    pgd_name = f"PGD-{config.check_steps}"
    if reading["clean"] <= 1.5 * chance:
        warnings.append(
            f"the model at {where} is at chance on clean validation images "
            f"({100 * reading['clean']:.1f}% for {classes} classes): it did not learn"
        )
    elif (
        robust
        and config.eps > 0
        and (collapse_signature(reading["fgsm"], reading["pgd"], config.co_gap) or reading["pgd"] < chance)
    ):
        warnings.append(
            f"the run ends without robustness: at {where} validation {pgd_name} accuracy is "
            f"{100 * reading['pgd']:.1f}% against FGSM's {100 * reading['fgsm']:.1f}% at ε = "
            f"{config.eps:g} (chance is {100 * chance:.0f}%); its robust accuracy is not to be trusted "
            f"as a defense"
        )
    return warnings


def at_chance_warning(config, clean_accuracy: float, *, classes: int, epoch: int) -> str | None:
    """A line when clean validation accuracy after ``epoch`` is still at chance (at most 1.5 / classes)."""
    if clean_accuracy > 1.5 / classes:
        return None
    return (
        f"after epoch {epoch} the model is still at chance on clean validation images "
        f"({100 * clean_accuracy:.1f}% for {classes} classes): it is not learning; check the learning rate "
        f"and the recipe (advlab train --list-recipes)"
    )


def last_reading(run, snapshot: Snapshot) -> dict[str, float] | None:
    """The last check of the weights a run's model.safetensors holds: a within-epoch check's reading (a run
    stopped there), or the row of the epoch they come from; None without one."""
    if snapshot.step is not None and run.stopped:
        return snapshot.reading
    row = next((r for r in run.rows if r["epoch"] == run.last_good_epoch), None)
    if row is None:
        return None
    return {"clean": row["val_clean_acc"], "fgsm": row["val_fgsm_acc"], "pgd": row["val_robust_acc"]}
