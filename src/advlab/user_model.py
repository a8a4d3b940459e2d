"""Your own model: built by your factory function, filled from a safetensors file, attacked like ours.

    advlab evaluate --model-from my_pkg.nets:build --weights net.safetensors --model-args '{"width": 64}' \\
        --data folder:photos --eps 8/255

``--model-from MODULE:FACTORY`` imports ``MODULE`` (a dotted name found from the current folder or the
installed packages, or a ``.py`` file path) and calls ``FACTORY(**model_args)``, which returns an
``nn.Module`` that maps pixels in [0, 1] (N, C, H, W) to logits (N, classes). ``--weights`` is read with
safetensors only: nothing is unpickled, so a weights file cannot run code (your module can: import only
code you trust). ``--normalize MEAN,STD`` (or one mean and one std per channel, means first) puts advlab's
``Normalize`` in front, for a model trained on normalized input. Every output records where the model came
from: the factory, its arguments, the weights' path and SHA-256, and the normalization.

Refused, with one line that says what to change: a module that does not import, a missing factory or one
that raises, a factory that returns something other than a module, a weights file that is not safetensors,
lacks keys the model has, holds keys it lacks, or stores another shape. The jobs (:mod:`advlab.jobs`) then
run the model checks (:mod:`advlab.model_warnings`) on it before any attack: a model that returns
probabilities is refused (give the logits: drop the final softmax), every other flag is a warning; and a
model that cannot take the images is refused.

Python::

    from advlab.user_model import UserModel
    source = UserModel("my_pkg.nets:build", "net.safetensors", model_args={"width": 64})
    model, record = source.load("cpu")
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.errors import AdvlabError
from advlab.files import file_sha256
from advlab.models import Normalize


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args``: a JSON object of keyword arguments for the factory."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdvlabError(f"--model-args must be a JSON object such as '{{\"width\": 64}}': {err}") from None
    if not isinstance(value, dict):
        raise AdvlabError(f"--model-args must be a JSON object such as '{{\"width\": 64}}', got {text!r}")
    return value


# Named normalizations: the per-channel mean and std a model family was trained with.
NAMED_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's and timm's ImageNet models
}


def parse_normalize(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``--normalize MEAN,STD``, ``M1,M2,M3,S1,S2,S3`` or a name (``imagenet``): (means, stds), one per
    channel or one for all."""
    if text is None:
        return None
    if text.strip().lower() in NAMED_NORMALIZATIONS:
        return NAMED_NORMALIZATIONS[text.strip().lower()]
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or len(values) % 2 or any(v != v for v in values):
        raise AdvlabError(
            f"--normalize takes MEAN,STD, one mean and one std per channel (means first, e.g. 0.5,0.25 or "
            f"0.49,0.48,0.45,0.25,0.24,0.26) or a name ({', '.join(NAMED_NORMALIZATIONS)}), got {text!r}"
        )
    half = len(values) // 2
    mean, std = tuple(values[:half]), tuple(values[half:])
    if any(s <= 0 for s in std):
        raise AdvlabError(f"--normalize: every std must be above 0, got {', '.join(f'{s:g}' for s in std)}")
    return mean, std


@dataclass(frozen=True)
class UserModel:
    """Where a user's model comes from: ``factory`` (``MODULE:NAME``), ``weights`` (a .safetensors file, or
    None: the factory's model as it returns it, already trained, e.g. a pretrained torchvision or timm model),
    the factory's keyword arguments and an optional normalization put in front."""

    factory: str
    weights: str | Path | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __str__(self) -> str:
        held = f"with {self.weights}" if self.weights is not None else "with the weights it returns"
        return f"the model from {self.factory} {held}"

    def load(self, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
        """Build, fill and check the model (eval mode, on ``device``): ``(model, record)``, the record as
        an advlab checkpoint's (no data set, no model_args of ours) with ``source`` saying where it came from."""
        weights = None if self.weights is None else Path(self.weights)
        if weights is not None and weights.suffix != ".safetensors":
            raise AdvlabError(
                f"--weights {weights}: only .safetensors files are read (nothing is unpickled); "
                "save yours with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
            )
        if weights is not None and not weights.is_file():
            raise AdvlabError(f"--weights {weights} does not exist")
        build = _import_factory(self.factory)
        try:
            model = build(**self.model_args)
        except Exception as err:  # the user's code: any failure is theirs to fix, said on one line
            raise AdvlabError(
                f"the factory {self.factory}({_show_args(self.model_args)}) raised "
                f"{type(err).__name__}: {_first_line(err)}"
            ) from None
        if not isinstance(model, nn.Module):
            raise AdvlabError(f"the factory {self.factory} returned {type(model).__name__}, not a torch.nn.Module")
        if weights is not None:
            _fill(model, weights)
        else:
            _STATE_DIGESTS[self._key()] = state_dict_sha256(model)  # what it returned, for the record
        if self.normalize is not None:
            model = nn.Sequential(Normalize(*self.normalize), model)
        model = model.to(device).eval()
        record = {"model": "user", "model_args": {}, "dataset": None, "source": self.describe()}
        return model, record

    def _key(self) -> str:
        return json.dumps([self.factory, self.model_args], sort_keys=True, default=str)

    def digest(self) -> str:
        """The SHA-256 that names these weights: the file's, or the state dict's of the factory's own model
        (built once to take it, when it was not loaded yet)."""
        if self.weights is not None:
            return file_sha256(Path(self.weights))
        if self._key() not in _STATE_DIGESTS:
            self.load("cpu")
        return _STATE_DIGESTS[self._key()]

    def describe(self) -> dict[str, Any]:
        own = self.weights is None
        return {
            "kind": "factory",
            "factory": self.factory,
            "module_file": _module_file(self.factory),
            "model_args": self.model_args,
            "weights": None if own else str(self.weights),
            "weights_from": "the factory (its model as returned)" if own else "the --weights file",
            "weights_sha256": None if own else self.digest(),
            "state_dict_sha256": self.digest() if own else None,
            "normalize": None
            if self.normalize is None
            else {"mean": list(self.normalize[0]), "std": list(self.normalize[1])},
        }


_STATE_DIGESTS: dict[str, str] = {}  # factory and arguments → the state dict digest of the model it returned


def state_dict_sha256(model: nn.Module) -> str:
    """One SHA-256 over a model's state dict: each entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _import_factory(spec: str):
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name.isidentifier():
        raise AdvlabError(
            f"--model-from must be MODULE:FACTORY (e.g. my_pkg.nets:build or nets.py:build), got {spec!r}"
        )
    module = _import(module_name)
    factory = getattr(module, name, None)
    if factory is None:
        raise AdvlabError(
            f"module {module_name} has no {name!r}; --model-from names a function in it that returns the model"
        )
    if not callable(factory):
        raise AdvlabError(f"{spec} is a {type(factory).__name__}, not a function that returns the model")
    return factory


def _import(module_name: str):
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise AdvlabError(f"--model-from: {module_name} does not exist")
            spec = importlib.util.spec_from_file_location(f"advlab_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: the user's package beside them
        return importlib.import_module(module_name)
    except AdvlabError:
        raise
    except Exception as err:
        raise AdvlabError(
            f"cannot import {module_name}: {type(err).__name__}: {_first_line(err)} (run advlab "
            "from the folder that holds your package, or give the .py file's path)"
        ) from None


def _module_file(spec: str) -> str | None:
    module_name = spec.rpartition(":")[0]
    if module_name.endswith(".py"):
        return str(Path(module_name).expanduser().resolve())
    module = sys.modules.get(module_name)
    return getattr(module, "__file__", None)


def _fill(model: nn.Module, weights: Path) -> None:
    """Load ``weights`` into ``model`` strictly, naming missing, unexpected and misshapen keys."""
    from advlab.runs import check_weights
    from advlab.tensor_files import load_tensors

    tensors, _ = load_tensors(weights, verify=False)  # a user's file carries no advlab checksums
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {_few(missing)} that the model has")
        if unexpected:
            parts.append(f"holds {_few(unexpected)} that the model lacks")
        raise AdvlabError(
            f"--weights {weights} {' and '.join(parts)}: save model.state_dict() of the model the "
            "factory builds (same class and --model-args)"
        )
    for key, tensor in tensors.items():  # user files may hold half precision: cast floats, refuse the rest
        want = expected[key]
        if tensor.is_floating_point() and want.is_floating_point() and tensor.dtype != want.dtype:
            tensors[key] = tensor.to(want.dtype)
    try:
        check_weights(weights, tensors, expected)
    except AdvlabError as err:
        raise AdvlabError(
            f"{err}; save model.state_dict() of the model the factory builds (same class and --model-args)"
        ) from None
    model.load_state_dict(tensors, strict=True)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"{'key' if len(keys) == 1 else 'keys'} {shown}"


def _show_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def open_model(source: str | Path | UserModel, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """An advlab checkpoint (a run folder or .safetensors file) or a :class:`UserModel`, loaded in eval mode."""
    from advlab.runs import load_checkpoint

    return source.load(device) if isinstance(source, UserModel) else load_checkpoint(source, device=device)


def provenance(source: str | Path | UserModel) -> dict[str, Any]:
    """What an output records of its model: the checkpoint's path, or the factory, arguments and weights."""
    return (
        {"checkpoint": None, "model_source": source.describe()}
        if isinstance(source, UserModel)
        else {"checkpoint": str(source)}
    )


def weights_digest(source: str | Path | UserModel) -> str:
    from advlab.runs import resolve_checkpoint

    return source.digest() if isinstance(source, UserModel) else file_sha256(resolve_checkpoint(source))


def training_record(source: str | Path | UserModel) -> dict[str, Any]:
    """The training outcome and status of an advlab run (None for a user's model: advlab did not train it)."""
    from advlab.runs import training_outcome, training_status

    if isinstance(source, UserModel):
        return {"training": None, "training_status": None}
    return {"training": training_outcome(source), "training_status": training_status(source)}


__all__ = [
    "UserModel",
    "open_model",
    "parse_model_args",
    "parse_normalize",
    "provenance",
    "training_record",
    "weights_digest",
]
