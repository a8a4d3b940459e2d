"""Checksummed tensor files: safetensors files whose metadata holds a SHA-256 of each tensor's bytes and of
the rest of the metadata (``advlab_sha256``), written atomically and checked on every load, so one flipped
bit is refused with one line naming the file. Nothing is ever unpickled. A file written before the
checksums (or by another program) still loads, with a one-line note (:class:`UncheckedFileWarning`).

    save_tensors("x.safetensors", {"w": w}, metadata={"note": "..."})
    tensors, metadata = load_tensors("x.safetensors")   # AdvlabError if damaged
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from advlab.errors import AdvlabError
from advlab.files import atomic_write_bytes

CHECKSUM_KEY = "advlab_sha256"  # metadata entry: JSON {tensor name: SHA-256 of its bytes, METADATA_DIGEST: ...}
METADATA_DIGEST = "__metadata__"  # the digest of every other metadata entry (the record, a state's details)


class UncheckedFileWarning(UserWarning):
    """A tensor file without checksums (written before advlab had them, or by another program)."""


CHUNK = 1 << 18  # bytes hashed per task: small enough that every core gets work on a small model's weights
_POOL: ThreadPoolExecutor | None = None  # the hashing threads, started once (a start costs more than 1 MiB's hash)


def _hash_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="advlab-sha256")
    return _POOL


def start_digests(tensors: dict[str, torch.Tensor]) -> Callable[[], dict[str, str]]:
    """Start hashing ``tensors`` on the hashing threads and return the function that waits for
    :func:`tensor_digests`' result, so the caller can work meanwhile (hashlib releases the GIL)."""
    views = {
        name: t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy() for name, t in tensors.items()
    }
    chunks = [
        (name, view[start : start + CHUNK])
        for name, view in views.items()
        for start in range(0, max(len(view), 1), CHUNK)
    ]
    pool = _hash_pool()
    futures = [(name, pool.submit(_sha256, chunk)) for name, chunk in chunks]

    def result() -> dict[str, str]:
        joined: dict[str, list[bytes]] = {name: [] for name in views}
        for name, future in futures:
            joined[name].append(future.result())
        return {name: hashlib.sha256(b"".join(parts)).hexdigest() for name, parts in joined.items()}

    return result


def _sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


def tensor_digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each tensor's SHA-256 tree digest: the SHA-256 of the SHA-256 digests of its bytes (as stored, in
    row-major order) cut in 256 KiB chunks. The chunks are hashed on ``torch.get_num_threads()`` threads
    started once (hashlib releases the GIL), and a load hashes while it rebuilds the model, so verifying a
    checkpoint costs little next to loading it (benchmarks/bench_checkpoint.py). Names, dtypes and shapes
    are checked by the loader."""
    return start_digests(tensors)()


def _metadata_digest(metadata: dict[str, str]) -> str:
    text = json.dumps({k: v for k, v in metadata.items() if k != CHECKSUM_KEY}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically save a flat dict of tensors in safetensors format (contiguous CPU copies)."""
    from safetensors.torch import save

    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    metadata = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM_KEY}
    digests = tensor_digests(flat)
    metadata[CHECKSUM_KEY] = json.dumps({**digests, METADATA_DIGEST: _metadata_digest(metadata)}, sort_keys=True)
    return atomic_write_bytes(path, save(flat, metadata=metadata))


def damaged_parts(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], digests: Callable[[], dict[str, str]] | None = None
) -> list[str] | None:
    """The names of the tensors (and ``metadata``) whose bytes differ from the file's own checksums; ``[]``
    when all agree, ``None`` when the file has no checksums. ``digests``: a :func:`start_digests` already
    running on ``tensors``."""
    if CHECKSUM_KEY not in metadata:
        return None
    try:
        expected = json.loads(metadata[CHECKSUM_KEY])
        if not isinstance(expected, dict):
            raise ValueError
    except ValueError:
        return ["checksums"]
    actual = digests() if digests is not None else tensor_digests(tensors)
    damaged = [name for name in tensors if expected.get(name) != actual[name]]
    damaged += sorted(set(expected) - set(tensors) - {METADATA_DIGEST})  # a tensor gone from the file
    if expected.get(METADATA_DIGEST) != _metadata_digest(metadata):
        damaged.append("metadata")
    return damaged


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise AdvlabError(f"checkpoint {path} does not exist; train one with `advlab train` or check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise AdvlabError(
            f"checkpoint {path} is corrupt or not a safetensors file ({err}); retrain or restore it"
        ) from None
    return tensors, metadata


def _refuse_damaged(path: Path, damaged: list[str] | None) -> None:
    if damaged:
        shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        raise AdvlabError(
            f"{path} is damaged: the bytes of {shown} do not match the checksums written with "
            "the file; restore it from a copy or retrain"
        )


def load_tensors(path: str | Path, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file: (tensors, metadata). Never unpickles; corrupt files raise AdvlabError, and so
    (with ``verify``, the default) does a file whose bytes differ from its checksums."""
    path = Path(path)
    tensors, metadata = _read_tensors(path)
    if verify:
        _refuse_damaged(path, damaged_parts(tensors, metadata))
    return tensors, metadata


__all__ = [
    "CHECKSUM_KEY",
    "UncheckedFileWarning",
    "damaged_parts",
    "load_tensors",
    "save_tensors",
    "start_digests",
    "tensor_digests",
]
