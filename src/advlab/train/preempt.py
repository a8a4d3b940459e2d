"""Preemption-safe training, as clusters and spot machines need: a state written in the middle of an epoch.

At each batch boundary the training loop asks a :class:`Preemption` whether to save: after SIGTERM (the
notice a scheduler gives before it kills a job) it writes the state and stops with :class:`Preempted`
(``advlab train`` then exits with status 143); with ``save_every`` minutes it writes one whenever that much
time has passed. ``--resume`` continues from the batch after the one saved, and ends bit-identical to a run
never interrupted: the state holds the epoch's shuffling generator as it was when the epoch began (the
same order is drawn again), the batches done, the epoch's running sums, and the guard's last good weights.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from advlab.errors import Preempted


@dataclass
class EpochProgress:
    """Where an epoch stands after its last finished batch: what a mid-epoch resume needs besides the model,
    the optimizer and the generators."""

    epoch: int  # the epoch in progress, from 1
    batches: int = 0  # batches finished in this epoch
    seen: int = 0  # examples trained on in this epoch
    clean_seen: bool = False
    adv_seen: bool = False
    lr: float = 0.0
    eps: float = 0.0
    loss_sum: torch.Tensor | None = None  # Σ loss·n over the epoch's batches, on the training device
    clean_correct: torch.Tensor | None = None
    adv_correct: torch.Tensor | None = None
    shuffle_start: torch.Tensor | None = None  # the shuffling generator's state when the epoch began (its order)

    TENSORS = ("shuffle_start", "loss_sum", "clean_correct", "adv_correct")

    @classmethod
    def begin(cls, epoch: int, shuffle_rng: torch.Generator, device: torch.device, lr: float) -> EpochProgress:
        return cls(
            epoch=epoch,
            shuffle_start=shuffle_rng.get_state(),
            lr=lr,
            loss_sum=torch.zeros((), device=device),
            clean_correct=torch.zeros((), device=device, dtype=torch.long),
            adv_correct=torch.zeros((), device=device, dtype=torch.long),
        )

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON values) for state.safetensors."""
        tensors = {f"epoch.{name}": getattr(self, name) for name in self.TENSORS}
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.TENSORS}
        return tensors, plain

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], plain: dict[str, Any], device: torch.device) -> EpochProgress:
        values = {name: tensors[f"epoch.{name}"] for name in cls.TENSORS}
        for name in ("loss_sum", "clean_correct", "adv_correct"):
            values[name] = values[name].to(device)
        return cls(**plain, **values)


class Preemption:
    """Decides, at each batch boundary, whether to write a mid-epoch state: after SIGTERM, or every
    ``save_every`` minutes. Installs its SIGTERM handler for the duration of a ``with`` block (main thread
    only; elsewhere SIGTERM keeps its usual meaning)."""

    def __init__(self, save_every: float | None = None) -> None:
        self.save_every = save_every
        self.terminated = False
        self.last_save = time.monotonic()
        self._previous = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_term(self, signum, frame) -> None:
        self.terminated = True

    def due(self) -> bool:
        if self.terminated:
            return True
        return self.save_every is not None and time.monotonic() - self.last_save >= 60 * self.save_every

    def saved(self) -> None:
        self.last_save = time.monotonic()


__all__ = ["EpochProgress", "Preempted", "Preemption"]
