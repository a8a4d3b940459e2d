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

from pathlib import Path

from advlab.data.catalogue import DATASETS, DatasetInfo, FileSpec, cache_dir, get_info, list_datasets, locate_dataset
from advlab.data.download import download_dataset
from advlab.data.formats import read_split
from advlab.data.images import ImageData, val_split_indices
from advlab.errors import AdvlabError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FileSpec",
    "ImageData",
    "cache_dir",
    "download_dataset",
    "get_info",
    "list_datasets",
    "load_dataset",
    "locate_dataset",
    "val_split_indices",
]


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
            raise AdvlabError(
                f"{info.name} not found in $ADVLAB_DATA or {cache_dir()}; run `{command}` or pass --data-dir"
            )
        folder = download_dataset(info.name, progress=progress)
    images, labels = read_split(info, folder, "test" if split == "test" else "train")
    if split == "test" or val_size == 0:
        # Copies: the parsed arrays stay in an in-process cache and must not be changed through us.
        return ImageData(images.clone(), labels.clone(), info)
    train_index, val_index = val_split_indices(len(labels), val_size)
    index = val_index if split == "val" else train_index
    return ImageData(images[index].contiguous(), labels[index], info)
