"""``advlab verify``: is a run folder (or one tensor file) intact, and did its training finish?

For every ``.safetensors`` file under the path: its bytes against the checksums written with it; for a
checkpoint, also that the record builds the model, that the weights fit it (dtype, shape, finite) and that
the ``NAME.json`` beside it is the record inside the file; for a training run, whether it finished::

    from advlab.verify import verify_path
    findings = verify_path("runs/pgd")          # [Finding(path, status, message), ...]

A finding's status is ``ok``, ``unchecked`` (a file written before checksums: loads, cannot be checked),
``unfinished`` (a training run that stopped early), or ``damaged`` (anything refused). The command exits
with status 1 when a file is damaged (status 2 is kept for a path that cannot be checked at all).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from advlab.errors import AdvlabError
from advlab.files import read_json
from advlab.runs import load_checkpoint, training_status, unfinished_message
from advlab.tensor_files import CHECKSUM_KEY, UncheckedFileWarning, load_tensors

STATUSES = ("ok", "unchecked", "unfinished", "damaged")


@dataclass(frozen=True)
class Finding:
    path: str
    status: str  # one of STATUSES
    message: str

    def line(self) -> str:
        return f"{self.status:<10} {self.path}: {self.message}"


def verify_path(path: str | Path) -> list[Finding]:
    """The findings for a run folder (every tensor file under it, and each training run's status) or one
    ``.safetensors`` file."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.safetensors"))
        if not files:
            raise AdvlabError(f"{path} holds no .safetensors file; give a run folder or a checkpoint")
    else:
        raise AdvlabError(f"{path} does not exist; give a run folder or a checkpoint")
    findings = [_verify_file(f) for f in files]
    for folder in sorted({f.parent for f in files if f.name == "model.safetensors"}):
        try:
            status = training_status(folder / "model.safetensors")
        except AdvlabError as err:
            findings.append(Finding(str(folder), "damaged", str(err)))
            continue
        message = unfinished_message(status)
        if message:
            findings.append(Finding(str(folder), "unfinished", message))
        elif status:
            findings.append(
                Finding(str(folder), "ok", f"training finished ({status['epoch']} of {status['epochs']} epochs)")
            )
    return findings


def _verify_file(path: Path) -> Finding:
    try:
        tensors, metadata = load_tensors(path)
    except AdvlabError as err:
        return Finding(str(path), "damaged", str(err).removeprefix(f"{path} "))
    checked = CHECKSUM_KEY in metadata
    what = f"{len(tensors)} tensors, checksums match" if checked else f"{len(tensors)} tensors, no checksums to check"
    if "advlab" in metadata:  # a checkpoint: it must also build its model
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UncheckedFileWarning)
                _, record = load_checkpoint(path)
        except AdvlabError as err:
            return Finding(str(path), "damaged", str(err))
        beside = path.with_suffix(".json")
        if beside.is_file():
            try:
                same = read_json(beside) == json.loads(metadata["advlab"])
            except AdvlabError as err:
                return Finding(str(path), "damaged", str(err))
            if not same:
                return Finding(str(path), "damaged", f"{beside.name} differs from the record inside the file")
        what += f"; {record['model']}, epoch {record.get('epoch', '?')}"
    return Finding(str(path), "ok" if checked else "unchecked", what)


__all__ = ["STATUSES", "Finding", "verify_path"]
