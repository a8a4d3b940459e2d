"""Optimizers and learning-rate schedules, by the names ``TrainConfig.optimizer`` and ``.schedule`` take."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def _sgd(params: Iterable[torch.Tensor], config: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _adam(params: Iterable[torch.Tensor], config: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable[torch.Tensor], Any], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
}

# Learning-rate factor as a function of training progress t ∈ (0, 1] (fraction of optimizer steps done).
SCHEDULES: dict[str, Callable[[float], float]] = {
    # Wong et al.'s cyclic schedule: linear from 0 to the peak at 40% of training, then linear to 0.
    "onecycle": lambda t: t / 0.4 if t <= 0.4 else max(0.0, (1.0 - t) / 0.6),
    # The same triangle peaking half-way: Wong et al.'s and de Jorge et al.'s CIFAR-10 code (CyclicLR).
    "triangle": lambda t: t / 0.5 if t <= 0.5 else max(0.0, (1.0 - t) / 0.5),
    # Madry et al. / Rice et al.: ×0.1 at half of training and again at three quarters.
    "piecewise": lambda t: 1.0 if t <= 0.5 else 0.1 if t <= 0.75 else 0.01,
    "constant": lambda t: 1.0,
}
