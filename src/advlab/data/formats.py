"""The file formats: LeCun's idx files (MNIST, Fashion-MNIST) and the CIFAR-10 pickled batches and archive.

Parsing checks structure (magic numbers, sizes, shapes, label ranges) rather than hashes, so that files
recompressed by a distribution still load; a damaged file gives a one-line AdvlabError that says how to
get a good copy. CIFAR pickles are read by a restricted unpickler that builds only numpy arrays.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advlab.data.catalogue import CIFAR_ARCHIVE, CIFAR_DIR, DatasetInfo, idx_path
from advlab.errors import AdvlabError


def _corrupt(where: str | Path, info: DatasetInfo, problem: str) -> AdvlabError:
    return AdvlabError(
        f"{where}: {problem}; get a good copy: delete it and run `advlab data download {info.name}`, "
        f"or point --data-dir / $ADVLAB_DATA at good files"
    )


def read_split(info: DatasetInfo, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = info.train_files if split == "train" else info.test_files
    if info.kind == "idx":
        paths = tuple(idx_path(folder, base) or folder / base for base in files)
    elif all((folder / f).is_file() for f in files):
        paths = tuple(folder / f for f in files)
    else:
        paths = (folder / CIFAR_ARCHIVE,)
    try:
        stamps = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    except OSError as err:
        raise AdvlabError(f"cannot read {info.name} files in {folder}: {err}") from None
    return _parse_split(info, paths, files, stamps)


@functools.lru_cache(maxsize=4)  # train and val share one parse; stamps make a replaced file re-read
def _parse_split(
    info: DatasetInfo, paths: tuple[Path, ...], files: tuple[str, ...], stamps: tuple[tuple[int, int], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    if info.kind == "idx":
        images, labels = _read_idx(paths[0], 3, info), _read_idx(paths[1], 1, info)
        if len(images) != len(labels):
            raise _corrupt(paths[1], info, f"{len(labels)} labels but {paths[0].name} has {len(images)} images")
        images, where = images[:, None], paths[0]
    else:
        if paths[0].name == CIFAR_ARCHIVE:
            blobs = {f"{paths[0]}:{name}": raw for name, raw in read_archive(paths[0], files, info).items()}
        else:
            blobs = {str(p): _read_file(p, info) for p in paths}
        parts = [_parse_cifar_batch(raw, where, info) for where, raw in blobs.items()]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        where = paths[0]
    if images.shape[1:] != (info.channels, info.height, info.width):
        raise _corrupt(
            where, info, f"images are {images.shape[1:]}, expected {(info.channels, info.height, info.width)}"
        )
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(info.classes):
        raise _corrupt(where, info, f"labels outside 0..{len(info.classes) - 1}")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def _read_file(path: Path, info: DatasetInfo) -> bytes:
    try:
        raw = path.read_bytes()
        # Decide by content, not name: people gunzip files and keep names, or the reverse.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:  # EOFError: a truncated gzip stream
        raise _corrupt(path, info, f"unreadable or truncated ({err})") from None


def _read_idx(path: Path, ndim: int, info: DatasetInfo) -> np.ndarray:
    """An idx file (LeCun's format: 0, 0, 0x08 = uint8, ndim, big-endian dims, data) as a writable array."""
    raw = _read_file(path, info)
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes((0, 0, 8, ndim)):
        raise _corrupt(path, info, f"not a uint8 idx file with {ndim} dimension(s) (bad magic number {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise _corrupt(path, info, f"header says {dims} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists, bytes, ints and numpy arrays.

    A pickle can name any importable callable and have it called (``os.system`` included), so every
    global is refused except the three numpy needs to rebuild an array. Called as
    ``_RestrictedUnpickler(f).load()``, never the unrestricted ``pickle.load``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),  # numpy >= 2 writes this name
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        if module == "numpy.core.multiarray":  # old name; numpy 2 warns on import, the object is the same
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _parse_cifar_batch(raw: bytes, where: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    try:
        # Python 2 pickles: encoding="bytes" keeps their str keys as bytes instead of guessing a codec.
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise almost anything; all mean "bad file"
        raise _corrupt(where, info, f"not a CIFAR batch ({type(err).__name__}: {err})") from None
    pixels = info.channels * info.height * info.width
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise _corrupt(where, info, f"'data' is not a uint8 array of shape (N, {pixels})")
    if labels.shape != (len(data),):
        raise _corrupt(where, info, f"{len(labels)} labels for {len(data)} images")
    # Each row is the red plane, then green, then blue, row-major: exactly NCHW.
    return data.reshape(-1, info.channels, info.height, info.width), labels


def read_archive(path: Path, files: tuple[str, ...], info: DatasetInfo) -> dict[str, bytes]:
    """The named batch files from a CIFAR tarball, read in memory.

    Members are picked by their known names and never extracted by the paths the archive gives, so an
    entry like ``../../x`` can write nothing anywhere.
    """
    wanted = {f"{CIFAR_DIR}/{name}": name for name in files}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    found[wanted[name]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, info, f"unreadable archive ({err})") from None
    missing = [name for name in files if name not in found]
    if missing:
        raise _corrupt(path, info, f"archive lacks {', '.join(missing)}")
    return {name: found[name] for name in files}
