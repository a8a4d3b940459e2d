"""Training methods: each turns a batch into a loss, and registers itself by name for ``--method``.

The methods live by concern: :mod:`~advlab.train.methods.natural` (``standard``; ``gradreg``, input-gradient
regularization, Ross & Doshi-Velez 2018; ``gaussian``, noise training for randomized smoothing, Cohen et al.
2019), :mod:`~advlab.train.methods.adversarial` (``fgsm``, fast AT, Wong et al. 2020; ``nfgsm``, de Jorge et
al. 2022; ``gradalign``, Andriushchenko & Flammarion 2020; ``pgd``, Madry et al. 2018; ``trades``, Zhang et
al. 2019; ``mart``, Wang et al. 2020; ``free``, Shafahi et al. 2019) and
:mod:`~advlab.train.methods.certified` (``ibp``, Gowal et al. 2018; ``crown-ibp``, Zhang et al. 2020). The
training loop never asks which one it runs, and every inner maximization goes through the attacks' one
gradient loop, :func:`advlab.attacks.perturb`, except N-FGSM's one unprojected step.

A new method is a subclass of :class:`Method` with a ``name``, decorated with :func:`register_method`, in
one file: its own settings are :class:`Setting` declarations in ``settings`` (their defaults with the reason,
their checks and their help), which ``TrainConfig``, the TOML configs and ``advlab train --help`` take from
here (docs/architecture.md has a worked example)::

    @register_method
    class Noisy(Method):
        # cross-entropy on x plus uniform noise of amplitude `noise` (in pixels)
        name = "noisy"
        adversarial = False
        settings = (Setting("noise", float, 0.1, "a tenth of the pixel range", "the noise's amplitude", low=0.0),)

        def loss(self, model, x, y, *, eps, alpha, generator):
            logits = model(x + self.config.option("noise") * torch.rand_like(x))
            return BatchOutput(F.cross_entropy(logits, y), logits, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from advlab.attacks.gradient import madry_alpha
from advlab.errors import AdvlabError, check_range


class BatchOutput(NamedTuple):
    loss: torch.Tensor  # scalar training loss of the batch
    clean_logits: torch.Tensor | None  # logits on x, when the method computes them anyway
    adv_logits: torch.Tensor | None  # logits on the adversarial (or perturbed) batch, when it has one


Step = Callable[[torch.Tensor], None]  # backward + optimizer step for one loss


@dataclass(frozen=True)
class Setting:
    """A setting of a training method's own: a key of configs and ``config.json``, a ``--flag`` of ``advlab
    train``, read by the method as ``self.config.option(name)``. ``default`` None: the recipe of the data set
    decides (:mod:`advlab.train.recipes`). ``low``/``high``: the allowed range (``low`` excluded when
    ``above``); ``at_least_eps``: the value may not be below the training ε."""

    name: str
    kind: type  # float, int, bool or str
    default: Any
    why: str  # why the default is what it is
    help: str  # what the setting does, for --help
    low: float | None = None
    high: float | None = None
    above: bool = False
    at_least_eps: bool = False

    def check(self, value: Any, eps: float) -> Any:
        """``value`` as this setting's type, or one clear AdvlabError naming the setting."""
        if value is None:
            if self.default is None:
                return None
            raise AdvlabError(f"training setting {self.name} must be a {self.kind.__name__}, got None")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = (
            numeric
            if self.kind is float
            else isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool))
        )
        if not ok:
            raise AdvlabError(f"training setting {self.name} must be a {self.kind.__name__}, got {value!r}")
        value = float(value) if self.kind is float else value
        if self.low is not None and self.above and not value > self.low:
            raise AdvlabError(f"{self.name} ({self.help}) must be above {self.low:g}, got {value!r}")
        low = max(self.low if self.low is not None else eps, eps) if self.at_least_eps else self.low
        check_range(f"{self.name} ({self.help})", value, low, self.high)
        return value


METHODS: dict[str, type[Method]] = {}


def register_method(method: type[Method]) -> type[Method]:
    """Class decorator: make a training method available by its ``name`` (``--method NAME``, configs)."""
    if not method.name or method.name in METHODS:
        raise ValueError(f"training method {method.name!r} has no name or is registered twice")
    if method.family not in FAMILIES:
        raise ValueError(f"training method {method.name!r} has family {method.family!r}, not one of {FAMILIES}")
    for setting in method.settings:
        other = declared_settings().get(setting.name)
        if other is not None and other != setting:
            raise ValueError(f"method {method.name!r} declares setting {setting.name!r} unlike another method")
    METHODS[method.name] = method
    return method


def declared_settings() -> dict[str, Setting]:
    """Every registered method's own settings, by name (methods may share one: TRADES' and MART's β)."""
    return {setting.name: setting for method in METHODS.values() for setting in method.settings}


FAMILIES = ("natural", "single-step", "multi-step", "certified")  # what a Method's family may be


def method_help() -> str:
    """The methods for ``--method``'s help, family by family: each name and a few words."""
    ordered = sorted(METHODS.values(), key=lambda m: FAMILIES.index(m.family) if m.family in FAMILIES else 99)
    return "; ".join(f"{method.name} ({method.summary})" for method in ordered)


class Method:
    """One training method: the loss of a batch. Subclasses set the class fields and write ``loss``.

    All inner attacks run in the model's training mode, as in Wong et al.'s and Rice et al.'s code:
    the attack then sees the very function the loss is taken on (BatchNorm batch statistics included),
    and no mode switch costs time. For small_cnn, madry_cnn and linear the two modes are the same
    function; only preact_resnet18 (BatchNorm) differs, where the attack's passes also feed its running
    statistics, as they do in those reference implementations. ``config`` is a
    :class:`~advlab.train.config.TrainConfig`; a method reads its own settings with ``config.option(name)``.
    """

    name = ""
    summary = ""  # a few words for --help
    # Which recipes fit it (advlab.train.recipes: a data set's recipe names families, or single methods):
    # natural (no attack), single-step, multi-step or certified.
    family = "natural"
    adversarial = True  # trains against an attack: the catastrophic-overfitting guard applies
    robust = True  # aims at robustness: the best epoch is the one with the highest validation PGD accuracy
    replays_batches = False  # each batch takes several optimizer steps (free AT): it cannot fall back or be one
    bounds: str | None = None  # certified training: the bounds it trains (and is checked) with, "ibp" or "crown-ibp"
    # Settings the method cannot work without, for a data set no recipe names it on (IBP's ε ramp, say).
    base_settings: dict[str, Any] = {}
    settings: tuple[Setting, ...] = ()  # its own settings (see Setting)

    def __init__(self, config: Any) -> None:
        self.config = config

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return madry_alpha(eps, steps)

    @classmethod
    def passes(cls, config: Any) -> int:
        """Passes over the training set for ``config.epochs`` epochs' worth of gradient work (free AT: fewer)."""
        return config.epochs

    @property
    def optimizer_steps_per_batch(self) -> int:
        return 1

    def loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        alpha: float,
        generator: torch.Generator,
    ) -> BatchOutput:
        raise NotImplementedError

    def train_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        alpha: float,
        generator: torch.Generator,
        step: Step,
    ) -> BatchOutput:
        out = self.loss(model, x, y, eps=eps, alpha=alpha, generator=generator)
        step(out.loss)
        return out

    def smoothing_sigma(self) -> float | None:
        """The noise a model trained this way is smoothed with (randomized smoothing's σ), if it is one."""
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that must survive a resume (free AT's carried perturbation)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass
