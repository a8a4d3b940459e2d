"""Catastrophic overfitting: found by its signature while training runs, and the remedy the user chose.

Fast single-step training can collapse within a few hundred steps (Wong, Rice & Kolter 2020): the model
learns to defeat its own one-step attack (FGSM accuracy high, often above clean accuracy) while a
multi-step attack breaks it (PGD accuracy near zero). The guard attacks the same validation images with
FGSM and with PGD and compares: a gap of more than ``co_gap`` is the signature. A healthy model's two
figures are close (the quick study's PGD-3 model at ε = 0.1: FGSM 69.4%, PGD-20 64.4%,
benchmarks/results/quick-study.json); a collapsed one's are tens of points apart. It runs every ``co_check_every`` optimizer steps on ``co_check_examples`` images and at
the end of every epoch on ``check_examples``, where the older rule also fires: validation PGD accuracy more
than ``co_threshold`` below the best epoch's (a gradual collapse, as on Fashion-MNIST at ε = 0.2).

When it fires the weights and optimizer go back to the last point a check passed (a within-epoch check or
an epoch's end), and ``co_remedy`` decides: ``stop`` (those weights become ``model.safetensors``);
``smaller-step`` (halve α and go on); ``fallback`` (go on with ``fallback_method``, multi-step PGD by
default, at that method's own step size). After :data:`MAX_REMEDIES` remedies the run stops.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.evaluate import evaluate

MAX_REMEDIES = 3  # a run that keeps collapsing after this many remedies stops


class CatastrophicOverfittingWarning(UserWarning):
    """Training collapsed (FGSM and PGD accuracy diverged, or PGD accuracy fell); see the run's summary."""


def catastrophic_overfitting(best_robust: float | None, robust: float, threshold: float) -> bool:
    """The per-epoch fall rule: validation PGD accuracy more than ``threshold`` below the best epoch's.

    On CIFAR-10 a collapse is sudden; on Fashion-MNIST it can be gradual (FGSM training from x at ε = 0.2:
    validation PGD-10 accuracy 41% → 31% → 22% over six epochs while training accuracy rose from 54% to
    73%). A fall of 0.1 (10 points) is far beyond the ±1.5 points of noise on 1,000 validation images, and
    beyond robust overfitting (Rice et al.), which costs a few points over many epochs. It cannot fire
    when robust accuracy never had a peak to fall from: the signature below can."""
    return best_robust is not None and best_robust - robust > threshold


def collapse_signature(fgsm_accuracy: float, pgd_accuracy: float, gap: float) -> bool:
    """FGSM accuracy more than ``gap`` above PGD accuracy on the same images: the single-step attack no
    longer finds what the multi-step one does, so the loss surface bends inside the ε-ball."""
    return fgsm_accuracy - pgd_accuracy > gap


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


def collapse_event(*, epoch: int, step: int, within: bool, reading: dict[str, float], examples: int,
                   config, rule: str, best: float | None, best_epoch: int | None, restored: Snapshot,
                   remedy: str, alpha: float | None = None) -> dict[str, Any]:
    """The record of one collapse, with the numbers that showed it and what was done; ``message`` is the
    line printed on the console and kept in the run's summary."""
    where = f"epoch {epoch}, step {step}" if within else f"the end of epoch {epoch}"
    pgd_name = f"PGD-{config.check_steps}"
    if rule == "signature":
        why = (f"on {examples} validation images FGSM accuracy is {100 * reading['fgsm']:.1f}% but {pgd_name} "
               f"accuracy {100 * reading['pgd']:.1f}% (a gap of {100 * (reading['fgsm'] - reading['pgd']):.1f} "
               f"points, more than {100 * config.co_gap:.0f})")
    else:
        why = (f"validation {pgd_name} accuracy fell to {100 * reading['pgd']:.1f}% from a best of "
               f"{100 * best:.1f}% (epoch {best_epoch}), more than {100 * config.co_threshold:.0f} points")
    step_size = f" (α = {alpha:.4g})" if alpha is not None else ""
    action = {"stop": "training stopped",
              "smaller-step": f"training goes on with half the step size{step_size}",
              "fallback": f"training goes on with method {config.fallback_method}{step_size}"}[remedy]
    message = (f"catastrophic overfitting at {where}: {why}; weights restored to {restored.where} (the last "
               f"check passed); {action}")
    return {"epoch": epoch, "step": step, "within_epoch": within, "rule": rule, "examples": examples,
            "clean_acc": reading.get("clean"), "fgsm_acc": reading["fgsm"], "pgd_acc": reading["pgd"],
            "restored_epoch": restored.epoch, "restored_step": restored.step, "restored_to": restored.where,
            "remedy": remedy, "alpha": alpha, "message": message}
