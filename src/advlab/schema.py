"""One check for everything advlab reads back: values against a dataclass's type hints, refused naming the field.

Configs (:class:`advlab.train.TrainConfig`, :class:`advlab.study.StudyConfig`), checkpoint records
(:class:`CheckpointRecord`), training states (:class:`advlab.train.state.RunProgress`, the mid-epoch
:class:`advlab.train.preempt.EpochProgress`) and the JSON files advlab writes and reads back (a run's
``summary.json``: :class:`RunSummary`; a study's ``eval.json``, ``checks.json`` and ``metrics.json``:
:class:`Evaluation`, :class:`CheckMeasurements`, :class:`StudyMetrics`; ``attack.json``:
:class:`AttackOutput`) declare their fields with types; :func:`check_fields` checks a dict read from a file
against them before any of it is used, and raises one :class:`AdvlabError` that names the file, the field
(by its dotted path), the value and what is allowed::

    check_fields(values, TrainConfig, what="training setting")
    summary = read_checked("runs/x/summary.json", RunSummary)

Understood hints: ``int``, ``float`` (an int is accepted), ``str``, ``bool``, ``None`` unions,
``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, ``Any`` and nested dataclasses (also as the values of a
dict or the items of a list). A float must be finite. The ranges a type cannot say are each class's own
``__post_init__`` checks (and :func:`check_metrics`' one accuracy per ε).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advlab.errors import AdvlabError
from advlab.files import read_json


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
        item = args[0] if args else Any
        inner = [a for a in typing.get_args(item) if a is not type(None)]
        if typing.get_origin(item) in (typing.Union, types.UnionType) and len(inner) == 1:
            return f"a list of {plural.get(inner[0], 'values')} (or null)"
        if dataclasses.is_dataclass(item) or typing.get_origin(item) is dict:
            return "a list of tables"
        return f"a list of {plural.get(item, 'values')}"
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
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (isinstance(value, int) or math.isfinite(value))
        )
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


def check_fields(
    values: Any, cls, *, what: str, where: str = "", known_only: bool = True, _path: str = ""
) -> dict[str, Any]:
    """``values`` (a dict read from a file) against the fields of dataclass ``cls``: unknown keys (with
    ``known_only``) and wrongly typed values are refused with one line, ``where`` (a file) first, the field
    named by its dotted path (``models.pgd.clean_accuracy``). Dataclass fields, and the values of
    ``dict[str, Dataclass]`` and ``list[Dataclass]`` fields, are checked field by field. Returns ``values``."""
    prefix = f"{where}: " if where else ""
    if not isinstance(values, dict):
        at = f" {_path}" if _path else ""
        raise AdvlabError(f"{prefix}{what}{at} must be a table of settings, got {values!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if known_only:
        unknown = sorted(set(values) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise AdvlabError(f"{prefix}unknown {what}s: {', '.join(_path + str(u) for u in unknown)}; known: {known}")
    for f in dataclasses.fields(cls):
        name = f"{_path}{f.name}"
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise AdvlabError(f"{prefix}{what} {name} is missing")
            continue
        value, hint = values[f.name], hints[f.name]
        if not _fits(value, hint):
            raise AdvlabError(f"{prefix}{what} {name} must be {_describe(hint)}, got {_short(value)}")
        _check_inside(value, hint, what=what, where=where, known_only=known_only, path=name)
    return values


def _check_inside(value: Any, hint, *, what: str, where: str, known_only: bool, path: str) -> None:
    """Recurse into the dataclasses a value that fits ``hint`` holds."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is not type(None) and _fits(value, a):
                _check_inside(value, a, what=what, where=where, known_only=known_only, path=path)
                return
    elif dataclasses.is_dataclass(hint):
        check_fields(value, hint, what=what, where=where, known_only=known_only, _path=f"{path}.")
    elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        for key, item in value.items():
            check_fields(item, args[1], what=what, where=where, known_only=known_only, _path=f"{path}.{key}.")
    elif origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        for i, item in enumerate(value):
            check_fields(item, args[0], what=what, where=where, known_only=known_only, _path=f"{path}[{i}].")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    smoothing_sigma: float | None = None  # a model trained with noise: the σ randomized smoothing uses
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


# ------------------------------------------------------------------ the JSON files advlab writes and reads back
# Only the fields advlab reads are declared; others (written for people, or by later versions) pass.


@dataclass(frozen=True)
class RunSummary:
    """A training run's ``summary.json`` (and a study's ``models/NAME/done.json``, the same dict)."""

    finished: bool | None = None
    epochs_completed: int | None = None
    epochs_planned: int | None = None
    seconds: float | None = None
    recipe: str | None = None
    catastrophic_overfitting: bool | None = None
    catastrophic_overfitting_message: str | None = None
    stopped_by_guard: bool | None = None
    warnings: list[str] | None = None  # a model at chance, a run that ends without robustness (train.guard)
    ends_without_robustness: bool | None = None


@dataclass(frozen=True)
class Evaluation:
    """A study's ``models/NAME/eval.json``: accuracies per attack and ε, as :mod:`advlab.evaluate` measured."""

    n: int
    clean_accuracy: float
    eps: list[float]
    robust_accuracy: dict[str, list[float | None]]
    worst_case_accuracy: list[float | None]
    seconds: float | None = None
    attack_seconds: dict[str, float] | None = None  # each attack's share of the time
    verdict_draws: int | None = None  # passes per verdict: 20 for a randomized model
    headline: str | None = None  # what the accuracies are: "accuracy", or a randomized model's expected accuracy
    majority_vote: dict[str, Any] | None = None  # a randomized model's majority-vote accuracies, beside
    train_eps_survivors: list[int] | None = None
    model_flags: list[Any] | None = None
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class CheckMeasurements:
    """A study's ``models/NAME/checks.json``: the sanity checks' extra attacks at the training ε."""

    eps: float
    n: int
    worst_case_all: dict[str, Any]
    pgd: dict[str, Any] | None = None
    worst_case: dict[str, Any] | None = None
    suite: dict[str, Any] | None = None
    single_step: str | None = None  # the single-step attack's label (FGSM), which PGD must beat
    robust_images: list[int] | None = None  # the images every attack left robust (the per-example cross-check)
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class AttackOutput:
    """``attack.json`` beside the adversarial images ``advlab attack`` saved."""

    classes: list[str]
    eps: float | None = None
    target: int | None = None
    label: str | None = None
    attack: str | None = None


@dataclass(frozen=True)
class SanityCheck:
    """One entry of ``metrics.json``'s ``sanity_checks``."""

    check: str
    model: str | None = None
    passed: bool | None = None
    status: str | None = None
    detail: str | None = None
    numbers: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in (None, "pass", "fail", "not applicable"):
            raise AdvlabError(f"status must be pass, fail or not applicable, got {self.status!r}")


@dataclass(frozen=True)
class Certified:
    """A study's ``models/NAME/certified.json`` (:mod:`advlab.study.certified`), also ``metrics.json``'s
    ``models.NAME.certified``."""

    eps: float
    n: int
    verified_accuracy: float | None = None
    verified_method: str | None = None
    unsupported: str | None = None
    smoothing: dict[str, Any] | None = None
    verified_images: list[int] | None = None  # the images the bound proved (the per-example cross-check)
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelResults:
    """One model of ``metrics.json``'s ``models``: each accuracy list has one entry per ε of ``eps_grid``."""

    clean_accuracy: float | None = None
    robust_accuracy: dict[str, list[float | None]] | None = None
    worst_case_accuracy: list[float | None] | None = None
    epochs: list[dict[str, Any]] | None = None
    method: str | None = None
    label: str | None = None
    train_config: dict[str, Any] | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    n_eval: int | None = None
    collapse: str | None = None
    model_flags: list[Any] | None = None
    worst_case_all_attacks: dict[str, Any] | None = None
    certified: Certified | None = None


@dataclass(frozen=True)
class ArmsRaceRow:
    """One model behind one defense (``defense`` None: the model alone) in the arms race."""

    model: str
    clean: float
    naive: float
    adaptive: float
    undefended: float
    label: str | None = None
    defense: dict[str, Any] | None = None
    oblivious: float | None = None
    adaptive_attack: str | None = None
    flags: list[str] | None = None
    naive_unreliable: list[str] | None = None
    resists: bool | None = None
    pixels_within_eps_of_threshold: float | None = None
    verdict_draws: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class ArmsRace:
    """A study's ``arms_race.json`` (:mod:`advlab.study.arms_race`), also ``metrics.json``'s ``arms_race``."""

    eps: float
    n: int
    attack: str
    rows: list[ArmsRaceRow]
    eot: int | None = None
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class StudyMetrics:
    """A study's ``metrics.json``, what ``advlab report`` draws from."""

    eps_grid: list[float]
    models: dict[str, ModelResults]
    train_eps: float | None = None
    chance_accuracy: float | None = None
    classes: list[str] | None = None
    n_eval: int | None = None
    preset: str | None = None
    dataset: str | None = None
    headline_attack: str | None = None  # the story's attack: the study's strongest PGD
    best_robust_model: str | None = None
    attacks: dict[str, dict[str, Any]] | None = None
    attack_hyperparameters: dict[str, list[dict[str, Any]]] | None = None
    check_attacks: dict[str, Any] | None = None
    sanity_checks: list[SanityCheck] | None = None
    gallery: dict[str, Any] | None = None
    arms_race: ArmsRace | None = None
    explorer: dict[str, Any] | None = None  # advlab.study.explorer's numbers; images in explorer.safetensors


def check_metrics(metrics: Any, where: str) -> dict[str, Any]:
    """``metrics.json`` checked: every field's type (:class:`StudyMetrics`), then what types cannot say: at
    least one ε and one model, one accuracy per ε in every series, a known check status."""

    def bad(message: str) -> AdvlabError:
        return AdvlabError(f"{where} is not a study's metrics file: {message}; rerun `advlab study`")

    try:
        check_fields(metrics, StudyMetrics, what="field", known_only=False)
        for check in metrics.get("sanity_checks") or []:
            SanityCheck(**{k: v for k, v in check.items() if k in _names(SanityCheck)})
    except AdvlabError as err:
        raise bad(str(err)) from None
    grid, models = metrics["eps_grid"], metrics["models"]
    if not grid:
        raise bad("field eps_grid must hold at least one ε")
    if not models:
        raise bad("field models must map at least one model name to its results")
    for name, model in models.items():
        series = {f"models.{name}.robust_accuracy[{a!r}]": v for a, v in (model.get("robust_accuracy") or {}).items()}
        if model.get("worst_case_accuracy") is not None:
            series[f"models.{name}.worst_case_accuracy"] = model["worst_case_accuracy"]
        for at, values in series.items():
            if len(values) != len(grid):
                raise bad(f"field {at} must be a list of {len(grid)} accuracies, one per ε in eps_grid")
    return metrics


@functools.cache
def _names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def read_checked(path: str | Path, cls, *, what: str = "field") -> dict[str, Any]:
    """Read the JSON file at ``path`` and check it against dataclass ``cls`` (fields it does not declare
    pass): a missing, unreadable or malformed file is one :class:`AdvlabError` naming the file and field."""
    values = read_json(path)
    return check_fields(values, cls, what=what, where=str(path), known_only=False)


__all__ = [
    "ArmsRace",
    "ArmsRaceRow",
    "AttackOutput",
    "Certified",
    "CheckMeasurements",
    "CheckpointRecord",
    "Evaluation",
    "ModelArgs",
    "ModelResults",
    "RunSummary",
    "SanityCheck",
    "StudyMetrics",
    "check_fields",
    "check_metrics",
    "check_record",
    "read_checked",
]
