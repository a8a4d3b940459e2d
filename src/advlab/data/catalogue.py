"""The catalogue of data sets: what each one is (classes, shape, normalization), where its files are
published (pinned sizes and SHA-256 sums) and where on this machine they are found.

Files are looked for, in order, in: the ``data_dir`` argument (``--data-dir``), ``$ADVLAB_DATA``, the user
cache (``$XDG_CACHE_HOME/advlab/<name>``, default ``~/.cache/advlab``) and, for Fashion-MNIST, the Debian
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). A folder may hold the files
directly, in ``<name>/``, or in torchvision's layout (``MNIST/raw``, ``FashionMNIST/raw``,
``cifar-10-batches-py/``, ``cifar-10-python.tar.gz``).

Command line: ``advlab data list`` shows which data sets are where.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from advlab.errors import AdvlabError


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
    kind: Literal["idx", "cifar", "user"]  # file format; user: a folder or .npz (advlab.data.user)
    train_files: tuple[str, ...]  # idx: (images, labels) without ".gz"; cifar: batch files
    test_files: tuple[str, ...]
    downloads: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order
    subdirs: tuple[str, ...]  # where inside a data folder the files may sit
    system_dir: str | None = None  # installed by a system package


# The LeCun file names, shared by MNIST and Fashion-MNIST: (images, labels), without ".gz".
_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

# Pinned downloads. Sizes and SHA-256 of the .gz/.tar.gz files as served:
# - Fashion-MNIST and MNIST: tensorflow/datasets, tensorflow_datasets/url_checksums/{fashion_mnist,mnist}.txt.
#   Cross-checked: the Debian .gz files differ from these only in the gzip header (Debian's
#   strip-nondeterminism dropped the stored file name and reset the mtime); putting the header back
#   (name + mtime 2017-08-31) reproduces the MD5s in zalandoresearch/fashion-mnist's README and these
#   SHA-256 sums byte for byte. That is also why local files are checked by structure, not by hash.
#   The MNIST sums equal the original yann.lecun.com files, which both mirrors below serve.
# - CIFAR-10: keras-team/keras, keras/datasets/cifar10.py (file_hash); size 170,498,071 bytes, whose MD5
#   c58f30108f718f92721af3b95e74349a is the one torchvision pins.
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Make a data set available by its name (``--dataset NAME``, configs): its classes, shape,
    normalization and pinned files; a new one is one call, with its files' sizes and SHA-256 sums."""
    if info.name in DATASETS:
        raise ValueError(f"data set {info.name!r} is registered twice")
    DATASETS[info.name] = info
    return info


register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        channels=1,
        height=28,
        width=28,
        mean=(0.2860,),
        std=(0.3530,),
        kind="idx",
        train_files=_IDX_TRAIN,
        test_files=_IDX_TEST,
        downloads=(
            FileSpec(
                "train-images-idx3-ubyte.gz",
                26421880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            FileSpec(
                "train-labels-idx1-ubyte.gz", 29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            FileSpec(
                "t10k-images-idx3-ubyte.gz", 4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            FileSpec(
                "t10k-labels-idx1-ubyte.gz", 5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        subdirs=("", "fashion-mnist", "FashionMNIST/raw"),
        system_dir="/usr/share/datasets/fashion-mnist",
    )
)

register_dataset(
    DatasetInfo(
        name="mnist",
        classes=tuple(str(digit) for digit in range(10)),
        channels=1,
        height=28,
        width=28,
        mean=(0.1307,),
        std=(0.3081,),
        kind="idx",
        train_files=_IDX_TRAIN,
        test_files=_IDX_TEST,
        downloads=(
            FileSpec(
                "train-images-idx3-ubyte.gz",
                9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            FileSpec(
                "train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            FileSpec(
                "t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            FileSpec(
                "t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        subdirs=("", "mnist", "MNIST/raw"),
    )
)

register_dataset(
    DatasetInfo(
        name="cifar10",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        channels=3,
        height=32,
        width=32,
        # True per-pixel std; the often-copied (0.2023, 0.1994, 0.2010) is a std of per-image means.
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        kind="cifar",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        downloads=(
            FileSpec(CIFAR_ARCHIVE, 170498071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
        ),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        subdirs=("", CIFAR_DIR, "cifar10", f"cifar10/{CIFAR_DIR}"),
    )
)


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


def _find_in(info: DatasetInfo, root: Path) -> Path | None:
    """The folder under ``root`` that holds every file of ``info`` (or the CIFAR archive), if any."""
    for sub in info.subdirs:
        folder = root / sub
        if info.kind == "idx":
            found = all(idx_path(folder, base) for base in info.train_files + info.test_files)
        else:
            found = all((folder / f).is_file() for f in info.train_files + info.test_files)
            found = found or (folder / CIFAR_ARCHIVE).is_file()
        if found:
            return folder
    return None


def idx_path(folder: Path, base: str) -> Path | None:
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
        rows.append(
            {
                "name": info.name,
                "classes": len(info.classes),
                "shape": (info.channels, info.height, info.width),
                "location": str(folder) if folder is not None else None,
                "source": source,
            }
        )
    return rows
