"""One check for everything advlab reads back: values against a dataclass's type hints, refused naming the field.

Configs (:class:`advlab.train.TrainConfig`, :class:`advlab.study.StudyConfig`), checkpoint records
(:class:`CheckpointRecord`), training states (:class:`advlab.train.state.RunProgress`, the mid-epoch
:class:`advlab.train.preempt.EpochProgress`) declare their fields with types; :func:`check_fields` checks a
dict read from a file against them before any of it is used, and raises one :class:`AdvlabError` that names
the file, the field, the value and what is allowed::

    check_fields(values, TrainConfig, what="training setting")

Understood hints: ``int``, ``float`` (an int is accepted), ``str``, ``bool``, ``None`` unions,
``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, ``Any`` and nested dataclasses. A float must be finite.
The ranges a type cannot say are each class's own ``__post_init__`` checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from advlab.errors import AdvlabError


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "none"
    if hint is Any:
        return "anything"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (isinstance(value, int) or math.isfinite(value)))
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    if origin is dict:
        item = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, item) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # checked field by field by check_fields
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker does not know: the class's own checks decide


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(values: Any, cls, *, what: str, where: str = "", known_only: bool = True) -> dict[str, Any]:
    """``values`` (a dict read from a file) against the fields of dataclass ``cls``: unknown keys (with
    ``known_only``) and wrongly typed values are refused with one line, ``where`` (a file) first. Nested
    dataclass fields are checked too. Returns ``values``."""
    prefix = f"{where}: " if where else ""
    if not isinstance(values, dict):
        raise AdvlabError(f"{prefix}{what} must be a table of settings, got {values!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if known_only:
        unknown = sorted(set(values) - names)
        if unknown:
            raise AdvlabError(f"{prefix}unknown {what}s: {', '.join(map(str, unknown))}; known: {', '.join(sorted(names))}")
    for f in dataclasses.fields(cls):
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise AdvlabError(f"{prefix}{what} {f.name} is missing")
            continue
        value, hint = values[f.name], hints[f.name]
        if not _fits(value, hint):
            raise AdvlabError(f"{prefix}{what} {f.name} must be {_describe(hint)}, got {value!r}")
        if dataclasses.is_dataclass(hint):
            check_fields(value, hint, what=f"{what} {f.name}:", where=where, known_only=known_only)
    return values


@dataclass(frozen=True)
class ModelArgs:
    """A checkpoint record's ``model_args``: what :func:`advlab.models.create_model` is called with."""

    dataset: str | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    height: int | None = None  # the linear model's image size
    width: int | None = None
    width_factor: int | None = None
    hidden: int | None = None

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "height", "width", "hidden"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AdvlabError(f"model_args {name} must be at least 1, got {value}")


@dataclass(frozen=True)
class CheckpointRecord:
    """The JSON record inside every advlab checkpoint (and in ``NAME.json`` beside it)."""

    model: str
    model_args: dict[str, Any]
    format: int | None = None
    dataset: str | None = None
    normalization: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    epoch: int | None = None
    step: int | None = None
    partial_epoch: bool | None = None
    metrics: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_record(record: Any, where: str) -> dict[str, Any]:
    """A checkpoint's record, checked: its fields' types, and ``model_args``' known fields and ranges
    (other ``model_args`` go to the model's constructor, which refuses what it does not take)."""
    check_fields(record, CheckpointRecord, what="record field", where=where, known_only=False)
    args = record["model_args"]
    known = {f.name for f in dataclasses.fields(ModelArgs)}
    check_fields({k: v for k, v in args.items() if k in known}, ModelArgs, what="model_args", where=where)
    try:
        ModelArgs(**{k: v for k, v in args.items() if k in known})
    except AdvlabError as err:
        raise AdvlabError(f"{where}: {err}") from None
    return record


__all__ = ["CheckpointRecord", "ModelArgs", "check_fields", "check_record"]
