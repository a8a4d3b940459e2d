"""The attack registry: each attack declares its name pattern, defaults and label where it is defined.

An attack function registers itself with :func:`register_attack`; :func:`parse_attack` turns a name
from the command line or a config into an :class:`AttackSpec`, a fully specified attack whose step size
scales with ε, for evaluations over an ε grid::

    spec = parse_attack("pgd50x10-l2-margin")     # PGD, 50 steps, 10 restarts, L2, margin loss
    x_adv = spec(model, x, y, eps=1.5)
    spec.label, spec.hyperparameters(1.5)         # "PGD-50×10 L2 margin", {...every setting...}

Names: ``NAME[COUNTS][-MODIFIER...][:KEY=VALUE,...]``. The counts are the attack's own (``pgd50x10``: 50 steps, 10
restarts); the modifiers are shared: a norm (``-linf``, ``-l2``), a loss (``-ce``, ``-margin`` or its alias ``-cw``)
and ``-targeted`` (in an evaluation: every other class in turn) or ``-targetedK`` (the K most likely wrong classes);
the parameters after ``:`` are the attack's own, declared with type, default and check by its kind (``cw:c=0.1``,
``deepfool-linf:overshoot=0.05``), spelt as ``--defense NAME:KEY=VALUE``. A minimum-norm attack (FAB, FMN, C&W,
DeepFool) also gives each example's smallest adversarial (:meth:`AttackSpec.minimal`). Nothing here dispatches on
an attack's name: what differs between attacks is data in their :class:`AttackKind`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn

from advlab.attacks.adaptive import straight_through
from advlab.attacks.loop import LOSSES
from advlab.attacks.minimum_norm import AttackParameter, MinimalPerturbation
from advlab.attacks.threat import NORM_LABELS, NORMS
from advlab.errors import AdvlabError, check_range

AttackFn = Callable[..., torch.Tensor]
MinimalFn = Callable[..., MinimalPerturbation]


@dataclass(frozen=True)
class AttackKind:
    """What the registry knows of one attack function."""

    name: str  # the key: "pgd"
    function: AttackFn  # called as function(model, x, y, eps=..., norm=..., loss=..., targeted=..., **options)
    title: str  # the label's first word: "PGD"
    summary: str  # one line for --help and docs
    counts: str = ""  # regex after the name with named groups steps / restarts, e.g. r"(?P<steps>\d+)?"
    syntax: str = ""  # how to spell it, for messages: "pgd[STEPS][xRESTARTS]"; "" means just the name
    default_steps: int = 0  # iterations when the name gives none (0: not iterative)
    step_ratio: Callable[[int], float] | None = None  # α/ε for a number of steps; None: the attack has no step
    options: frozenset[str] = field(default_factory=frozenset)  # of steps, restarts, random_start, alpha,
    # step_ratio, loss (it ascends a loss one can choose) and targeted (it can aim at a class)
    black_box: bool = False  # it never uses gradients (Square): beating the gradient attacks flags masking
    gradient: bool = True  # it follows a gradient (BPDA can replace it); not the random-noise baseline or Square
    fixed_loss: str | None = None  # the loss it always ascends (APGD-DLR: "dlr"); None: the spec's choice
    picks_targets: int = 0  # it aims at this many target classes it picks itself by default (APGD-T: 9)
    min_classes: int = 2  # the fewest classes it works on (DLR needs 3, APGD-T 4)
    fallback: str | None = None  # the attack a suite runs instead on fewer classes (APGD-T: APGD-DLR); None: none
    cross_entropy_twin: str | None = None  # the same attack on cross-entropy (APGD-DLR: APGD-CE), for the checks
    norms: tuple[str, ...] = NORMS  # the threat models it has (C&W: L2 only); the first is its default
    parameters: tuple[AttackParameter, ...] = ()  # its own settings, NAME:key=value
    minimal: MinimalFn | None = None  # like function without eps, loss, targeted, early_stop: a MinimalPerturbation

    def takes(self, option: str) -> bool:
        return option in self.options

    @property
    def minimum_norm(self) -> bool:
        """It looks for each example's smallest adversarial, whatever ε (FAB, FMN, C&W, DeepFool)."""
        return self.minimal is not None

    def parameter(self, name: str) -> AttackParameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        takes = ", ".join(p.name for p in self.parameters) or "none"
        raise AdvlabError(f"attack {self.name} has no parameter {name!r}; it takes: {takes}")


ATTACKS: dict[str, AttackKind] = {}


def register_attack(name: str, **fields: Any) -> Callable[[AttackFn], AttackFn]:
    """Decorator: make the attack function findable by ``name``. ``fields`` are :class:`AttackKind`'s (``title``
    and ``summary`` at least; ``options``, ``norms`` and ``parameters`` as tuples); a misspelt one fails at import."""

    def decorate(function: AttackFn) -> AttackFn:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        kind = AttackKind(name=name, function=function, **fields)
        ATTACKS[name] = replace(
            kind,
            syntax=kind.syntax or name,
            options=frozenset(kind.options),
            gradient=kind.gradient and not kind.black_box,
            norms=tuple(kind.norms),
            parameters=tuple(kind.parameters),
        )
        return function

    return decorate


def get_attack_kind(name: str) -> AttackKind:
    try:
        return ATTACKS[name]
    except KeyError:
        raise AdvlabError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS))}") from None


_OPTION_WORDS = {
    "random_start": "random start",
    "step_ratio": "step size",
    "loss": "choice of loss",
    "targeted": "target classes",
    "eot": "EOT (it averages no gradients)",
}


@dataclass(frozen=True)
class AttackSpec:
    """A named, fully specified attack whose step size scales with ε (α = step_ratio·ε).

    Options left at None take the attack's defaults (PGD: 20 steps, 1 start, a random start, α = 2.5ε/steps
    as Madry et al.); an option the attack does not take must stay at its neutral value. ``params`` holds the
    attack's own parameters (:class:`AttackParameter`), given as a mapping and kept as sorted (key, value)
    pairs of those that differ from the default, so that two specs of the same attack compare equal.
    """

    name: str = "pgd"  # a key of ATTACKS
    norm: str | None = None  # None: the attack's first threat model (L∞, the paper's tables; C&W: L2)
    steps: int | None = None  # None: the attack's default (PGD-20: the usual budget for small models)
    restarts: int | None = None  # more restarts only ever strengthen the attack (per-example best is kept)
    step_ratio: float | None = None  # α = step_ratio·ε; None: the attack's rule (2.5/steps for PGD)
    random_start: bool | None = None  # None: the attack's default (Madry et al.: start inside the ball)
    loss: str = "ce"  # a key of advlab.attacks.loop.LOSSES
    targeted: bool = False  # in an evaluation: attack each of the `targets` most likely wrong classes
    targets: int | None = None  # with targeted: how many classes to try; None: every other class
    eot: int = 1  # passes averaged per gradient (Expectation over Transformation, for randomized models)
    bpda: bool = False  # the model's preprocessing passes the gradient straight through (Athalye et al. 2018)
    params: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()  # NAME:key=value; () all defaults

    def __post_init__(self) -> None:
        kind = get_attack_kind(self.name)
        if self.norm is None:
            object.__setattr__(self, "norm", kind.norms[0])
        if self.norm not in NORMS:
            raise AdvlabError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if self.norm not in kind.norms:
            words = " and ".join(NORM_LABELS[norm] for norm in kind.norms)
            raise AdvlabError(f"attack {self.name} works in {words} only, not {NORM_LABELS[self.norm]} ({self.norm})")
        object.__setattr__(self, "params", _given_parameters(kind, self.params, self.norm))
        if self.loss not in LOSSES:
            raise AdvlabError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        neutral = {
            "steps": kind.default_steps,
            "restarts": 1,
            "random_start": False,
            "step_ratio": None,
            "loss": "ce",
            "targeted": False,
            "eot": 1,
        }
        for option, value in neutral.items():
            given = getattr(self, option)
            if not kind.takes(option) and given is not None and given != value:
                raise AdvlabError(f"attack {self.name} takes no {_OPTION_WORDS.get(option, option)} (got {given!r})")
        resolved = {
            "steps": kind.default_steps if self.steps is None else self.steps,
            "restarts": 1 if self.restarts is None else self.restarts,
            "random_start": kind.takes("random_start") if self.random_start is None else self.random_start,
        }
        for key, value in resolved.items():
            object.__setattr__(self, key, value)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or (kind.takes("steps") and self.steps < 1):
            raise AdvlabError(f"steps must be an integer of at least 1, got {self.steps!r}")
        if not isinstance(self.random_start, bool):
            raise AdvlabError(f"random_start must be true or false, got {self.random_start!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise AdvlabError(f"restarts must be an integer of at least 1, got {self.restarts!r}")
        if self.step_ratio is not None:
            check_range("step size ratio", self.step_ratio, 0.0)
        if isinstance(self.eot, bool) or not isinstance(self.eot, int) or self.eot < 1:
            raise AdvlabError(f"eot must be an integer of at least 1, got {self.eot!r}")
        if not isinstance(self.bpda, bool) or (self.bpda and not kind.gradient):
            raise AdvlabError(
                f"BPDA approximates a gradient, and {self.name} uses none; use it with fgsm, pgd or apgd attacks"
            )
        if self.targets is not None and (not (self.targeted or kind.takes("targets")) or self.targets < 1):
            raise AdvlabError(f"targets must be at least 1 and needs a targeted attack, got {self.targets!r}")

    @property
    def kind(self) -> AttackKind:
        return ATTACKS[self.name]

    def parameter_values(self) -> dict[str, Any]:
        """Every parameter of the attack (:attr:`AttackKind.parameters`), the given ones or the defaults."""
        given = dict(self.params)
        return {p.name: given.get(p.name, p.default_for(self.norm)) for p in self.kind.parameters}

    @property
    def label(self) -> str:
        """Short display name, e.g. ``PGD-50×10 L∞``, ``FGSM L2``, ``PGD-20 L∞ top-3 targeted margin``."""
        kind = self.kind
        text = kind.title + (f"-{self.steps}" if kind.counts and kind.takes("steps") else "")
        text += f"×{self.restarts}" if self.restarts > 1 else ""
        text += f" {NORM_LABELS[self.norm]}"
        if self.targeted:
            text += f" top-{self.targets} targeted" if self.targets else " targeted"
        elif self.targets:  # an attack that picks its own targets (APGD-T): how many it tries
            text += f" top-{self.targets}"
        return (
            text
            + (f" {self.loss}" if self.loss != "ce" else "")
            + (f" EOT-{self.eot}" if self.eot > 1 else "")
            + (" BPDA" if self.bpda else "")
            + (" " + ",".join(f"{key}={value:g}" for key, value in self.params) if self.params else "")
        )

    def alpha(self, eps: float) -> float | None:
        """The step size at ``eps`` in pixel units; None for an attack without steps."""
        if self.step_ratio is not None:
            return self.step_ratio * eps
        rule = self.kind.step_ratio
        return None if rule is None else rule(self.steps) * eps

    def to_dict(self) -> dict:
        data = {**asdict(self), "params": dict(self.params)}
        return data if self.params else {k: v for k, v in data.items() if k != "params"}  # as before parameters

    def hyperparameters(self, eps: float) -> dict:
        """Everything needed to rerun this attack at ``eps``: for reports and metrics files."""
        return {
            "attack": self.name,
            "norm": self.norm,
            "eps": eps,
            "alpha": self.alpha(eps),
            "steps": self.steps,
            "restarts": self.restarts,
            "random_start": self.random_start,
            "loss": self.kind.fixed_loss or self.loss,
            "targeted": self.targeted or bool(self.kind.picks_targets),
            **({"targets": self.targets or "all others"} if self.targeted else {}),
            **({"targets": self.targets or self.kind.picks_targets} if self.kind.picks_targets else {}),
            **({"eot": self.eot} if self.eot > 1 else {}),
            **({"bpda": True} if self.bpda else {}),
            **({"minimum_norm": True} if self.kind.minimum_norm else {}),
            **self.parameter_values(),
        }

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        generator: torch.Generator | None = None,
        early_stop: bool = False,
        channels_last: bool = True,
        draws: int = 1,
    ) -> torch.Tensor:
        """Attack ``x`` (labels ``y``, or with ``targeted`` the target labels) at ``eps``. ``draws`` > 1: the
        model is randomized, and an attack that decides success (which restart, iterate or query to keep,
        when to stop) judges it over that many passes (an attack that decides nothing ignores it)."""
        kind = self.kind
        settings = {
            "alpha": self.alpha(eps),
            "steps": self.steps,
            "restarts": self.restarts,
            "random_start": self.random_start,
            "eot": self.eot,
        }
        if self.targets is not None and not self.targeted:
            settings["targets"] = self.targets  # an attack that picks its own targets: how many
        options = {key: value for key, value in settings.items() if kind.takes(key)}
        if draws > 1 and kind.takes("draws"):
            options["draws"] = draws
        run = dict(eps=eps, norm=self.norm, targeted=self.targeted, loss=self.loss, generator=generator, **options)
        run.update(early_stop=early_stop, channels_last=channels_last)
        with straight_through(model, self.bpda):
            return kind.function(model, x, y, **run, **self.parameter_values())

    def minimal(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        channels_last: bool = True,
    ) -> MinimalPerturbation:
        """Each example's smallest adversarial this minimum-norm attack finds (labels ``y``): one run gives the
        robust accuracy at every ε (:meth:`MinimalPerturbation.curve`); PGD, APGD or Square: an AdvlabError."""
        kind = self.kind
        if kind.minimal is None:
            choices = ", ".join(name for name, other in ATTACKS.items() if other.minimum_norm)
            raise AdvlabError(f"attack {self.name} is not a minimum-norm attack; minimal() needs one of: {choices}")
        settings = {"steps": self.steps, "restarts": self.restarts, "targets": self.targets}
        options = {key: value for key, value in settings.items() if kind.takes(key) and value is not None}
        run = dict(norm=self.norm, generator=generator, channels_last=channels_last, **options)
        with straight_through(model, self.bpda):
            return kind.minimal(model, x, y, **run, **self.parameter_values())


def _given_parameters(kind: AttackKind, params: Any, norm: str) -> tuple[tuple[str, Any], ...]:
    """``params`` (a mapping or pairs) read and checked by the kind's declarations: sorted pairs that differ
    from the defaults in ``norm``."""
    given: dict[str, Any] = {}
    for key, value in params.items() if isinstance(params, Mapping) else params:
        key = str(key).strip().replace("-", "_")
        if key in given:
            raise AdvlabError(f"attack {kind.name} gives its parameter {key} twice")
        given[key] = kind.parameter(key).read(value, kind.name)
    return tuple(sorted((k, v) for k, v in given.items() if v != kind.parameter(k).default_for(norm)))


_MODIFIERS = r"(?P<modifiers>(?:-[a-z0-9]+)*)"
_NORM_WORDS = {"linf": "linf", "l2": "l2"}
_LOSS_WORDS = {"ce": "ce", "margin": "margin", "cw": "margin", "dlr": "dlr"}
_COUNTED = {"targeted": re.compile(r"targeted(\d*)"), "eot": re.compile(r"eot(\d+)"), "top": re.compile(r"top(\d+)")}
_WORDS = {"bpda": ("bpda", True)}


def attack_syntax() -> str:
    """How every registered attack is spelled, for messages: ``pgd[STEPS][xRESTARTS], fgsm, noise``."""
    return ", ".join(kind.syntax for kind in ATTACKS.values())


def _modifier(word: str) -> tuple[str | None, Any]:
    """One modifier word as (setting, value): ``l2`` is ("norm", "l2"), ``targeted3`` ("targeted", 3)."""
    if word in _NORM_WORDS or word in _LOSS_WORDS:
        return ("norm", word) if word in _NORM_WORDS else ("loss", _LOSS_WORDS[word])
    for key, pattern in _COUNTED.items():
        if match := pattern.fullmatch(word):
            return key, int(match[1] or 0)
    return _WORDS.get(word, (None, None))


def _parse_parameters(text: str, kind: AttackKind, original: str) -> tuple[tuple[str, str], ...]:
    """``c=0.1,kappa=5`` into (("c", "0.1"), ("kappa", "5")): read and checked by :class:`AttackSpec`."""
    parts = [part.partition("=") for part in filter(None, (part.strip() for part in text.split(",")))]
    if any(not sep or not key.strip() for key, sep, _ in parts):
        example = f"{kind.name}:{kind.parameters[0].name}=..." if kind.parameters else kind.name
        raise AdvlabError(f"attack {original!r}: write its parameters as key=value, e.g. {example}")
    return tuple((key, value) for key, _, value in parts)


def parse_attack(text: str, *, norm: str | None = None, step_ratio: float | None = None) -> AttackSpec:
    """Parse ``fgsm``, ``noise``, ``pgd``, ``pgd50``, ``pgd-50x10``, ``pgd20-l2-margin``, ``cw:c=0.1`` into an
    :class:`AttackSpec`.

    ``norm`` is the default threat model where the name does not give one (then the attack's first: L∞, or
    L2 for C&W); ``step_ratio`` (α / ε) is given to an attack that takes a step size and ignored by one that
    has none (FGSM steps ε, APGD and Square adapt).
    """
    clean, _, parameters = str(text).strip().lower().replace("∞", "inf").partition(":")
    for kind in sorted(ATTACKS.values(), key=lambda kind: -len(kind.name)):  # fab-t before fab with "-t"
        match = re.fullmatch(re.escape(kind.name) + kind.counts + _MODIFIERS, clean.strip())
        if match:
            break
    else:
        raise AdvlabError(
            f"unknown attack {text!r}; known: {attack_syntax()} (e.g. pgd50x10), each optionally "
            "with -l2 or -linf, -margin or -ce, -targeted, and its own :key=value parameters"
        )
    counts = {key: int(value) for key, value in match.groupdict().items() if key != "modifiers" and value}
    settings: dict = {"norm": None, "loss": None, "targeted": None, "eot": None, "top": None, "bpda": None}
    for word in filter(None, match["modifiers"].split("-")):
        key, value = _modifier(word)
        if key is None:
            raise AdvlabError(
                f"unknown attack option -{word} in {text!r}; use -linf, -l2, -ce, -margin, -dlr, "
                "-targeted, -eotK, -bpda or (apgd-t, fab-t, fmn-t) -topK"
            )
        if settings[key] is not None:
            raise AdvlabError(f"attack {text!r} gives its {key} twice")
        settings[key] = value
    targeted, top = settings["targeted"], settings["top"]
    if top is not None and not kind.takes("targets"):
        raise AdvlabError(
            f"attack {text!r}: -top{top} is for an attack that picks its own targets (apgd-t, fab-t, fmn-t); "
            "use -targeted{top} to try the most likely wrong classes in turn"
        )
    if top == 0:
        raise AdvlabError(f"attack {text!r}: -top0 aims at no class; use -topK with K of at least 1")
    return AttackSpec(
        name=kind.name,
        norm=settings["norm"] or norm or kind.norms[0],
        loss=settings["loss"] or "ce",
        targeted=targeted is not None,
        targets=targeted or top or None,
        eot=1 if settings["eot"] is None else settings["eot"],
        step_ratio=step_ratio if kind.takes("step_ratio") else None,
        bpda=bool(settings["bpda"]),
        params=_parse_parameters(parameters, kind, text),
        **counts,
    )
