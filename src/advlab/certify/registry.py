"""The certifier registry: each certifier declares its name, its options and how to say its result.

A certifier is a function ``run(model, x, y, *, options, classes, batch_size, seed, device, progress) ->
dict`` (the result's fields for ``advlab certify``'s JSON) decorated with :func:`register_certifier`. Its
options (``--eps``; ``--sigma``, ``--n``, ...) are :class:`Option` declarations, which ``advlab certify``
turns into flags and checks; ``describe`` makes the one line the command prints. A certifier that proves
L∞ robustness example by example also gives ``flags(model, data, eps, device) -> BoolTensor``: the study's
``verifier`` setting picks one of those; its result names the examples it proved (``verified_images``,
indices), which ``advlab certify --cross-check`` attacks: an attack that breaks one shows an unsound bound.
Adding one touches one file (docs/architecture.md has an example)::

    @register_certifier("interval", summary="...", options=(EPS,), describe=lambda r: "...",
                        flags=my_flags)
    def interval(model, x, y, *, options, classes, batch_size, seed, device, progress): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from advlab.errors import AdvlabError, check_range


@dataclass(frozen=True)
class Option:
    """A certifier's option: ``--NAME`` on ``advlab certify``. ``default`` None and ``required``: it must
    be given; None otherwise: the certifier fills it in (smoothing's σ from the model's training)."""

    name: str
    kind: type  # float or int
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    required: bool = False

    def check(self, value: Any) -> Any:
        if value is None:
            return None
        value = self.kind(value)
        if self.low is not None:
            check_range(f"--{self.name.replace('_', '-')}", value, self.low, self.high)
        return value


@dataclass(frozen=True)
class Certifier:
    """What the registry knows of one certifier."""

    name: str
    run: Callable[..., dict]
    summary: str  # a few words for --help
    options: tuple[Option, ...]
    describe: Callable[[dict], str]  # the one line ``advlab certify`` prints for a result
    default_images: int | None = None  # how many images by default (None: all); CERTIFY costs n passes each
    flags: Callable[..., torch.Tensor] | None = None  # per-example L∞ verification, for the study's verifier
    validate: Callable[[dict[str, Any]], None] | None = None  # the options' checks together (one error each)

    def settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """The options of this certifier from ``given`` (flags left out are None), checked; an option it does
        not take, given, is refused in one line."""
        mine = {option.name for option in self.options}
        for name, value in given.items():
            if value is not None and name not in mine:
                takers = [c.name for c in CERTIFIERS.values() if any(o.name == name for o in c.options)]
                raise AdvlabError(f"--{name.replace('_', '-')} is for {' and '.join(takers)}, not {self.name}")
        settings = {}
        for option in self.options:
            value = given.get(option.name)
            value = option.default if value is None else value
            if value is None and option.required:
                raise AdvlabError(f"--method {self.name} needs --{option.name.replace('_', '-')} ({option.help})")
            settings[option.name] = option.check(value)
        if self.validate is not None:
            self.validate(settings)
        return settings


CERTIFIERS: dict[str, Certifier] = {}


def register_certifier(
    name: str,
    *,
    summary: str,
    options: tuple[Option, ...] = (),
    describe: Callable[[dict], str],
    default_images: int | None = None,
    flags: Callable[..., torch.Tensor] | None = None,
    validate: Callable[[dict[str, Any]], None] | None = None,
):
    """Decorator: make ``run`` available as ``advlab certify --method NAME`` (see :class:`Certifier`)."""

    def decorate(run: Callable[..., dict]) -> Callable[..., dict]:
        if name in CERTIFIERS:
            raise ValueError(f"certifier {name!r} is registered twice")
        for option in options:
            others = [o for c in CERTIFIERS.values() for o in c.options if o.name == option.name]
            if any(other != option for other in others):
                raise ValueError(f"certifier {name!r} declares option {option.name!r} unlike another certifier")
        CERTIFIERS[name] = Certifier(name, run, summary, tuple(options), describe, default_images, flags, validate)
        return run

    return decorate


def get_certifier(name: str) -> Certifier:
    if name not in CERTIFIERS:
        raise AdvlabError(f"unknown certify method {name!r}; choose one of: {', '.join(CERTIFIERS)}")
    return CERTIFIERS[name]


def certifier_options() -> dict[str, Option]:
    """Every registered certifier's options, by name (certifiers may share one: the L∞ bounds' ε)."""
    return {option.name: option for certifier in CERTIFIERS.values() for option in certifier.options}


def certifier_help() -> str:
    return "; ".join(f"{name} ({c.summary})" for name, c in CERTIFIERS.items())


__all__ = [
    "CERTIFIERS",
    "Certifier",
    "Option",
    "certifier_help",
    "certifier_options",
    "get_certifier",
    "register_certifier",
]
