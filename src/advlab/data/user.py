"""Your own images: a folder of class subfolders, or a NumPy ``.npz`` file, served like the built-in sets.

    advlab evaluate --model-from my_pkg.nets:build --weights net.safetensors --data folder:photos --eps 8/255
    advlab evaluate runs/pgd --data npz:test.npz --eps 0.1

``folder:PATH``: one subfolder per class, class names sorted (``PATH/cat/*.png``, ``PATH/dog/*.jpg``: class 0
is ``cat``). PNG and JPEG files are read with Pillow, hidden files are skipped; any other file, an empty
class folder or an image Pillow cannot read is refused, naming it. Modes: grey images (``L``, ``1``) give one
channel; colour (``RGB``, palette, CMYK, opaque ``RGBA``/``LA``) three. A folder that mixes grey and colour
images is read as colour (grey copied to the three channels, which is what it looks like). An image with
transparent pixels or more than 8 bits per channel is refused: no colour to fill in, no rounding, behind
the user's back. Sizes: with ``--image-size HxW`` (or ``N``) every image is resized to it (bilinear, with
antialiasing); without it every image must already share one size.

``npz:PATH``: arrays ``x`` and ``y``. ``x`` is (N, C, H, W), (N, H, W, C) with C = 1 or 3, or (N, H, W) grey;
uint8 (or any integer type with values in [0, 255]) or float with values in [0, 1]. Float pixels are kept
as they are (no rounding to 8 bits). ``y`` holds class indices from 0. Class names: an optional array
``classes`` in the file, else ``--classes a,b,c``, else the indices. ``--image-size`` resizes here too.

Images are pixels in [0, 1] with no normalization: a model that expects normalized input takes
``--normalize MEAN,STD`` (:mod:`advlab.user_model`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from advlab.data.images import ImageData
from advlab.data.photos import images_info, load_photos, read_images
from advlab.errors import AdvlabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATA_KINDS = ("folder", "npz", "image")


def is_user_data(spec: str | None) -> bool:
    """True for ``folder:PATH``, ``npz:PATH`` and ``image:FILES``, the forms :func:`load_user_data` reads."""
    return spec is not None and spec.split(":", 1)[0] in DATA_KINDS and ":" in spec


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"32"`` → (32, 32); ``"28x28"`` or ``"28×28"`` → (28, 28); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1 or max(size) > 4096:
        raise AdvlabError(f"--image-size must be N or HxW with sides from 1 to 4096 (e.g. 32 or 28x28), got {text!r}")
    return size  # type: ignore[return-value]


def load_user_data(
    spec: str,
    *,
    image_size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    preprocessing: str | None = None,
) -> ImageData:
    """Read ``folder:PATH``, ``npz:PATH`` (see the module docstring) or ``image:FILES`` (unlabelled photos,
    :mod:`advlab.data.photos`) into an :class:`ImageData`."""
    kind, _, path_text = spec.partition(":")
    if kind not in DATA_KINDS or not path_text:
        raise AdvlabError(f"--data must be folder:PATH, npz:PATH or image:FILE, got {spec!r}")
    if kind == "image":
        return load_photos(spec, image_size=image_size, preprocessing=preprocessing)
    if kind == "npz" and preprocessing is not None:
        raise AdvlabError("--preprocess prepares photos (--data folder: or image:); an .npz holds pixels already")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise AdvlabError(f"--data {spec}: {path} does not exist")
    if kind == "folder":
        if classes is not None:
            raise AdvlabError("--classes names the classes of an .npz file; a folder's classes are its subfolders")
        pixels, labels, names = _read_folder(path, image_size, preprocessing)
    else:
        pixels, labels, names = _read_npz(path, image_size, classes)
    info = images_info(f"{kind}:{path}", tuple(names), pixels)
    return ImageData(pixels.contiguous(), labels, info)


def _read_folder(root: Path, image_size, preprocessing) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if not root.is_dir():
        raise AdvlabError(f"--data folder:{root}: not a folder (give a folder with one subfolder per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise AdvlabError(f"{root} has no class subfolders: put each class's images in a subfolder named after it")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if loose:
        raise AdvlabError(
            f"{root} holds files outside the class subfolders ({loose[0]}...): move them into a "
            "class subfolder or out of the folder"
        )
    files: list[tuple[Path, int]] = []
    for label, folder in enumerate(class_dirs):
        found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        others = [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise AdvlabError(
                f"{others[0]} is not a PNG or JPEG image (only .png, .jpg and .jpeg are read); remove it or convert it"
            )
        if not found:
            raise AdvlabError(f"class folder {folder} has no images: remove it or add its images")
        files += [(p, label) for p in found]
    pixels = read_images([path for path, _ in files], image_size, preprocessing)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return pixels, labels, [p.name for p in class_dirs]


def _read_npz(path: Path, image_size, classes) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise AdvlabError(
                    f"{path} has no array {' or '.join(repr(k) for k in missing)} (it holds "
                    f"{', '.join(archive.files) or 'nothing'}); save images as x and labels as y"
                )
            x, y = archive["x"], archive["y"]
            stored = archive["classes"] if "classes" in archive.files else None
    except AdvlabError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise AdvlabError(f"cannot read {path} as a NumPy .npz file: {str(err).splitlines()[0]}") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise AdvlabError(f"{path}: x has shape {x.shape}; give (N, C, H, W), (N, H, W, C) or (N, H, W)")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise AdvlabError(f"{path}: x has shape {x.shape}: no axis of 1 or 3 channels after N")
    if len(x) == 0:
        raise AdvlabError(f"{path}: x holds no images")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise AdvlabError(f"{path}: integer pixels must lie in [0, 255], these lie in [{low}, {high}]")
        pixels = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise AdvlabError(f"{path}: x holds NaN or infinite pixels")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            hint = " (8-bit values as floats? store them as uint8)" if high <= 255 and low >= 0 else ""
            raise AdvlabError(f"{path}: float pixels must lie in [0, 1], these lie in [{low:g}, {high:g}]{hint}")
        pixels = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise AdvlabError(f"{path}: x has dtype {x.dtype}; give uint8 or float pixels")
    if y.ndim != 1 or len(y) != len(x) or not (np.issubdtype(y.dtype, np.integer)):
        raise AdvlabError(f"{path}: y must be {len(x)} integer class indices, got shape {y.shape} of {y.dtype}")
    if stored is not None and classes is not None:
        raise AdvlabError(f"{path} names its classes already; leave out --classes")
    names = [str(c) for c in (stored.tolist() if stored is not None else classes or [])]
    count = len(names) or int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= count:
        raise AdvlabError(
            f"{path}: labels must lie in [0, {count - 1}] ({count} classes), these lie in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    if image_size is not None and tuple(pixels.shape[2:]) != tuple(image_size):
        as_float = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels
        resized = F.interpolate(as_float, size=image_size, mode="bilinear", antialias=True, align_corners=False)
        pixels = resized.clamp_(0, 1)
    return pixels, torch.from_numpy(y.astype(np.int64)), names or [str(i) for i in range(count)]
