"""Standard and adversarial training in one loop, into a run folder that survives interruptions.

Methods (``TrainConfig.method``): ``standard``; ``fgsm`` (fast AT, Wong et al. 2020); ``pgd`` (Madry et
al. 2018); ``trades`` (Zhang et al. 2019); ``mart`` (Wang et al. 2020); ``free`` (Shafahi et al. 2019).
Each is a small object in :data:`METHODS` that turns a batch into a loss; the loop never asks which one
it runs. Every inner maximization goes through :func:`advlab.attacks.perturb`.

Python::

    from advlab.train import TrainConfig, train
    summary = train(TrainConfig(method="pgd", eps=0.1, steps=7, epochs=10), "runs/pgd")

Command line: ``advlab train --method pgd --eps 0.1 --epochs 10 --out runs/pgd``; ``--config recipe.toml``
reads a ``[train]`` table; ``--resume`` continues an interrupted run from its last completed epoch.

The run folder: ``config.json`` (resolved config, versions), ``model.safetensors`` (last good weights),
``best.safetensors`` (highest validation PGD accuracy: Rice et al.'s answer to robust overfitting; highest
clean accuracy for standard training), each
with a ``.json`` record; ``metrics.jsonl`` and ``metrics.csv`` (one row per epoch); ``state.safetensors``
(weights, optimizer, RNG and method state for ``--resume``); ``summary.json``. Nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
import tomllib
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks import AttackSpec, channels_last_weights, perturb
from advlab.errors import AdvlabError, check_range
from advlab.runs import (atomic_write_text, load_tensors, prepare_run_dir, read_json, save_checkpoint,
                         save_tensors, versions, write_json)

STATE_FORMAT = 1  # bump when state.safetensors' layout changes incompatibly
# Settings that may differ between an interrupted run and its resumption: they do not change the result.
RESUME_FREE_KEYS = frozenset({"data_dir"})


class CatastrophicOverfittingWarning(UserWarning):
    """Validation PGD accuracy collapsed during training; the run stopped and kept the last good weights."""


# ---------------------------------------------------------------------------------------------- methods


class BatchOutput(NamedTuple):
    loss: torch.Tensor  # scalar training loss of the batch
    clean_logits: torch.Tensor | None  # logits on x, when the method computes them anyway
    adv_logits: torch.Tensor | None  # logits on the adversarial (or perturbed) batch, when it has one


Step = Callable[[torch.Tensor], None]  # backward + optimizer step for one loss


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _kl_from_clean(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(x) ‖ p(x')), with ``logits`` = f(x') and ``clean_probs`` = p(x)."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="none").sum(dim=1)


class Method:
    """One training method: the loss of a batch. Subclasses set the class fields and write ``loss``.

    All inner attacks run in the model's training mode, as in Wong et al.'s and Rice et al.'s code:
    the attack then sees the very function the loss is taken on (BatchNorm batch statistics included),
    and no mode switch costs time. For small_cnn, madry_cnn and linear the two modes are the same
    function; only preact_resnet18 (BatchNorm) differs, where the attack's passes also feed its running
    statistics, as they do in those reference implementations.
    """

    name = ""
    adversarial = True  # trains against an attack: the catastrophic-overfitting guard applies

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return 2.5 * eps / steps  # Madry et al.: 2.5ε/steps reaches the ball's edge from any start

    @property
    def optimizer_steps_per_batch(self) -> int:
        return 1

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
             generator: torch.Generator) -> BatchOutput:
        raise NotImplementedError

    def train_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                    generator: torch.Generator, step: Step) -> BatchOutput:
        out = self.loss(model, x, y, eps=eps, alpha=alpha, generator=generator)
        step(out.loss)
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that must survive a resume (free AT's carried perturbation)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class Standard(Method):
    """Empirical risk minimization: cross-entropy on clean images."""

    name = "standard"
    adversarial = False

    def loss(self, model, x, y, *, eps, alpha, generator):
        logits = model(x)
        return BatchOutput(F.cross_entropy(logits, y), logits, None)


class PGDTraining(Method):
    """Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (arXiv:1706.06083):
    cross-entropy on PGD examples (random start in the ε-ball, ``steps`` signed-gradient steps)."""

    name = "pgd"

    def attack_steps(self) -> int:
        return self.config.steps

    def loss(self, model, x, y, *, eps, alpha, generator):
        x_adv = perturb(model, x, y, eps=eps, alpha=alpha, steps=self.attack_steps(),
                        random_start=self.config.random_start, objective=_cross_entropy, generator=generator)
        logits = model(x_adv)
        return BatchOutput(F.cross_entropy(logits, y), None, logits)


class FastFGSM(PGDTraining):
    """Wong, Rice & Kolter 2020, "Fast is better than free: Revisiting adversarial training"
    (arXiv:2001.03994): one FGSM step of α = 1.25ε from a uniform random start in the ε-ball."""

    name = "fgsm"

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return 1.25 * eps  # Wong et al.'s choice; α ≥ 2ε invites catastrophic overfitting

    def attack_steps(self) -> int:
        return 1


class TRADES(Method):
    """Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy"
    (arXiv:1901.08573): CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximizing the KL term by PGD from
    x + 0.001·N(0, I). The gradient flows through both f(x) and f(x') of the outer KL, as in the paper."""

    name = "trades"

    def loss(self, model, x, y, *, eps, alpha, generator):
        logits = model(x)
        clean_probs = logits.detach().softmax(dim=1)
        # The KL term has zero gradient at x' = x, hence the paper's tiny Gaussian start. `perturb` starts
        # at its centre, so we centre it at that start and project onto the true ball around x at the
        # end: the inner iterates' box is shifted by the 0.001-sized noise, ~1% of ε, nothing more.
        start = x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = perturb(model, start, clean_probs, eps=eps, alpha=alpha, steps=self.config.steps,
                        random_start=False, objective=_kl_from_clean, generator=generator)
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        adv_logits = model(x_adv)
        robust = F.kl_div(F.log_softmax(adv_logits, dim=1), logits.softmax(dim=1), reduction="batchmean")
        return BatchOutput(F.cross_entropy(logits, y) + self.config.beta * robust, logits, adv_logits)


class MART(Method):
    """Wang et al. 2020 (ICLR), "Improving Adversarial Robustness Requires Revisiting Misclassified
    Examples": BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − p_y(x)), x' from PGD on cross-entropy.
    BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x')) boosts the margin against the strongest wrong class;
    the weight 1 − p_y(x) puts the KL term on examples the model gets wrong (gradient flows through it)."""

    name = "mart"

    def loss(self, model, x, y, *, eps, alpha, generator):
        x_adv = perturb(model, x, y, eps=eps, alpha=alpha, steps=self.config.steps,
                        random_start=self.config.random_start, objective=_cross_entropy, generator=generator)
        logits, adv_logits = model(x), model(x_adv)
        adv_probs = adv_logits.softmax(dim=1)
        strongest_wrong = adv_probs.scatter(1, y[:, None], 0.0).amax(dim=1)
        # The 1.0001 and 1e-12 keep the log finite, as in the authors' code.
        bce = F.cross_entropy(adv_logits, y) - torch.log(1.0001 - strongest_wrong + 1e-12).mean()
        clean_probs = logits.softmax(dim=1)
        kl = (clean_probs * (torch.log(clean_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(dim=1)
        true_prob = clean_probs.gather(1, y[:, None]).squeeze(1)
        return BatchOutput(bce + self.config.beta * (kl * (1.0000001 - true_prob)).mean(), logits, adv_logits)


class FreeAT(Method):
    """Shafahi et al. 2019, "Adversarial Training for Free!" (arXiv:1904.12843): each minibatch is
    replayed m times; one backward pass gives the weights' gradient (an optimizer step) and the input's
    (an FGSM step of α = ε on the perturbation δ, clipped to the ε-ball). δ is carried over replays,
    minibatches and epochs; the input x + δ is clipped to [0, 1], as in the authors' code. Metrics are
    those of each batch's last replay."""

    name = "free"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.delta: torch.Tensor | None = None  # (batch_size, C, H, W), created at the first batch

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return eps  # the paper's FGSM step: the whole ε

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.config.replays

    def train_batch(self, model, x, y, *, eps, alpha, generator, step):
        if self.delta is None:
            self.delta = torch.zeros((self.config.batch_size, *x.shape[1:]), device=x.device, dtype=x.dtype)
        n = x.shape[0]  # a short last batch uses the first n rows of δ
        for _ in range(self.config.replays):
            delta = self.delta[:n].clone().requires_grad_(True)
            logits = model((x + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(logits, y)
            step(loss)  # fills delta.grad from the same backward pass
            self.delta[:n] = (delta.detach() + alpha * delta.grad.sign()).clamp(-eps, eps)
        return BatchOutput(loss.detach(), None, logits.detach())

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.delta is None else {"delta": self.delta}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.delta = tensors.get("delta")


METHODS: dict[str, type[Method]] = {m.name: m for m in (Standard, FastFGSM, PGDTraining, TRADES, MART, FreeAT)}


# --------------------------------------------------------------------------- optimizers and schedules


def _sgd(params: Iterable[torch.Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _adam(params: Iterable[torch.Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable[torch.Tensor], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam}

# Learning-rate factor as a function of training progress t ∈ (0, 1] (fraction of optimizer steps done).
SCHEDULES: dict[str, Callable[[float], float]] = {
    # Wong et al.'s cyclic schedule: linear from 0 to the peak at 40% of training, then linear to 0.
    "onecycle": lambda t: t / 0.4 if t <= 0.4 else max(0.0, (1.0 - t) / 0.6),
    # Madry et al. / Rice et al.: ×0.1 at half of training and again at three quarters.
    "piecewise": lambda t: 1.0 if t <= 0.5 else 0.1 if t <= 0.75 else 0.01,
    "constant": lambda t: 1.0,
}


# ----------------------------------------------------------------------------------------------- config


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
        from advlab.data import get_info
        from advlab.models import list_models

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


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a TOML file (a ``[train]`` table, or top-level keys), or from a
    run folder / its ``config.json`` (to resume or repeat a run)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".json":
        saved = read_json(path / "config.json" if path.is_dir() else path)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise AdvlabError(f"{path} is not an advlab training config.json (no 'config' table)")
        return TrainConfig.from_dict(saved["config"])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdvlabError(f"training config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise AdvlabError(f"{path} is not a valid TOML file: {err}") from None
    values = raw["train"] if isinstance(raw.get("train"), dict) else raw
    return TrainConfig.from_dict(values)


# ------------------------------------------------------------------------------------------------ guards


def catastrophic_overfitting(best_robust: float | None, robust: float, threshold: float) -> bool:
    """Wong et al.'s early-stopping rule, against the best epoch so far instead of the previous one.

    Fast FGSM training that overfits catastrophically gains FGSM accuracy while its PGD accuracy falls.
    On CIFAR-10 the fall is sudden; on Fashion-MNIST it is gradual (FGSM training from x at ε = 0.2:
    validation PGD-10 accuracy 41% → 31% → 22% over six epochs while training accuracy rose from 54% to
    73%), so a fall of more than ``threshold`` (0.1 = 10 points) below the best epoch marks it. That is
    far beyond the ±1.5 points of noise on 1,000 validation images, and beyond robust overfitting
    (Rice et al.), which costs a few points over many epochs."""
    return best_robust is not None and best_robust - robust > threshold


# ------------------------------------------------------------------------------------------------ train

METRIC_FIELDS = ("epoch", "lr", "eps", "train_loss", "train_clean_acc", "train_adv_acc", "val_clean_acc",
                 "val_robust_acc", "seconds", "val_seconds")


@dataclass
class _Progress:
    """What a resume restores besides tensors; stored as JSON in state.safetensors' metadata."""

    epoch: int = 0  # completed passes
    step: int = 0  # optimizer steps done
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_robust: float | None = None  # the best epoch's score: val PGD accuracy (val clean for standard)
    last_good_epoch: int | None = None  # the epoch whose weights model.safetensors holds
    collapse: dict[str, Any] | None = None  # set when the catastrophic-overfitting guard fired

    @property
    def finished(self) -> bool:
        return self.collapse is not None


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out`` and return a summary (also saved as summary.json).

    ``resume`` continues from the last completed epoch (refusing a folder holding another config);
    ``overwrite`` lets a new run replace an old one's files; ``stop_after_epochs`` ends this call after
    that many epochs, as an interruption would. Everything is checked before the first batch.
    """
    config = config.resolved()
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise AdvlabError(f"stop_after_epochs must be at least 0, got {stop_after_epochs}")
    out = prepare_run_dir(out, overwrite=overwrite, resume=resume, resume_option="--resume")
    saved_state = _read_state(out) if resume else None
    if resume:
        _check_same_config(out, config, saved_state)
    else:
        for name in ("state.safetensors", "best.safetensors", "best.json", "summary.json"):
            (out / name).unlink(missing_ok=True)  # an overwritten run's files must not pass for this run's
    device = torch.device(device) if device is not None else torch.device("cpu")

    from advlab.data import get_info, load_dataset

    info = get_info(config.dataset)
    train_data = load_dataset(config.dataset, "train", data_dir=config.data_dir, val_size=config.val_size,
                              progress=progress)
    if config.train_size is not None:
        train_data = train_data.subset(config.train_size)
    val_data = load_dataset(config.dataset, "val", data_dir=config.data_dir, val_size=config.val_size,
                            progress=progress)
    check_data = val_data.subset(min(config.check_examples, len(val_data)))
    model, model_args = _build_model(config, info, device)
    method = METHODS[config.method](config)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config)
    # Separate generators, so that shuffling and attacks draw the same numbers however the other is used.
    shuffle_rng = torch.Generator().manual_seed(config.seed)
    attack_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    run = _Progress()
    if saved_state is not None:
        run = _restore(saved_state, model, optimizer, method, shuffle_rng, attack_rng)
    if not (out / "config.json").is_file() or not resume:
        write_json(out / "config.json", {"config": config.to_dict(), "passes": config.passes,
                                         "model_args": model_args, "versions": versions()})
    record = {"model": config.model, "model_args": model_args, "dataset": info.name,
              "normalization": {"mean": list(info.mean), "std": list(info.std)}, "config": config.to_dict()}
    log = _logger(progress)
    if saved_state is not None:
        log(f"resuming {out} after epoch {run.epoch}/{config.passes}" if not run.finished or run.epoch < config.passes
            else f"{out} is already complete")

    steps_per_pass = math.ceil(len(train_data) / config.batch_size) * method.optimizer_steps_per_batch
    total_steps = steps_per_pass * config.passes
    epochs_this_call = 0
    while run.epoch < config.passes and not run.finished:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        epoch = run.epoch + 1
        start = time.perf_counter()
        stats = _train_epoch(model, method, optimizer, train_data, config, run, total_steps, shuffle_rng,
                             attack_rng, device, progress, f"epoch {epoch}/{config.passes}")
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        val_clean, val_robust = _validate(model, val_data, check_data, config, device)
        row = {"epoch": epoch, **stats, "val_clean_acc": val_clean, "val_robust_acc": val_robust,
               "seconds": seconds, "val_seconds": time.perf_counter() - start}
        run.rows.append(row)
        run.epoch = epoch
        log(_epoch_line(row, config))
        collapsed = method.adversarial and catastrophic_overfitting(run.best_robust, val_robust, config.co_threshold)
        if collapsed:
            message = (f"catastrophic overfitting at epoch {epoch}: validation PGD-{config.check_steps} accuracy "
                       f"fell to {100 * val_robust:.1f}% from a best of {100 * run.best_robust:.1f}% "
                       f"(epoch {run.best_epoch}); stopped, model.safetensors keeps epoch {run.last_good_epoch}")
            run.collapse = {"epoch": epoch, "message": message}
            warnings.warn(message, CatastrophicOverfittingWarning, stacklevel=2)
            log(message)
        else:
            save_checkpoint(out / "model.safetensors", model, {**record, "epoch": epoch, "metrics": row})
            run.last_good_epoch = epoch
            # The best epoch: highest validation PGD accuracy for adversarial training (Rice et al.), highest
            # clean accuracy for standard training (its PGD accuracy is ~0 and would pick an untrained epoch).
            score = val_robust if method.adversarial else val_clean
            if run.best_robust is None or score > run.best_robust:
                run.best_robust, run.best_epoch = score, epoch
                save_checkpoint(out / "best.safetensors", model, {**record, "epoch": epoch, "metrics": row})
        _write_metrics(out, run.rows)
        _write_state(out, config, run, model, optimizer, method, shuffle_rng, attack_rng)  # the commit point
        epochs_this_call += 1
    summary = _summary(out, config, run)
    write_json(out / "summary.json", summary)
    return summary


def _train_epoch(model, method, optimizer, data, config, run, total_steps, shuffle_rng, attack_rng, device,
                 progress, desc) -> dict[str, Any]:
    schedule = SCHEDULES[config.schedule]
    warmup_steps = config.eps_warmup_epochs / config.epochs * total_steps
    lr = config.lr

    def step(loss: torch.Tensor) -> None:
        nonlocal lr
        lr = config.lr * schedule((run.step + 1) / total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1

    model.train()
    fast_layout = _use_channels_last(model, device)
    loss_sum = torch.zeros((), device=device)
    clean_correct = torch.zeros((), device=device, dtype=torch.long)
    adv_correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    clean_seen = adv_seen = False
    eps = config.eps
    bar = _bar(len(data), progress, desc)
    for i, (x, y) in enumerate(data.batches(config.batch_size, shuffle=True, generator=shuffle_rng, device=device)):
        if fast_layout:
            x = x.to(memory_format=torch.channels_last)
        eps = config.eps * min(1.0, (run.step + 1) / warmup_steps) if warmup_steps > 0 else config.eps
        alpha = (config.step_size or 0.0) * (eps / config.eps if config.eps > 0 else 1.0)  # α scales with ε
        out = method.train_batch(model, x, y, eps=eps, alpha=alpha, generator=attack_rng, step=step)
        n = y.shape[0]
        seen += n
        loss_sum += out.loss.detach() * n
        if out.clean_logits is not None:
            clean_seen = True
            clean_correct += (out.clean_logits.detach().argmax(1) == y).sum()
        if out.adv_logits is not None:
            adv_seen = True
            adv_correct += (out.adv_logits.detach().argmax(1) == y).sum()
        bar.update(n)
        if progress and i % 20 == 0:
            shown = adv_correct if adv_seen else clean_correct
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * shown.item() / seen:.1f}%")
    bar.close()
    seen = max(seen, 1)
    return {"lr": lr, "eps": eps, "train_loss": loss_sum.item() / seen,
            "train_clean_acc": clean_correct.item() / seen if clean_seen else None,
            "train_adv_acc": adv_correct.item() / seen if adv_seen else None}


def _use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Keep the convolution weights of a CPU model in channels-last layout for training; True if it does.

    oneDNN's CPU convolutions are faster in NHWC, above all the input-gradient passes of the attacks
    (measured in benchmarks/bench_train.py). Only the layout changes: values, and so results, are those
    of the default layout up to float summation order; checkpoints are saved contiguous as ever.
    """
    weights = channels_last_weights(model, device)
    for p in weights:
        p.data = p.data.to(memory_format=torch.channels_last)
    return bool(weights)


def _validate(model, val_data, check_data, config, device) -> tuple[float, float]:
    """Clean accuracy on the validation split and PGD accuracy on its first ``check_examples``."""
    from advlab.evaluate import clean_accuracy, evaluate

    attack = AttackSpec("pgd", steps=config.check_steps)
    clean = clean_accuracy(model, val_data, device=device)
    # The same seed every epoch: the same random starts, so epochs are compared on equal terms.
    result = evaluate(model, check_data, attacks=[attack], eps=[config.eps], seed=config.seed, device=device,
                      progress=False)
    return clean, result.robust[attack.label][0]


def _build_model(config: TrainConfig, info, device) -> tuple[nn.Module, dict[str, Any]]:
    """The model, initialized from the seed without touching the global RNG, and the arguments that rebuild it."""
    from advlab.models import create_model

    # The data set's name lets create_model fill in what some networks need (linear: the image size);
    # the explicit values keep the checkpoint's normalization and shape even if the registry changes.
    args: dict[str, Any] = {"dataset": info.name, "in_channels": info.channels, "num_classes": len(info.classes),
                            "mean": list(info.mean), "std": list(info.std)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(config.model, **args)
    return model.to(device), args


# ---------------------------------------------------------------------------------------------- files


def _write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    atomic_write_text(out / "metrics.csv", text.getvalue())


def _write_state(out, config, run, model, optimizer, method, shuffle_rng, attack_rng) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    tensors.update({f"method.{k}": v for k, v in method.state().items()})
    tensors["rng.shuffle"] = shuffle_rng.get_state()
    tensors["rng.attack"] = attack_rng.get_state()
    meta = {"format": STATE_FORMAT, "config": config.to_dict(), "progress": dataclasses.asdict(run),
            "param_groups": optim["param_groups"], "optimizer_plain_state": plain_state}
    save_tensors(out / "state.safetensors", tensors, metadata={"advlab_state": json.dumps(meta)})


def _read_state(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    path = out / "state.safetensors"
    if not path.is_file():
        return None
    tensors, metadata = load_tensors(path)
    try:
        meta = json.loads(metadata["advlab_state"])
        if meta["format"] != STATE_FORMAT:
            raise KeyError("format")
    except (KeyError, TypeError, json.JSONDecodeError):
        raise AdvlabError(f"{path} is not a training state advlab can resume; start afresh with --overwrite") from None
    return tensors, meta


def _check_same_config(out: Path, config: TrainConfig, state) -> None:
    if state is not None:
        saved = state[1]["config"]
    elif (out / "config.json").is_file():
        saved = read_json(out / "config.json").get("config", {})
    else:
        return  # nothing there yet: a resume of a run that never started is a fresh start
    current = config.to_dict()
    differing = sorted(k for k in set(saved) | set(current)
                       if k not in RESUME_FREE_KEYS and saved.get(k, "<missing>") != current.get(k, "<missing>"))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in differing)
        raise AdvlabError(f"cannot resume {out}: it holds a run with other settings ({details}); "
                          "use the same settings, --overwrite, or another --out")


def _restore(state, model, optimizer, method, shuffle_rng, attack_rng) -> _Progress:
    tensors, meta = state
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        optim_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        for index, values in meta["optimizer_plain_state"].items():
            optim_state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        method.load_state({k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")})
        shuffle_rng.set_state(tensors["rng.shuffle"])
        attack_rng.set_state(tensors["rng.attack"])
        return _Progress(**meta["progress"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise AdvlabError(f"the saved training state does not fit this run ({str(err).splitlines()[0]}); "
                          "start afresh with --overwrite") from None


def _summary(out: Path, config: TrainConfig, run: _Progress) -> dict[str, Any]:
    by_epoch = {row["epoch"]: row for row in run.rows}
    last = by_epoch.get(run.last_good_epoch, {})
    best = by_epoch.get(run.best_epoch, {})
    return {
        "run_dir": str(out), "method": config.method,
        "epochs_completed": run.epoch, "epochs_planned": config.passes,
        "finished": run.finished or run.epoch >= config.passes,
        "final_epoch": run.last_good_epoch, "best_epoch": run.best_epoch,
        "val_clean_accuracy": last.get("val_clean_acc"), "val_robust_accuracy": last.get("val_robust_acc"),
        "best_val_clean_accuracy": best.get("val_clean_acc"), "best_val_robust_accuracy": best.get("val_robust_acc"),
        "check_attack": f"PGD-{config.check_steps}", "eps": config.eps,
        "seconds": sum(row["seconds"] + row["val_seconds"] for row in run.rows),
        "catastrophic_overfitting": run.collapse is not None,
        "catastrophic_overfitting_message": run.collapse["message"] if run.collapse else None,
        "paths": {name: str(out / f"{name}.safetensors") for name in ("model", "best", "state")
                  if (out / f"{name}.safetensors").is_file()},
    }


# ---------------------------------------------------------------------------------------------- output


def _epoch_line(row: dict[str, Any], config: TrainConfig) -> str:
    train_acc = row["train_adv_acc"] if row["train_adv_acc"] is not None else row["train_clean_acc"]
    return (f"epoch {row['epoch']}/{config.passes}  loss {row['train_loss']:.3f}  train {100 * train_acc:.1f}%  "
            f"val clean {100 * row['val_clean_acc']:.1f}%  val PGD-{config.check_steps} "
            f"{100 * row['val_robust_acc']:.1f}%  {row['seconds']:.1f} s")


def _logger(enabled: bool) -> Callable[[str], None]:
    from tqdm.auto import tqdm

    def log(line: str) -> None:
        if enabled:
            tqdm.write(line, file=sys.stderr)

    return log


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, dynamic_ncols=True)
