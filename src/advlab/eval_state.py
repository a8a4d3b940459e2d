"""An interrupted evaluation's progress, saved beside its output so that the same command resumes it.

``advlab evaluate --out OUT`` keeps ``OUT.state.safetensors`` while it runs (:class:`EvalState`); the evaluation
loop (:func:`advlab.evaluate.evaluate`, its ``state`` argument) saves it after every pool of batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advlab.errors import AdvlabError
from advlab.files import _json_default
from advlab.schema import check_fields
from advlab.tensor_files import load_tensors, save_tensors

__all__ = ["EvalProgress", "EvalState"]


@dataclass(frozen=True)
class EvalProgress:
    """What an evaluation state records beside its flags (checked with :func:`advlab.schema.check_fields`)."""

    fingerprint: dict[str, Any]
    batches: int
    sizes: list[int]  # examples per finished batch: the flags are stored concatenated
    seconds: float
    draws: int | None
    flags: list[dict[str, Any]]
    white_robust: dict[str, int]
    black_broke: dict[str, int]
    attack_seconds: dict[str, float] | None = None


class EvalState:
    """An interrupted evaluation's progress, beside its output: ``OUT.state.safetensors`` for ``--out OUT``.

    Saved atomically after every pool of batches (the per-example flags so far, the random generator, the
    counts), read back when the same evaluation starts again and removed once the result is written. Like a
    training state it is a checksummed tensor file whose record is checked field by field, and it names what
    it was computed from (the checkpoint's content, the data, every attack setting, ε, seed, batch size,
    pool, device, precision): a damaged state, or one from anything else, is refused with one line, never
    mixed in."""

    KEY = "advlab_eval_state"

    def __init__(self, out: Path, fingerprint: dict) -> None:
        self.path = out.with_name(out.name + ".state.safetensors")
        self.fingerprint = json.loads(json.dumps(fingerprint))

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        tensors, metadata = load_tensors(self.path)  # checksums verified: a damaged state is refused
        try:
            record = json.loads(metadata[self.KEY])
        except (KeyError, json.JSONDecodeError):
            raise AdvlabError(
                f"{self.path} is not an evaluation state; delete it to start the evaluation afresh"
            ) from None
        check_fields(record, EvalProgress, what="evaluation state field", where=str(self.path))
        if record["fingerprint"] != self.fingerprint:
            changed = sorted(
                k
                for k in set(record["fingerprint"]) | set(self.fingerprint)
                if record["fingerprint"].get(k) != self.fingerprint.get(k)
            )
            raise AdvlabError(
                f"{self.path} holds the state of another evaluation (its {', '.join(changed)} "
                "differ); delete it or choose another --out"
            )
        sizes = record["sizes"]
        flags = {name: t for name, t in tensors.items() if name != "generator" and not name.startswith("norms.")}
        norms = {name.removeprefix("norms."): t for name, t in tensors.items() if name.startswith("norms.")}
        if (
            len(sizes) != record["batches"]
            or "generator" not in tensors
            or "clean" not in flags
            or any(t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != sum(sizes) for t in flags.values())
            or any(t.dtype != torch.float32 or t.numel() != sum(sizes) for t in norms.values())
        ):
            raise AdvlabError(
                f"{self.path} is inconsistent (its flags do not match its {record['batches']} "
                "batches); delete it to start the evaluation afresh"
            )
        split = {name: list(t.split(sizes)) for name, t in flags.items()}
        return {
            "batches": record["batches"],
            "seconds": record["seconds"],
            "draws": record["draws"],
            "flags": record["flags"],
            "generator": tensors["generator"],
            "clean": split.pop("clean"),
            "worst": {int(name.removeprefix("worst.")): v for name, v in split.items() if name.startswith("worst.")},
            "robust": {name.removeprefix("robust."): v for name, v in split.items() if name.startswith("robust.")},
            "white_robust": {int(k): v for k, v in record["white_robust"].items()},
            "black_broke": record["black_broke"],
            "attack_seconds": record.get("attack_seconds"),
            "norms": {label: list(t.split(sizes)) for label, t in norms.items()},
        }

    def save(self, progress: dict) -> None:
        cat = torch.cat
        tensors = {"generator": progress["generator"], "clean": cat(progress["clean"])}
        tensors |= {f"worst.{i}": cat(flags) for i, flags in progress["worst"].items()}
        tensors |= {f"robust.{key}": cat(flags) for key, flags in progress["robust"].items()}
        tensors |= {f"norms.{label}": cat(parts) for label, parts in (progress.get("norms") or {}).items()}
        record = {
            "fingerprint": self.fingerprint,
            "batches": progress["batches"],
            "sizes": [len(t) for t in progress["clean"]],
            "seconds": progress["seconds"],
            "draws": progress["draws"],
            "flags": progress["flags"],
            "white_robust": {str(k): v for k, v in progress["white_robust"].items()},
            "black_broke": progress["black_broke"],
            "attack_seconds": progress.get("attack_seconds"),
        }
        save_tensors(self.path, tensors, metadata={self.KEY: json.dumps(record, default=_json_default)})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
