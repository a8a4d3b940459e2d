"""The settings of one training run: a frozen :class:`TrainConfig`, every default with its reason.

Loaded from TOML (a ``[train]`` table), from a shipped preset, or from a run folder's ``config.json``::

    config = load_config("recipe.toml")         # or load_config(preset="quick"), load_config("runs/pgd")
    config = TrainConfig.from_dict({**config.to_dict(), "epochs": 20})

Command line: ``advlab train --config recipe.toml`` or ``--preset quick``; flags override the file.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advlab.data import get_info
from advlab.errors import AdvlabError, check_range
from advlab.models import list_models
from advlab.presets import preset_text
from advlab.files import read_json
from advlab.train.methods import METHODS
from advlab.train.optim import OPTIMIZERS, SCHEDULES


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run does; saved, resolved, as ``config.json`` in the run folder."""

    dataset: str = "fashion-mnist"  # offline on every machine here; 28×28 images train in minutes on a CPU
    model: str = "small_cnn"  # the fast CNN built for 28×28 inputs (see `advlab models`)
    method: str = "standard"  # the baseline every robust method is compared with
    eps: float = 0.1  # L∞ budget in pixel units: the usual Fashion-MNIST ε (MNIST's 0.3 is far too big here)
    alpha: float | None = None  # attack step; None: the method's own (fgsm 1.25ε, pgd/trades/mart 2.5ε/steps, free ε)
    steps: int = 7  # inner PGD steps of pgd/trades/mart: Madry et al.'s PGD-7, cost ≈ (steps+1)× standard
    random_start: bool = True  # uniform start in the ε-ball (Madry; Wong et al.: what keeps fast FGSM from collapsing)
    beta: float = 6.0  # TRADES' 1/λ = 6, the paper's robust setting; MART uses 5-6 too
    replays: int = 4  # free AT's m: the paper's 4-10; free runs ⌈epochs / m⌉ passes, the same gradient work
    epochs: int = 10  # enough for small_cnn to converge on Fashion-MNIST with a one-cycle schedule
    batch_size: int = 128  # the batch of Madry et al., Wong et al. and Rice et al.
    optimizer: str = "adam"  # small CNNs train fast and robustly with Adam (Wong et al.'s MNIST setting)
    lr: float = 0.002  # peak learning rate: measured best for small_cnn + Adam + one-cycle on Fashion-MNIST
    momentum: float = 0.9  # SGD momentum of every paper above (Adam ignores it)
    weight_decay: float = 0.0  # short runs of small CNNs do not overfit enough to need it; 5e-4 for CIFAR + SGD
    schedule: str = "onecycle"  # Wong et al.'s cyclic rate: fastest to a good model in a fixed budget
    eps_warmup_epochs: float = 0.0  # ramp ε from 0 over this many epochs; 0: full ε from the start, as the papers
    co_threshold: float = 0.1  # stop when val PGD accuracy falls this far below its best epoch's (see catastrophic_overfitting); 1: never
    seed: int = 0  # initialization, data order and random starts all derive from it: same seed, same weights
    train_size: int | None = None  # train on the first N training images only (quick experiments); None: all
    val_size: int = 1000  # training images held out for the per-epoch checks (Rice et al. hold out 1,000)
    check_examples: int = 1000  # val images attacked each epoch (capped at val_size): ±1.5 points of noise
    check_steps: int = 10  # PGD-10 for the per-epoch check: stronger than a training attack, still cheap
    data_dir: str | None = None  # where the data set files are, if not in the default places

    def __post_init__(self) -> None:
        _check_types(self)
        canonical = {
            "dataset": get_info(self.dataset).name,
            "model": self.model.strip().lower().replace("-", "_"),
            "method": self.method.strip().lower(),
            "optimizer": self.optimizer.strip().lower(),
            "schedule": self.schedule.strip().lower(),
        }
        for key, value in canonical.items():
            object.__setattr__(self, key, value)
        for key, known in (("method", METHODS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                           ("model", list_models())):
            if getattr(self, key) not in known:
                raise AdvlabError(f"unknown {key} {getattr(self, key)!r}; choose one of: {', '.join(sorted(known))}")
        check_range("eps", self.eps, 0.0, 1.0)
        if self.alpha is not None:
            check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("beta", self.beta, 0.0)
        check_range("momentum", self.momentum, 0.0, 0.999999)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("co_threshold", self.co_threshold, 0.0, 1.0)
        check_range("eps_warmup_epochs", self.eps_warmup_epochs, 0.0, float(self.epochs))
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise AdvlabError(f"lr must be a positive number, got {self.lr!r}")
        for key in ("steps", "replays", "epochs", "batch_size", "val_size", "check_examples", "check_steps"):
            if getattr(self, key) < 1:
                raise AdvlabError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.train_size is not None and self.train_size < 1:
            raise AdvlabError(f"train_size must be at least 1 (or left out for all), got {self.train_size}")
        if self.seed < 0:
            raise AdvlabError(f"seed must be a non-negative integer, got {self.seed}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise AdvlabError(f"unknown training settings: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def step_size(self) -> float | None:
        """α in pixel units: the given one, else the method's default (None for standard training)."""
        method = METHODS[self.method]
        if not method.adversarial:
            return self.alpha
        return self.alpha if self.alpha is not None else method.default_alpha(self.eps, self.steps)

    @property
    def passes(self) -> int:
        """Passes over the training set: ``epochs``, or ⌈epochs / replays⌉ for free AT (each pass does m)."""
        return math.ceil(self.epochs / self.replays) if self.method == "free" else self.epochs

    def resolved(self) -> TrainConfig:
        """This config with α filled in: what the run folder records and what a resume must match."""
        return dataclasses.replace(self, alpha=self.step_size)


def _check_types(config: TrainConfig) -> None:
    """One clear line for a wrongly typed setting (a TOML string where a number belongs, say)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        ok = any(
            (value is None if kind is type(None) else
             isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
             isinstance(value, int) and not isinstance(value, bool) if kind is int else
             isinstance(value, kind))
            for kind in allowed
        )
        if not ok:
            wanted = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
            raise AdvlabError(f"training setting {f.name} must be {wanted}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise AdvlabError(f"training setting {f.name} must be finite, got {value!r}")
    # Floats stay floats (a TOML `eps = 0` is an int): config.json then compares equal on resume.
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if float in (typing.get_args(hints[f.name]) or (hints[f.name],)) and isinstance(value, int):
            object.__setattr__(config, f.name, float(value))


def load_config(source: str | Path | None = None, *, preset: str | None = None) -> TrainConfig:
    """Read a :class:`TrainConfig` from a TOML file (a ``[train]`` table, or top-level keys), a shipped
    preset (``preset="quick"``), or a run folder / its ``config.json`` (to resume or repeat a run)."""
    if (source is None) == (preset is None):
        raise AdvlabError("give either a training config file or a preset name, not both or neither")
    if preset is not None:
        return _from_toml(preset_text("train", preset), f"preset {preset!r}")
    path = Path(source)
    if path.is_dir() or path.suffix == ".json":
        saved = read_json(path / "config.json" if path.is_dir() else path)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise AdvlabError(f"{path} is not an advlab training config.json (no 'config' table)")
        return TrainConfig.from_dict(saved["config"])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdvlabError(f"training config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AdvlabError(f"cannot read {path}: {err}") from None
    return _from_toml(text, str(path))


def _from_toml(text: str, where: str) -> TrainConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AdvlabError(f"{where} is not a valid TOML file: {err}") from None
    values = raw["train"] if isinstance(raw.get("train"), dict) else raw
    return TrainConfig.from_dict(values)
