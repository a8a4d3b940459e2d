"""One split of a data set in memory: uint8 images (or a user's float32 ones) served as float32 NCHW
batches in [0, 1].

    train = load_dataset("fashion-mnist", "train", val_size=5000)      # an ImageData
    for x, y in train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...
    x, y = train.subset(8).tensors()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from advlab.data.catalogue import DatasetInfo
from advlab.errors import AdvlabError


@dataclass
class ImageData:
    """One split in memory: images (N, C, H, W), int64 labels (N,), and what they are. Images are uint8,
    or float32 in [0, 1] for a user's ``.npz`` of floats (:mod:`advlab.data.user`), kept unrounded."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if (
            self.images.dtype not in (torch.uint8, torch.float32)
            or self.images.dim() != 4
            or self.labels.dtype != torch.int64
        ):
            raise AdvlabError("ImageData needs uint8 or float32 images (N, C, H, W) and int64 labels")
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
        index = index.to(self.images.device)
        return ImageData(self.images[index].contiguous(), self.labels[index], self.info)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
        skip: int = 0,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: float32 pixels in [0, 1] and int64 labels on ``device``, each example once.

        With ``shuffle`` the order comes from ``generator`` (a seeded one makes it reproducible); ``skip``
        leaves out the first batches of that order (an epoch resumed in its middle). ``shard=(rank, world)``
        yields only this rank's part of each batch, its examples ``rank, rank + world, ...``: the ranks'
        parts of batch ``i`` together are batch ``i`` of one process with the same generator. A last batch
        smaller than ``world`` would leave a rank empty-handed, so then it is left out on every rank.
        """
        if batch_size < 1:
            raise AdvlabError(f"batch size must be at least 1, got {batch_size}")
        rank, world = shard if shard is not None else (0, 1)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(skip * batch_size, len(self), batch_size):
            index = order[start : start + batch_size]
            if (drop_last and len(index) < batch_size) or len(index) < world:
                return
            index = index[rank::world].to(self.images.device)
            yield _to_float(self.images[index], device), self.labels[index].to(device)

    def to(self, device: torch.device | str | None) -> ImageData:
        """This split with its images and labels on ``device``: on a GPU, batches are then cut there, with no
        copy from the host per batch (a CIFAR-10 training set is 150 MB as uint8)."""
        return ImageData(self.images.to(device), self.labels.to(device), self.info)

    def tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(x, y)``: float32 pixels in [0, 1] and int64 labels on ``device``."""
        return _to_float(self.images, device), self.labels.to(device)


def _to_float(images: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    # Move uint8 first: a quarter of the bytes cross the bus, and the division happens on the device.
    if images.dtype == torch.float32:
        return images.to(device, copy=True)
    return images.to(device).float().div_(255)


def val_split_indices(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices (sorted) of the fixed split of ``n`` training examples used by ``load_dataset``.

    The permutation comes from its own generator seeded 0, so it never depends on the global RNG.
    """
    if not 0 <= val_size < n:
        raise AdvlabError(f"val_size must be between 0 and {n - 1} (the training set has {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[val_size:].sort().values, perm[:val_size].sort().values
