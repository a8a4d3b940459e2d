"""The settings of one training run: a frozen :class:`TrainConfig`, every default with its reason.

Loaded from TOML (a ``[train]`` table), from a shipped preset, or from a run folder's ``config.json``::

    config = load_config("recipe.toml")         # or load_config(preset="quick"), load_config("runs/pgd")
    config = TrainConfig.from_dict({**config.to_dict(), "epochs": 20})

Settings left out (``None``) come from the recipe of the data set and method
(:mod:`advlab.train.recipes`): ``TrainConfig(dataset="mnist", method="fgsm", eps=0.3)`` trains Wong et al.'s
MNIST network their way. To change the data set or method of a resolved config, start again from the
values you chose (:func:`config_values`), not from ``to_dict()``, whose recipe settings are filled in.

Command line: ``advlab train --config recipe.toml`` or ``--preset quick``; flags override the file.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from advlab.data import get_info
from advlab.data.augment import AUGMENTATIONS
from advlab.errors import AdvlabError, check_range
from advlab.files import read_json
from advlab.models import list_models
from advlab.presets import preset_text
from advlab.schema import check_fields
from advlab.train.methods import METHODS
from advlab.train.optim import OPTIMIZERS, SCHEDULES
from advlab.train.recipes import RECIPE_KEYS, find_recipe

REMEDIES = ("stop", "smaller-step", "fallback")  # what the catastrophic-overfitting guard does when it fires


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run does; saved, resolved, as ``config.json`` in the run folder."""

    dataset: str = "fashion-mnist"  # offline on every machine here; 28×28 images train in minutes on a CPU
    method: str = "standard"  # the baseline every robust method is compared with
    eps: float = 0.1  # L∞ budget in pixel units: the usual Fashion-MNIST ε (MNIST's 0.3 is far too big here)
    # None below: the recipe of this data set and method decides (advlab.train.recipes, with sources).
    model: str | None = None  # fashion-mnist: small_cnn; mnist: wong_mnist or madry_cnn; cifar10: preact_resnet18
    alpha: float | None = (
        None  # attack step; None: the recipe's, else the method's (fgsm 1.25ε, nfgsm ε, pgd 2.5ε/steps)
    )
    steps: int | None = None  # inner PGD steps of pgd/trades/mart: 7 (Madry's CIFAR PGD-7), 40 on MNIST, 10 on CIFAR
    random_start: bool = True  # uniform start in the ε-ball (Madry; Wong et al.: what keeps fast FGSM from collapsing)
    # Clip that start to [0, 1] before the first gradient? None: the recipe's, as each paper's code does (Wong
    # et al.'s MNIST FGSM does not; their CIFAR-10 code, de Jorge et al.'s N-FGSM and Madry et al.'s PGD do).
    clip_start: bool | None = None
    beta: float = 6.0  # TRADES' 1/λ = 6, the paper's robust setting; MART uses 5-6 too
    replays: int = 4  # free AT's m: the paper's 4-10; free runs ⌈epochs / m⌉ passes, the same gradient work
    nfgsm_noise: float = 2.0  # N-FGSM's k: noise from the kε cube (de Jorge et al.: k = 2 up to ε = 8/255 on CIFAR)
    grad_align_lambda: float | None = None  # GradAlign's λ; None: the recipe's (CIFAR-10: 0.02·10^(ε·255/8))
    lam: float = 1.0  # gradreg's λ on ‖∇ₓ CE‖² (Ross & Doshi-Velez 2018; not yet tuned here: a first guess)
    kappa_end: float = 0.5  # ibp: the clean loss's weight κ falls from 1 to this as ε ramps up (Gowal et al. 0.5)
    # ibp, crown-ibp: the ε the bounds train at, above eps; None: the recipe's (MNIST: 0.2 for ε ≤ 0.2, else 0.4;
    # CIFAR-10: 1.1 ε, as Gowal et al. and Zhang et al.), else eps itself
    train_eps: float | None = None
    sigma: float = 0.25  # gaussian: the noise's standard deviation (Cohen et al. 2019 train at 0.12-1.0)
    epochs: int | None = None  # fashion-mnist 10 (small_cnn converges with one-cycle), mnist 10 (Wong), cifar10 15-200
    batch_size: int | None = None  # 128 (Madry, Wong, Rice on CIFAR); Wong's MNIST 100, Madry's MNIST 50
    optimizer: str | None = None  # adam for the small CNNs (Wong et al.'s MNIST setting), sgd for CIFAR-10 ResNets
    lr: float | None = None  # peak learning rate: 0.002 measured best for small_cnn; each paper's own elsewhere
    momentum: float | None = None  # SGD momentum of every paper above, 0.9 (Adam ignores it)
    weight_decay: float | None = None  # 0 for short runs of small CNNs; 5e-4 for CIFAR-10 + SGD
    schedule: str | None = None  # onecycle (Wong et al.'s cyclic rate, peak at 2/5); triangle, piecewise, constant
    eps_warmup_epochs: float | None = (
        None  # ramp ε from 0 over this many epochs; 0: full ε from the start, as the papers
    )
    clean_epochs: float | None = None  # ε = 0 for this many epochs before the ramp (ibp's warm-up; else 0)
    augment: str | None = None  # none; crop-flip (4-pixel padded random crop + flip: the CIFAR-10 papers' pipeline)
    co_gap: float = 0.3  # the collapse signature: FGSM accuracy above PGD accuracy on the same val images by this much
    co_threshold: float = (
        0.1  # a fall: val PGD accuracy this far below its best epoch's (±1.5 points of noise); 1: never
    )
    # Checks in a row that must show the collapse before the guard fires: one bad check is noise or the dip at the
    # learning rate's peak (MNIST at ε = 0.3 shows both on its way to robustness); 3 at 100 steps apart is 300 steps.
    co_patience: int = 3
    co_check_every: int = (
        100  # optimizer steps between checks within an epoch (collapse can take a few hundred); 0: per epoch only
    )
    co_check_examples: int = 256  # val images of the within-epoch check (±6 points of noise, far below co_gap)
    # On collapse: stop; smaller-step (halve α and go on); fallback (go on with fallback_method). None: the recipe's
    # (fallback where fast methods are known to collapse: Fashion-MNIST at ε ≥ 0.25, MNIST at ε = 0.3), else stop.
    co_remedy: str | None = None
    fallback_method: str = "pgd"  # the method co_remedy = "fallback" switches to: multi-step PGD does not collapse
    seed: int = 0  # initialization, data order and random starts all derive from it: same seed, same weights
    train_size: int | None = None  # train on the first N training images only (quick experiments); None: all
    val_size: int = 1000  # training images held out for the per-epoch checks (Rice et al. hold out 1,000)
    check_examples: int = 1000  # val images attacked each epoch (capped at val_size): ±1.5 points of noise
    check_steps: int = 10  # PGD-10 for the per-epoch check: stronger than a training attack, still cheap
    data_dir: str | None = None  # where the data set files are, if not in the default places
    recipe: str | None = None  # filled in (a given value is replaced): the recipe the None settings came from

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "dataset", get_info(self.dataset).name)
        object.__setattr__(self, "method", self.method.strip().lower())
        if self.method not in METHODS:
            raise AdvlabError(f"unknown method {self.method!r}; choose one of: {', '.join(sorted(METHODS))}")
        check_range("eps", self.eps, 0.0, 1.0)
        recipe = find_recipe(self.dataset, self.method, METHODS[self.method].base_settings)
        defaults = recipe.values(self.eps)
        from_recipe = [key for key in RECIPE_KEYS if getattr(self, key) is None]
        for key in from_recipe:
            object.__setattr__(self, key, defaults[key])
        if "alpha" in from_recipe and "steps" not in from_recipe:
            object.__setattr__(self, "alpha", None)  # a recipe's α fits its own step count: the method's rule then
        if "eps_warmup_epochs" in from_recipe:  # a recipe's ramp takes at most half of a short run
            object.__setattr__(self, "eps_warmup_epochs", min(float(self.eps_warmup_epochs), self.epochs / 2))
        if "clean_epochs" in from_recipe:  # and its clean warm-up at most what the ramp leaves
            object.__setattr__(
                self, "clean_epochs", min(float(self.clean_epochs), self.epochs - self.eps_warmup_epochs)
            )
        object.__setattr__(self, "recipe", recipe.name)
        _check_types(self)  # a recipe's int where a float belongs becomes a float, as from TOML
        canonical = {
            "model": self.model.strip().lower().replace("-", "_"),
            "optimizer": self.optimizer.strip().lower(),
            "schedule": self.schedule.strip().lower(),
            "co_remedy": self.co_remedy.strip().lower(),
            "augment": self.augment.strip().lower(),
            "fallback_method": self.fallback_method.strip().lower(),
        }
        for key, value in canonical.items():
            object.__setattr__(self, key, value)
        for key, known in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("model", list_models()),
            ("co_remedy", REMEDIES),
            ("fallback_method", METHODS),
            ("augment", AUGMENTATIONS),
        ):
            if getattr(self, key) not in known:
                raise AdvlabError(
                    f"unknown {key.replace('_', ' ')} {getattr(self, key)!r}; choose one of: {', '.join(sorted(known))}"
                )
        replays = METHODS[self.method].replays_batches or METHODS[self.fallback_method].replays_batches
        if replays and self.co_remedy == "fallback":
            if "co_remedy" in from_recipe:  # a recipe's fallback, for the fast methods that can take it
                object.__setattr__(self, "co_remedy", "smaller-step")
            else:
                raise AdvlabError(
                    "free adversarial training cannot be a fallback or fall back: its schedule counts "
                    "m optimizer steps per batch; use co_remedy stop or smaller-step with it"
                )
        if not METHODS[self.fallback_method].adversarial:
            raise AdvlabError(f"fallback_method must be an adversarial method, not {self.fallback_method!r}")
        if self.alpha is not None:
            check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("beta", self.beta, 0.0)
        check_range("momentum", self.momentum, 0.0, 0.999999)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("co_threshold", self.co_threshold, 0.0, 1.0)
        check_range("co_gap", self.co_gap, 0.0, 1.0)
        check_range("eps_warmup_epochs", self.eps_warmup_epochs, 0.0, float(self.epochs))
        check_range("lam (gradreg's λ)", self.lam, 0.0)
        check_range("kappa_end (ibp's final clean-loss weight)", self.kappa_end, 0.0, 1.0)
        check_range("clean_epochs", self.clean_epochs, 0.0, float(self.epochs) - self.eps_warmup_epochs)
        if self.train_eps is not None:
            check_range("train_eps (ibp's training ε)", self.train_eps, self.eps, 1.0)
        if not self.sigma > 0:
            raise AdvlabError(f"sigma (gaussian's noise level) must be above 0, got {self.sigma!r}")
        if METHODS[self.method].bounds is not None:
            _check_boundable(self)
        if not self.grad_align_lambda >= 0:
            raise AdvlabError(f"grad_align_lambda (GradAlign's λ) must be at least 0, got {self.grad_align_lambda!r}")
        if not self.nfgsm_noise > 0:
            raise AdvlabError(f"nfgsm_noise (N-FGSM's noise multiplier k) must be above 0, got {self.nfgsm_noise!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise AdvlabError(f"lr must be a positive number, got {self.lr!r}")
        for key in (
            "steps",
            "replays",
            "epochs",
            "batch_size",
            "val_size",
            "check_examples",
            "check_steps",
            "co_check_examples",
            "co_patience",
        ):
            if getattr(self, key) < 1:
                raise AdvlabError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.co_check_every < 0:
            raise AdvlabError(f"co_check_every must be at least 0 (0: check once per epoch), got {self.co_check_every}")
        if self.train_size is not None and self.train_size < 1:
            raise AdvlabError(f"train_size must be at least 1 (or left out for all), got {self.train_size}")
        if not 0 <= self.seed <= 2**63 - 1:
            raise AdvlabError(f"seed must be an integer from 0 to 2^63 - 1, got {self.seed}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        check_fields(values, cls, what="training setting")
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


def _check_boundable(config: TrainConfig) -> None:
    """Certified training needs a model its bounds go through: refused before any work (PreActResNet-18's
    residual blocks for both, pooling layers for CROWN-IBP)."""
    import torch

    from advlab.certify import margin_bounds
    from advlab.data import get_info
    from advlab.models import create_model

    info = get_info(config.dataset)
    try:
        model = create_model(config.model, dataset=config.dataset).eval()
        x = torch.zeros(1, info.channels, info.height, info.width)
        margin_bounds(model, x, torch.zeros(1, dtype=torch.long), 0.0, method=METHODS[config.method].bounds)
    except AdvlabError as err:
        raise AdvlabError(f"--method {config.method} cannot train {config.model}: {err}") from None


def _check_types(config: TrainConfig) -> None:
    """One clear line for a wrongly typed setting (a TOML string where a number belongs, say)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        ok = any(
            (
                value is None
                if kind is type(None)
                else isinstance(value, (int, float)) and not isinstance(value, bool)
                if kind is float
                else isinstance(value, int) and not isinstance(value, bool)
                if kind is int
                else isinstance(value, kind)
            )
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
    return TrainConfig.from_dict(config_values(source, preset=preset))


def config_values(source: str | Path | None = None, *, preset: str | None = None) -> dict[str, Any]:
    """The settings a TOML file or preset gives, as written (recipe settings it leaves out stay out), or a
    run folder's resolved settings: what flags are laid over before a :class:`TrainConfig` is built."""
    if (source is None) == (preset is None):
        raise AdvlabError("give either a training config file or a preset name, not both or neither")
    if preset is not None:
        return _toml_values(preset_text("train", preset), f"preset {preset!r}")
    path = Path(source)
    if path.is_dir() or path.suffix == ".json":
        saved = read_json(path / "config.json" if path.is_dir() else path)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise AdvlabError(f"{path} is not an advlab training config.json (no 'config' table)")
        return dict(saved["config"])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdvlabError(f"training config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AdvlabError(f"cannot read {path}: {err}") from None
    return _toml_values(text, str(path))


def _toml_values(text: str, where: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AdvlabError(f"{where} is not a valid TOML file: {err}") from None
    values = raw["train"] if isinstance(raw.get("train"), dict) else raw
    return dict(values)
