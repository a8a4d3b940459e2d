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
from advlab.train.methods import METHODS, declared_settings
from advlab.train.optim import OPTIMIZERS, SCHEDULES
from advlab.train.recipes import RECIPE_KEYS, find_recipe

REMEDIES = ("stop", "smaller-step", "fallback")  # what the catastrophic-overfitting guard does when it fires


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything one training run does; saved, resolved, as ``config.json`` in the run folder.

    Built from keywords, flat: ``TrainConfig(method="trades", eps=0.1, beta=3.0)``. The settings below are
    every method's; a method's own (TRADES' ``beta``, free AT's ``replays``, ...) are declared by the method
    (:class:`advlab.train.methods.Setting`), kept in ``options`` and read with :meth:`option`."""

    dataset: str = "fashion-mnist"  # offline on every machine here; 28×28 images train in minutes on a CPU
    method: str = "standard"  # the baseline every robust method is compared with
    eps: float = 0.1  # L∞ budget in pixel units: the usual Fashion-MNIST ε (MNIST's 0.3 is far too big here)
    # None below: the recipe of this data set and method decides (advlab.train.recipes, with sources).
    model: str | None = None  # fashion-mnist: small_cnn; mnist: wong_mnist or madry_cnn; cifar10: preact_resnet18
    # attack step; None: the recipe's, else the method's (fgsm 1.25ε, nfgsm ε, pgd 2.5ε/steps)
    alpha: float | None = None
    steps: int | None = None  # inner PGD steps of pgd/trades/mart: 7 (Madry's CIFAR PGD-7), 40 on MNIST, 10 on CIFAR
    random_start: bool = True  # uniform start in the ε-ball (Madry; Wong et al.: what keeps fast FGSM from collapsing)
    # Clip that start to [0, 1] before the first gradient? None: the recipe's, as each paper's code does (Wong
    # et al.'s MNIST FGSM does not; their CIFAR-10 code, de Jorge et al.'s N-FGSM and Madry et al.'s PGD do).
    clip_start: bool | None = None
    epochs: int | None = None  # fashion-mnist 10 (small_cnn converges with one-cycle), mnist 10 (Wong), cifar10 15-200
    batch_size: int | None = None  # 128 (Madry, Wong, Rice on CIFAR); Wong's MNIST 100, Madry's MNIST 50
    optimizer: str | None = None  # adam for the small CNNs (Wong et al.'s MNIST setting), sgd for CIFAR-10 ResNets
    lr: float | None = None  # peak learning rate: 0.002 measured best for small_cnn; each paper's own elsewhere
    momentum: float | None = None  # SGD momentum of every paper above, 0.9 (Adam ignores it)
    weight_decay: float | None = None  # 0 for short runs of small CNNs; 5e-4 for CIFAR-10 + SGD
    schedule: str | None = None  # onecycle (Wong et al.'s cyclic rate, peak at 2/5); triangle, piecewise, constant
    # ramp ε from 0 over this many epochs; 0: full ε from the start, as the papers
    eps_warmup_epochs: float | None = None
    clean_epochs: float | None = None  # ε = 0 for this many epochs before the ramp (ibp's warm-up; else 0)
    augment: str | None = None  # none; crop-flip (4-pixel padded random crop + flip: the CIFAR-10 papers' pipeline)
    co_gap: float = 0.3  # the collapse signature: FGSM accuracy above PGD accuracy on the same val images by this much
    # a fall: val PGD accuracy this far below its best epoch's (±1.5 points of noise); 1: never
    co_threshold: float = 0.1
    # Checks in a row that must show the collapse before the guard fires: one bad check is noise or the dip at the
    # learning rate's peak (MNIST at ε = 0.3 shows both on its way to robustness); 3 at 100 steps apart is 300 steps.
    co_patience: int = 3
    # optimizer steps between checks within an epoch (collapse can take a few hundred); 0: per epoch only
    co_check_every: int = 100
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
    # Every method's own settings by name (declared in advlab.train.methods): given ones, the rest their defaults.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        declared = declared_settings()
        options = dict(values.pop("options", None) or {})
        for key in [k for k in values if k not in _FIELDS]:
            if key not in declared:
                raise AdvlabError(
                    f"unknown training setting {key!r}; known: {', '.join(sorted(_FIELDS | set(declared)))}"
                )
            options[key] = values.pop(key)
        for f in dataclasses.fields(self):
            if f.name != "options":
                object.__setattr__(self, f.name, values.get(f.name, f.default))
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise AdvlabError(f"unknown training setting {unknown[0]!r} (no registered method declares it)")
        object.__setattr__(self, "options", {name: options.get(name, s.default) for name, s in declared.items()})
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "dataset", get_info(self.dataset).name)
        object.__setattr__(self, "method", self.method.strip().lower())
        if self.method not in METHODS:
            raise AdvlabError(f"unknown method {self.method!r}; choose one of: {', '.join(sorted(METHODS))}")
        check_range("eps", self.eps, 0.0, 1.0)
        from_recipe = _apply_recipe(self)
        _check_types(self)  # a recipe's int where a float belongs becomes a float, as from TOML
        _canonicalize(self)
        _check_remedy(self, "co_remedy" in from_recipe)
        _check_ranges(self)
        for name, setting in declared_settings().items():
            self.options[name] = setting.check(self.options[name], self.eps)
        if METHODS[self.method].bounds is not None:
            _check_boundable(self)

    def option(self, name: str) -> Any:
        """A method's own setting (declared in :mod:`advlab.train.methods`): ``config.option("beta")``."""
        return self.options[name]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From a flat dict of settings (a TOML table, a run's config.json), every method's own included."""
        values = dict(values)
        options = {k: values.pop(k) for k in list(values) if k in declared_settings() and k not in _FIELDS}
        check_fields(values, cls, what="training setting")
        return cls(**values, options=options)

    def to_dict(self) -> dict[str, Any]:
        """Flat, as config.json and the TOML configs have it: the settings, then every method's own."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**values, **self.options}

    @property
    def step_size(self) -> float | None:
        """α in pixel units: the given one, else the method's default (None for standard training)."""
        method = METHODS[self.method]
        if not method.adversarial:
            return self.alpha
        return self.alpha if self.alpha is not None else method.default_alpha(self.eps, self.steps)

    @property
    def passes(self) -> int:
        """Passes over the training set: ``epochs``, or fewer for a method that replays batches (free AT)."""
        return METHODS[self.method].passes(self)

    def resolved(self) -> TrainConfig:
        """This config with α filled in: what the run folder records and what a resume must match."""
        return dataclasses.replace(self, alpha=self.step_size)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _apply_recipe(config: TrainConfig) -> list[str]:
    """Fill the settings left out (None) from the recipe of the data set and method; the keys it filled."""
    method = METHODS[config.method]
    recipe = find_recipe(config.dataset, config.method, method.family, method.base_settings)
    defaults = recipe.values(config.eps)
    from_recipe = [key for key in RECIPE_KEYS if key in _FIELDS and getattr(config, key) is None]
    for key in from_recipe:
        object.__setattr__(config, key, defaults[key])
    for key in RECIPE_KEYS:  # a method's own setting the recipe decides (GradAlign's λ, IBP's training ε)
        if key not in _FIELDS and config.options.get(key, 0) is None:
            config.options[key] = defaults[key]
    if "alpha" in from_recipe and "steps" not in from_recipe:
        object.__setattr__(config, "alpha", None)  # a recipe's α fits its own step count: the method's rule then
    if "eps_warmup_epochs" in from_recipe:  # a recipe's ramp takes at most half of a short run
        object.__setattr__(config, "eps_warmup_epochs", min(float(config.eps_warmup_epochs), config.epochs / 2))
    if "clean_epochs" in from_recipe:  # and its clean warm-up at most what the ramp leaves
        clean = min(float(config.clean_epochs), config.epochs - config.eps_warmup_epochs)
        object.__setattr__(config, "clean_epochs", clean)
    object.__setattr__(config, "recipe", recipe.name)
    return from_recipe


def _canonicalize(config: TrainConfig) -> None:
    """Names as the registries spell them, each checked against its registry."""
    canonical = {
        "model": config.model.strip().lower().replace("-", "_"),
        "optimizer": config.optimizer.strip().lower(),
        "schedule": config.schedule.strip().lower(),
        "co_remedy": config.co_remedy.strip().lower(),
        "augment": config.augment.strip().lower(),
        "fallback_method": config.fallback_method.strip().lower(),
    }
    for key, value in canonical.items():
        object.__setattr__(config, key, value)
    for key, known in (
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("model", list_models()),
        ("co_remedy", REMEDIES),
        ("fallback_method", METHODS),
        ("augment", AUGMENTATIONS),
    ):
        if getattr(config, key) not in known:
            raise AdvlabError(
                f"unknown {key.replace('_', ' ')} {getattr(config, key)!r}; choose one of: {', '.join(sorted(known))}"
            )


def _check_remedy(config: TrainConfig, from_recipe: bool) -> None:
    """The guard's remedy must fit the methods: a method that replays batches cannot fall back or be one."""
    replays = METHODS[config.method].replays_batches or METHODS[config.fallback_method].replays_batches
    if replays and config.co_remedy == "fallback":
        if not from_recipe:
            raise AdvlabError(
                "free adversarial training cannot be a fallback or fall back: its schedule counts "
                "m optimizer steps per batch; use co_remedy stop or smaller-step with it"
            )
        object.__setattr__(config, "co_remedy", "smaller-step")  # a recipe's fallback is for the other fast methods
    if not METHODS[config.fallback_method].adversarial:
        raise AdvlabError(f"fallback_method must be an adversarial method, not {config.fallback_method!r}")


def _check_ranges(config: TrainConfig) -> None:
    """One clear line for a setting out of its range."""
    if config.alpha is not None:
        check_range("alpha", config.alpha, 0.0, 1.0)
    check_range("momentum", config.momentum, 0.0, 0.999999)
    check_range("weight_decay", config.weight_decay, 0.0)
    check_range("co_threshold", config.co_threshold, 0.0, 1.0)
    check_range("co_gap", config.co_gap, 0.0, 1.0)
    check_range("eps_warmup_epochs", config.eps_warmup_epochs, 0.0, float(config.epochs))
    check_range("clean_epochs", config.clean_epochs, 0.0, float(config.epochs) - config.eps_warmup_epochs)
    if not config.lr > 0 or not math.isfinite(config.lr):
        raise AdvlabError(f"lr must be a positive number, got {config.lr!r}")
    for key in (
        "steps",
        "epochs",
        "batch_size",
        "val_size",
        "check_examples",
        "check_steps",
        "co_check_examples",
        "co_patience",
    ):
        if getattr(config, key) < 1:
            raise AdvlabError(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.co_check_every < 0:
        raise AdvlabError(f"co_check_every must be at least 0 (0: check once per epoch), got {config.co_check_every}")
    if config.train_size is not None and config.train_size < 1:
        raise AdvlabError(f"train_size must be at least 1 (or left out for all), got {config.train_size}")
    if not 0 <= config.seed <= 2**63 - 1:
        raise AdvlabError(f"seed must be an integer from 0 to 2^63 - 1, got {config.seed}")


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
        if f.name == "options":
            continue  # each method's own settings are checked by their declarations
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
        if f.name == "options":
            continue
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
