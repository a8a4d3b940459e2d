"""Image data sets (Fashion-MNIST, MNIST, CIFAR-10): find, download, verify and serve them as tensors.

Each data set is read fully into memory as uint8 and served as float32 NCHW pixels in [0, 1]::

    from advlab.data import load_dataset
    train = load_dataset("fashion-mnist", "train", val_size=5000)
    for x, y in train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...

Files are looked for, in order, in: the ``data_dir`` argument (``--data-dir``), ``$ADVLAB_DATA``, the user
cache (``$XDG_CACHE_HOME/advlab/<name>``, default ``~/.cache/advlab``) and, for Fashion-MNIST, the Debian
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). A folder may hold the files
directly, in ``<name>/``, or in torchvision's layout (``MNIST/raw``, ``FashionMNIST/raw``,
``cifar-10-batches-py/``, ``cifar-10-python.tar.gz``). If nothing is found the files are downloaded into the
cache and checked against pinned SHA-256 sums; ``$ADVLAB_MIRROR`` replaces the download base URL.

Command line::

    advlab data list                    # which data sets are where
    advlab data download NAME           # fetch into the cache (or --data-dir DIR)
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from advlab.errors import AdvlabError

_TIMEOUT_S = 30  # per socket operation: long enough for a slow mirror, short enough not to hang a run


@dataclass(frozen=True)
class FileSpec:
    """A file as its mirror publishes it: name, size in bytes and SHA-256 of those exact bytes."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is (classes, shape, normalization) and where its files come from."""

    name: str
    classes: tuple[str, ...]
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]  # per channel, over the training set, for models.Normalize
    std: tuple[float, ...]
    kind: Literal["idx", "cifar"]  # file format
    train_files: tuple[str, ...]  # idx: (images, labels) without ".gz"; cifar: batch files
    test_files: tuple[str, ...]
    downloads: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order
    subdirs: tuple[str, ...]  # where inside a data folder the files may sit
    system_dir: str | None = None  # installed by a system package


# The LeCun file names, shared by MNIST and Fashion-MNIST: (images, labels), without ".gz".
_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

# Pinned downloads. Sizes and SHA-256 of the .gz/.tar.gz files as served:
# - Fashion-MNIST and MNIST: tensorflow/datasets, tensorflow_datasets/url_checksums/{fashion_mnist,mnist}.txt.
#   Cross-checked: the Debian .gz files differ from these only in the gzip header (Debian's
#   strip-nondeterminism dropped the stored file name and reset the mtime); putting the header back
#   (name + mtime 2017-08-31) reproduces the MD5s in zalandoresearch/fashion-mnist's README and these
#   SHA-256 sums byte for byte. That is also why local files are checked by structure, not by hash.
#   The MNIST sums equal the original yann.lecun.com files, which both mirrors below serve.
# - CIFAR-10: keras-team/keras, keras/datasets/cifar10.py (file_hash); size 170,498,071 bytes, whose MD5
#   c58f30108f718f92721af3b95e74349a is the one torchvision pins.
DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        channels=1, height=28, width=28, mean=(0.2860,), std=(0.3530,),
        kind="idx", train_files=_IDX_TRAIN, test_files=_IDX_TEST,
        downloads=(
            FileSpec("train-images-idx3-ubyte.gz", 26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            FileSpec("train-labels-idx1-ubyte.gz", 29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            FileSpec("t10k-images-idx3-ubyte.gz", 4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            FileSpec("t10k-labels-idx1-ubyte.gz", 5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        subdirs=("", "fashion-mnist", "FashionMNIST/raw"),
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        classes=tuple(str(digit) for digit in range(10)),
        channels=1, height=28, width=28, mean=(0.1307,), std=(0.3081,),
        kind="idx", train_files=_IDX_TRAIN, test_files=_IDX_TEST,
        downloads=(
            FileSpec("train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            FileSpec("train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            FileSpec("t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            FileSpec("t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        subdirs=("", "mnist", "MNIST/raw"),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        channels=3, height=32, width=32,
        # True per-pixel std; the often-copied (0.2023, 0.1994, 0.2010) is a std of per-image means.
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        kind="cifar",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        downloads=(FileSpec(_CIFAR_ARCHIVE, 170498071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        subdirs=("", _CIFAR_DIR, "cifar10", f"cifar10/{_CIFAR_DIR}"),
    ),
}


def _normalized(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` for ``name``; spelling is loose ("FashionMNIST", "cifar-10", "fashion_mnist")."""
    for info in DATASETS.values():
        if _normalized(name) == _normalized(info.name):
            return info
    raise AdvlabError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/advlab``, or ``~/.cache/advlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "advlab"


@dataclass
class ImageData:
    """One split in memory: uint8 images (N, C, H, W), int64 labels (N,), and what they are."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.labels.dtype != torch.int64:
            raise AdvlabError("ImageData needs uint8 images (N, C, H, W) and int64 labels")
        if len(self.images) != len(self.labels):
            raise AdvlabError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices_or_n: int | Sequence[int] | torch.Tensor) -> ImageData:
        """The first ``n`` examples (int), or the examples at the given indices, in that order."""
        if isinstance(indices_or_n, (int, np.integer)):
            if not 0 <= indices_or_n <= len(self):
                raise AdvlabError(f"asked for {indices_or_n} examples but {self.info.name} has {len(self)} here")
            index = torch.arange(int(indices_or_n))
        else:
            index = torch.as_tensor(indices_or_n, dtype=torch.int64).reshape(-1)
            if len(index) and not (-len(self) <= int(index.min()) and int(index.max()) < len(self)):
                raise AdvlabError(f"subset index out of range for {len(self)} examples")
        return ImageData(self.images[index].contiguous(), self.labels[index], self.info)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: float32 pixels in [0, 1] and int64 labels on ``device``, each example once.

        With ``shuffle`` the order comes from ``generator`` (a seeded one makes it reproducible).
        """
        if batch_size < 1:
            raise AdvlabError(f"batch size must be at least 1, got {batch_size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            if drop_last and len(index) < batch_size:
                return
            yield _to_float(self.images[index], device), self.labels[index].to(device)

    def tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(x, y)``: float32 pixels in [0, 1] and int64 labels on ``device``."""
        return _to_float(self.images, device), self.labels.to(device)


def _to_float(images: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    # Move uint8 first: a quarter of the bytes cross the bus, and the division happens on the device.
    return images.to(device).float().div_(255)


def val_split_indices(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices (sorted) of the fixed split of ``n`` training examples used by ``load_dataset``.

    The permutation comes from its own generator seeded 0, so it never depends on the global RNG.
    """
    if not 0 <= val_size < n:
        raise AdvlabError(f"val_size must be between 0 and {n - 1} (the training set has {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    val_size: int = 0,
    download: bool = True,
    progress: bool = True,
) -> ImageData:
    """Load ``split`` ("train", "val" or "test") of a data set into memory.

    With ``val_size > 0`` the training set is split by a fixed permutation: "val" is ``val_size``
    examples, "train" the rest. Files are found as the module docstring says; if they are nowhere and
    ``download`` is true (and no ``data_dir`` was given) they are downloaded into the cache first.
    """
    info = get_info(name)
    if split not in ("train", "val", "test"):
        raise AdvlabError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if split == "val" and val_size <= 0:
        raise AdvlabError("the 'val' split needs val_size > 0 (it is carved out of the training set)")
    folder, _ = locate_dataset(info.name, data_dir)
    if folder is None:
        command = f"advlab data download {info.name}"
        if data_dir is not None:
            raise AdvlabError(
                f"no {info.name} files in {data_dir} (looked for {', '.join(info.train_files + info.test_files)}); "
                f"put them there or run `{command} --data-dir {data_dir}`"
            )
        if not download:
            raise AdvlabError(f"{info.name} not found in $ADVLAB_DATA or {cache_dir()}; run `{command}` or pass --data-dir")
        folder = download_dataset(info.name, progress=progress)
    images, labels = _read_split(info, folder, "test" if split == "test" else "train")
    if split == "test" or val_size == 0:
        # Copies: the parsed arrays stay in an in-process cache and must not be changed through us.
        return ImageData(images.clone(), labels.clone(), info)
    train_index, val_index = val_split_indices(len(labels), val_size)
    index = val_index if split == "val" else train_index
    return ImageData(images[index].contiguous(), labels[index], info)


def _find_in(info: DatasetInfo, root: Path) -> Path | None:
    """The folder under ``root`` that holds every file of ``info`` (or the CIFAR archive), if any."""
    for sub in info.subdirs:
        folder = root / sub
        if info.kind == "idx":
            found = all(_idx_path(folder, base) for base in info.train_files + info.test_files)
        else:
            found = all((folder / f).is_file() for f in info.train_files + info.test_files)
            found = found or (folder / _CIFAR_ARCHIVE).is_file()
        if found:
            return folder
    return None


def _idx_path(folder: Path, base: str) -> Path | None:
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_dataset(name: str, data_dir: str | Path | None = None) -> tuple[Path | None, str]:
    """``(folder, source)`` of the first place holding all files, source being "--data-dir",
    "$ADVLAB_DATA", "cache" or "system"; ``(None, "missing")`` if none does.

    An explicit ``data_dir`` is the only place searched: a typo must not quietly load other files.
    """
    info = get_info(name)
    if data_dir is not None:
        places = [(Path(data_dir).expanduser(), "--data-dir")]
    else:
        places = [(Path(p).expanduser(), "$ADVLAB_DATA") for p in [os.environ.get("ADVLAB_DATA")] if p]
        places.append((cache_dir() / info.name, "cache"))
        if info.system_dir:
            places.append((Path(info.system_dir), "system"))
    for root, source in places:
        folder = _find_in(info, root)
        if folder is not None:
            return folder, source
    return None, "missing"


def list_datasets(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per data set: name, number of classes, (C, H, W), where it was found and from which source."""
    rows = []
    for info in DATASETS.values():
        folder, source = locate_dataset(info.name, data_dir)
        rows.append({
            "name": info.name,
            "classes": len(info.classes),
            "shape": (info.channels, info.height, info.width),
            "location": str(folder) if folder is not None else None,
            "source": source,
        })
    return rows


# ----------------------------------------------------------------------------------------- parsing


def _corrupt(where: str | Path, info: DatasetInfo, problem: str) -> AdvlabError:
    return AdvlabError(
        f"{where}: {problem}; get a good copy: delete it and run `advlab data download {info.name}`, "
        f"or point --data-dir / $ADVLAB_DATA at good files"
    )


def _read_split(info: DatasetInfo, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = info.train_files if split == "train" else info.test_files
    if info.kind == "idx":
        paths = tuple(_idx_path(folder, base) or folder / base for base in files)
    elif all((folder / f).is_file() for f in files):
        paths = tuple(folder / f for f in files)
    else:
        paths = (folder / _CIFAR_ARCHIVE,)
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
        if paths[0].name == _CIFAR_ARCHIVE:
            blobs = {f"{paths[0]}:{name}": raw for name, raw in _read_archive(paths[0], files, info).items()}
        else:
            blobs = {str(p): _read_file(p, info) for p in paths}
        parts = [_parse_cifar_batch(raw, where, info) for where, raw in blobs.items()]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        where = paths[0]
    if images.shape[1:] != (info.channels, info.height, info.width):
        raise _corrupt(where, info, f"images are {images.shape[1:]}, expected {(info.channels, info.height, info.width)}")
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


def _read_archive(path: Path, files: tuple[str, ...], info: DatasetInfo) -> dict[str, bytes]:
    """The named batch files from a CIFAR tarball, read in memory.

    Members are picked by their known names and never extracted by the paths the archive gives, so an
    entry like ``../../x`` can write nothing anywhere.
    """
    wanted = {f"{_CIFAR_DIR}/{name}": name for name in files}
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


# --------------------------------------------------------------------------------------- downloads


class _ChecksumMismatch(Exception):
    pass


def download_dataset(
    name: str, dest: str | Path | None = None, *, mirror: str | None = None, progress: bool = True
) -> Path:
    """Download a data set into ``dest/<name>`` (default: the cache) and return that folder.

    Each file is streamed to a temporary name, checked against its pinned SHA-256 and only then renamed,
    so a failed download never leaves a file that looks complete. ``mirror`` (or ``$ADVLAB_MIRROR``)
    replaces the official base URLs. Files already present with the right hash are kept.
    """
    info = get_info(name)
    folder = (Path(dest).expanduser() if dest is not None else cache_dir()) / info.name
    if info.kind == "cifar" and all((folder / _CIFAR_DIR / f).is_file() for f in info.train_files + info.test_files):
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AdvlabError(f"cannot create {folder} for the download: {err}") from None
    override = mirror or os.environ.get("ADVLAB_MIRROR")
    bases = (override,) if override else info.mirrors
    for spec in info.downloads:
        target = folder / spec.name
        if not (target.is_file() and _sha256(target) == spec.sha256):
            _fetch(spec, target, bases, info, progress)
    if info.kind == "cifar":
        # Extract once so later runs read small pickles instead of gunzipping 170 MB each time.
        archive = folder / _CIFAR_ARCHIVE
        for member, raw in _read_archive(archive, info.train_files + info.test_files, info).items():
            _write_atomic(folder / _CIFAR_DIR / member, raw)
        archive.unlink()
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fetch(spec: FileSpec, target: Path, bases: Sequence[str], info: DatasetInfo, progress: bool) -> None:
    failures = []
    for base in bases:
        url = f"{base.rstrip('/')}/{spec.name}"
        try:
            _download(url, target, spec, progress)
            return
        # URLError, HTTPError and timeouts are OSErrors; a connection cut mid-body is an HTTPException.
        except (OSError, http.client.HTTPException, _ChecksumMismatch) as err:
            failures.append(f"{url} ({err})")
    raise AdvlabError(
        f"could not download {info.name}: {'; '.join(failures)}. Fetch {spec.name} by hand into {target.parent}, "
        f"or put the files in a folder and pass --data-dir DIR or set $ADVLAB_DATA"
    )


def _download(url: str, target: Path, spec: FileSpec, progress: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.name}.", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        request = urllib.request.Request(url, headers={"User-Agent": "advlab"})  # some hosts refuse urllib's
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
            tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name, disable=not progress) as bar,
        ):
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != spec.sha256:
            raise _ChecksumMismatch(
                f"got {size} bytes with SHA-256 {digest.hexdigest()}, expected {spec.size} bytes with {spec.sha256}"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
