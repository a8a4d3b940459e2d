"""Run folders and checkpoints: atomic writes, safetensors weights, JSON records, no unpickling.

A checkpoint is two files side by side:

* ``NAME.safetensors``: the weights (``state_dict`` of the model returned by
  :func:`advlab.models.create_model`), with the JSON record also stored in the file's metadata so the
  file alone rebuilds the model;
* ``NAME.json``: the record — model name and arguments, data set, normalization, resolved config,
  epoch, metrics, advlab and torch versions.

Load with :func:`load_checkpoint` (a run folder or a ``.safetensors`` path). Every file is written
atomically (:mod:`advlab.files`).

Every tensor file advlab writes carries a SHA-256 of each tensor's bytes and one of its other metadata, in
its metadata (``advlab_sha256``); reading checks them, so a single flipped bit in the weights or the record
is refused, naming the file. A file written before the checksums (or by another program) still loads, with
a one-line note.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.errors import AdvlabError
from advlab.files import (
    LOCK_NAME,
    _json_default,
    check_writable,
    read_json,
    write_json,
)
from advlab.schema import RunSummary, check_record, read_checked
from advlab.tensor_files import (
    CHECKSUM_KEY,
    UncheckedFileWarning,
    _read_tensors,
    _refuse_damaged,
    damaged_parts,
    save_tensors,
    start_digests,
)

__all__ = [
    "check_run_dir",
    "check_weights",
    "load_checkpoint",
    "prepare_run_dir",
    "resolve_checkpoint",
    "save_checkpoint",
    "training_status",
    "unfinished_message",
    "versions",
]

CHECKPOINT_FORMAT = 1  # bump when the record's layout changes incompatibly


def check_run_dir(
    path: str | Path, *, overwrite: bool = False, resume: bool = False, resume_option: str | None = None
) -> Path:
    """What :func:`prepare_run_dir` refuses, checked without creating anything: call it before the work,
    and ``prepare_run_dir`` when the first file is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdvlabError(f"{path} exists and is not a folder; choose another --out")
    if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()) and not (overwrite or resume):
        to_resume = f"{resume_option} to continue it, " if resume_option else ""
        raise AdvlabError(
            f"run folder {path} already exists and is not empty; use {to_resume}"
            "--overwrite to replace its files, or choose another --out"
        )
    return check_writable(path)


def prepare_run_dir(
    path: str | Path, *, overwrite: bool = False, resume: bool = False, resume_option: str | None = None
) -> Path:
    """Create the run folder, refusing to touch an existing non-empty one unless asked.

    ``resume`` accepts an existing folder (the caller checks it holds the same run); ``overwrite``
    empties nothing but lets the new run's files replace the old ones one by one. ``resume_option``
    names the command's option that continues a run, for the refusal message (only where one exists).
    """
    path = check_run_dir(path, overwrite=overwrite, resume=resume, resume_option=resume_option)
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
    guard fired, whatever remedy followed; ``message`` is its last line; ``warnings`` what else the run
    found wrong (a model at chance, a run that ends without robustness)."""
    path = Path(path)
    summary_path = (path if path.is_dir() else path.parent) / "summary.json"
    if not summary_path.is_file():
        return None
    summary = read_checked(summary_path, RunSummary)
    if summary.get("catastrophic_overfitting") is None:
        return None
    return {
        "collapsed": bool(summary["catastrophic_overfitting"]),
        "message": summary.get("catastrophic_overfitting_message"),
        "stopped_by_guard": bool(summary.get("stopped_by_guard", summary["catastrophic_overfitting"])),
        "recipe": summary.get("recipe"),
        # A run that ends without robustness, or a model at chance: flagged even where the guard never fired.
        "ends_without_robustness": bool(summary.get("ends_without_robustness")),
        "warnings": list(summary.get("warnings") or []),
    }


def training_status(path: str | Path) -> dict[str, Any] | None:
    """Whether the training behind a checkpoint finished: ``{"finished", "epoch", "epochs"}`` from the run
    folder's summary.json (written when ``train`` returns), else from the checkpoint's record (a run killed
    mid-way writes no summary); None when neither says (a checkpoint from elsewhere)."""
    path = resolve_checkpoint(path)
    summary_path = path.parent / "summary.json"
    summary = read_checked(summary_path, RunSummary) if summary_path.is_file() else None
    if summary is not None and summary.get("finished") is not None:
        return {
            "finished": summary["finished"],
            "epoch": summary.get("epochs_completed"),
            "epochs": summary.get("epochs_planned"),
            "run_dir": str(path.parent),
        }
    record_path = path.with_suffix(".json")
    record = read_json(record_path) if record_path.is_file() else None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None
    epoch, epochs = record.get("epoch"), record["config"].get("epochs")
    if not isinstance(epoch, int) or not isinstance(epochs, int):
        return None
    return {"finished": epoch >= epochs, "epoch": epoch, "epochs": epochs, "run_dir": str(path.parent)}


def unfinished_message(status: dict[str, Any] | None) -> str | None:
    """One line for a checkpoint whose training did not finish, else None."""
    if not status or status["finished"]:
        return None
    return (
        f"this model's training did not finish (epoch {status['epoch']} of {status['epochs']}); "
        f"resume it with `advlab train --resume --out {status['run_dir']}`"
    )


def load_checkpoint(
    path: str | Path, *, device: torch.device | str = "cpu", verify: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (a ``.safetensors`` file or a run folder) in eval mode.

    Returns ``(model, record)``. Only tensors and JSON are read: nothing is unpickled. ``verify=False``
    skips the checksums (benchmarks/bench_checkpoint.py measures what they cost); the record and the
    weights' dtypes, shapes and values are checked either way.
    """
    path = resolve_checkpoint(path)
    tensors, metadata = _read_tensors(path)
    if not verify:
        return _rebuild(path, tensors, metadata, device)
    if CHECKSUM_KEY not in metadata:
        warnings.warn(
            f"{path} has no checksums (written before advlab had them): its weights cannot be checked "
            "for damage; `advlab verify` says more",
            UncheckedFileWarning,
            stacklevel=2,
        )
    # The checksums are computed on the hashing threads while the model is built and filled (hashlib and torch
    # both release the GIL), so verifying costs little wall time (benchmarks/bench_checkpoint.py). The model is
    # returned only once they agree, and damage is named in preference to what it may have caused (a NaN).
    digests = start_digests(tensors)
    try:
        built = _rebuild(path, tensors, metadata, device)
    except AdvlabError:
        _refuse_damaged(path, damaged_parts(tensors, metadata, digests))
        raise
    _refuse_damaged(path, damaged_parts(tensors, metadata, digests))
    return built


def _rebuild(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], device: torch.device | str
) -> tuple[nn.Module, dict[str, Any]]:
    from advlab.models import create_model

    try:
        record = json.loads(metadata["advlab"])
    except (KeyError, json.JSONDecodeError):
        raise AdvlabError(f"{path} is a safetensors file but not an advlab checkpoint (no model record)") from None
    check_record(record, str(path))  # every field's type, and the model's arguments' ranges (num_classes ≥ 1)
    name, args = record["model"], record["model_args"]
    try:
        # Built without storage (the meta device) and given the file's tensors as its own (assign): no random
        # initialization to throw away, no copy, and the global random generator is left untouched.
        with torch.device("meta"):
            model = create_model(name, **args)
    except AdvlabError as err:
        raise AdvlabError(f"{path}: its record cannot build the model: {err}") from None
    except (TypeError, ValueError, RuntimeError) as err:  # a constructor refusing an argument (num_classes -3)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AdvlabError(f"{path}: its record's model_args {args} cannot build {name!r}: {first}") from None
    check_weights(path, tensors, model.state_dict())
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise AdvlabError(f"checkpoint {path} does not match model {record['model']!r}: {first}") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer the file does not hold
        with torch.random.fork_rng(devices=[]):
            model = create_model(name, **args)
        model.load_state_dict(tensors)
    return model.to(device).eval(), record


def check_weights(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Refuse weights the model does not declare as they are: another dtype (a silent cast), another shape, or
    values that are NaN or infinite."""
    for name, tensor in tensors.items():
        want = expected.get(name)
        if want is None:
            continue  # load_state_dict names unexpected and missing keys
        if tensor.dtype != want.dtype:
            raise AdvlabError(
                f"checkpoint {path}: {name} is stored as {str(tensor.dtype).removeprefix('torch.')} but "
                f"the model declares {str(want.dtype).removeprefix('torch.')}; it was not written by "
                "advlab for this model"
            )
        if tensor.shape != want.shape:
            raise AdvlabError(
                f"checkpoint {path}: {name} has shape {tuple(tensor.shape)} but the model declares {tuple(want.shape)}"
            )
        # A sum is finite unless a value is NaN or infinite (or it overflows): the cheap test first.
        if tensor.is_floating_point() and not (
            bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())
        ):
            raise AdvlabError(
                f"checkpoint {path}: {name} holds NaN or infinite values; the training diverged or the file is damaged"
            )
