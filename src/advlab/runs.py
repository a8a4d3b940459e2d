"""Run folders and checkpoints: atomic writes, safetensors weights, JSON records, no unpickling.

A checkpoint is two files side by side:

* ``NAME.safetensors``: the weights (``state_dict`` of the model returned by
  :func:`advlab.models.create_model`), with the JSON record also stored in the file's metadata so the
  file alone rebuilds the model;
* ``NAME.json``: the record — model name and arguments, data set, normalization, resolved config,
  epoch, metrics, advlab and torch versions.

Load with :func:`load_checkpoint` (a run folder or a ``.safetensors`` path). Every file is written
atomically (:mod:`advlab.files`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.errors import AdvlabError
from advlab.files import _json_default, atomic_write_bytes, atomic_write_text, read_json, write_json

__all__ = ["atomic_write_bytes", "atomic_write_text", "load_checkpoint", "load_tensors", "prepare_run_dir",
           "read_json", "resolve_checkpoint", "save_checkpoint", "save_tensors", "versions", "write_json"]

CHECKPOINT_FORMAT = 1  # bump when the record's layout changes incompatibly


def prepare_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False,
                    resume_option: str | None = None) -> Path:
    """Create the run folder, refusing to touch an existing non-empty one unless asked.

    ``resume`` accepts an existing folder (the caller checks it holds the same run); ``overwrite``
    empties nothing but lets the new run's files replace the old ones one by one. ``resume_option``
    names the command's option that continues a run, for the refusal message (only where one exists).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdvlabError(f"{path} exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        to_resume = f"{resume_option} to continue it, " if resume_option else ""
        raise AdvlabError(f"run folder {path} already exists and is not empty; use {to_resume}"
                          "--overwrite to replace its files, or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-")
        probe.close()
    except OSError as err:
        raise AdvlabError(f"cannot write to run folder {path}: {err.strerror}; choose a writable --out") from None
    return path


def versions() -> dict[str, str]:
    import advlab

    return {"advlab": advlab.__version__, "torch": torch.__version__}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically save a flat dict of tensors in safetensors format (contiguous CPU copies)."""
    from safetensors.torch import save

    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write_bytes(path, save(flat, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file: (tensors, metadata). Never unpickles; corrupt files raise AdvlabError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AdvlabError(f"checkpoint {path} does not exist; train one with `advlab train` or check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise AdvlabError(f"checkpoint {path} is corrupt or not a safetensors file ({err}); "
                          "retrain or restore it") from None
    return tensors, metadata


def save_checkpoint(path: str | Path, model: nn.Module, record: dict[str, Any]) -> Path:
    """Save ``model``'s weights to ``path`` (``.safetensors``) and ``record`` beside it as JSON.

    ``record`` must hold at least ``model`` (name) and ``model_args`` (arguments of ``create_model``).
    """
    path = Path(path)
    missing = {"model", "model_args"} - set(record)
    if missing:
        raise AdvlabError(f"checkpoint record lacks {sorted(missing)}: it must name the model and its arguments")
    record = {"format": CHECKPOINT_FORMAT, **record, "versions": versions()}
    text = json.dumps(record, default=_json_default)
    save_tensors(path, model.state_dict(), metadata={"advlab": text})
    write_json(path.with_suffix(".json"), record)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its ``best.safetensors`` if there is one, else ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise AdvlabError(f"{path} holds no checkpoint (model.safetensors); train one with `advlab train --out {path}`")
    return path


def training_outcome(path: str | Path) -> dict[str, Any] | None:
    """What the training run behind a checkpoint reported about catastrophic overfitting (from the run
    folder's summary.json), or None when the checkpoint has no run folder. ``collapsed`` is True when the
    guard fired, whatever remedy followed; ``message`` is its last line."""
    path = Path(path)
    summary_path = (path if path.is_dir() else path.parent) / "summary.json"
    if not summary_path.is_file():
        return None
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or "catastrophic_overfitting" not in summary:
        return None
    return {"collapsed": bool(summary["catastrophic_overfitting"]),
            "message": summary.get("catastrophic_overfitting_message"),
            "stopped_by_guard": bool(summary.get("stopped_by_guard", summary["catastrophic_overfitting"])),
            "recipe": summary.get("recipe")}


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (a ``.safetensors`` file or a run folder) in eval mode.

    Returns ``(model, record)``. Only tensors and JSON are read: nothing is unpickled.
    """
    from advlab.models import create_model

    path = resolve_checkpoint(path)
    tensors, metadata = load_tensors(path)
    try:
        record = json.loads(metadata["advlab"])
        model = create_model(record["model"], **record["model_args"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise AdvlabError(f"{path} is a safetensors file but not an advlab checkpoint (no model record)") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise AdvlabError(f"checkpoint {path} does not match model {record['model']!r}: {first}") from None
    return model.to(device).eval(), record
