"""Image files: read under one set of rules (for class folders and single photos alike), single photos, and
the named preprocessing a pretrained model expects.

    advlab attack --model-from torchvision.models:resnet50 --model-args '{"weights": "IMAGENET1K_V2"}' \\
        --normalize imagenet --preprocess imagenet --data image:panda.jpg --classes imagenet.txt --eps 1/255 --out panda

``image:FILE`` (several separated by commas, or a glob such as ``image:photos/*.jpg``) reads each file with
Pillow under the same rules as a class folder (:mod:`advlab.data.user`: 8-bit grey or colour, no
transparency). A photo has no label: ``--label CLASS`` (an index or a name) gives them all one; without it
each photo's label is the model's own clean prediction (:func:`label_photos`, once the model is loaded), and
the output says so. ``--preprocess imagenet`` resizes the shorter side to 256 pixels (bilinear, with
antialiasing) and crops the central 224 × 224, as torchvision's ImageNet models are evaluated; ε is then in
pixel units of the cropped image.
"""

from __future__ import annotations

import dataclasses
import glob
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from advlab.data.catalogue import DatasetInfo
from advlab.data.images import ImageData
from advlab.errors import AdvlabError
from advlab.memory import fitting_batch

PREPROCESSING = {"imagenet": (256, 224)}  # name → (shorter side after resizing, central crop)
UNLABELLED = -1  # a photo's label until the model or --label gives one
MAX_PIXELS = 64 * 10**6  # per image: above it a file is refused before decoding (a 20,000² PNG bomb is 400M)
_GREY_MODES = ("L", "1")
_COLOUR_MODES = ("RGB", "P", "CMYK", "YCbCr", "RGBA", "LA", "PA", "RGBa", "La")


def check_preprocess(name: str | None) -> str | None:
    if name is not None and name not in PREPROCESSING:
        raise AdvlabError(f"unknown --preprocess {name!r}; known: {', '.join(PREPROCESSING)}")
    return name


def preprocess(image, name: str | None):
    """A Pillow image as ``name`` prepares it (None: unchanged)."""
    if name is None:
        return image
    from PIL import Image

    side, crop = PREPROCESSING[name]
    width, height = image.size
    scale = side / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


def photo_files(spec: str) -> list[Path]:
    """The files of ``image:A.jpg,B.png`` or ``image:folder/*.jpg``, in the order given (a glob sorted)."""
    files: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(Path(part).expanduser())) if Path(p).is_file())
            if not found:
                raise AdvlabError(f"--data image:{part}: no file matches")
            files += found
        else:
            path = Path(part).expanduser()
            if not path.is_file():
                raise AdvlabError(f"--data image:{part}: {path} does not exist")
            files.append(path)
    if not files:
        raise AdvlabError("--data image: names no file (image:FILE, image:A.jpg,B.png or image:'photos/*.jpg')")
    return files


def load_photos(spec: str, *, image_size: tuple[int, int] | None = None, preprocessing: str | None = None) -> ImageData:
    """``image:...`` as unlabelled images (labels :data:`UNLABELLED`, no class names yet)."""
    files = photo_files(spec.partition(":")[2])
    pixels = read_images(files, image_size, preprocessing)
    info = images_info(f"image:{','.join(str(f) for f in files)}", (), pixels)
    return ImageData(pixels.contiguous(), torch.full((len(files),), UNLABELLED, dtype=torch.int64), info)


def images_info(name: str, classes: tuple[str, ...], pixels: torch.Tensor) -> DatasetInfo:
    """What a user's images are: their shape, classes and per-channel mean and std (no files to fetch)."""
    channels, height, width = pixels.shape[1:]
    floats = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels
    mean = tuple(float(v) for v in floats.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-6) for v in floats.std(dim=(0, 2, 3))) if len(floats) > 1 else (1.0,) * channels
    return DatasetInfo(
        name=name,
        classes=classes,
        channels=channels,
        height=height,
        width=width,
        mean=mean,
        std=std,
        kind="user",
        train_files=(),
        test_files=(),
        downloads=(),
        mirrors=(),
        subdirs=(),
    )


def is_unlabelled(data: ImageData) -> bool:
    return data.info.name.startswith("image:") and not data.info.classes


def label_photos(
    data: ImageData, model: torch.nn.Module, *, label: str | None, classes: Sequence[str] | None
) -> ImageData:
    """Give photos their class names (``classes``, else the model's output indices) and their labels:
    ``label`` (an index or a name) for all, else each photo's own clean prediction, said on one line."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, _ = data.tensors(device)
    batch = fitting_batch(model, x[:1], device, ceiling=256)  # many 224×224 photos: a few at a time
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    if logits.dim() != 2:
        raise AdvlabError(f"the model gives outputs of shape {tuple(logits.shape[1:])} per image, not one per class")
    count = logits.shape[1]
    names = tuple(classes) if classes else tuple(str(i) for i in range(count))
    if len(names) != count:
        raise AdvlabError(f"--classes names {len(names)} classes but the model gives {count} outputs per image")
    if label is None:
        labels = logits.argmax(1).cpu()
        warnings.warn(
            "no --label: each photo's label is the model's own clean prediction "
            f"({', '.join(names[i] for i in labels[:5].tolist())}{', ...' if len(labels) > 5 else ''})"
        )
        source = "the model's clean predictions"
    else:
        labels = torch.full((len(data),), class_index(label, names, flag="--label"), dtype=torch.int64)
        source = f"--label {label}"
    info = dataclasses.replace(data.info, classes=names, name=f"{data.info.name} (labels: {source})")
    return ImageData(data.images, labels, info)


def class_index(value: str | int, names: Sequence[str], *, flag: str) -> int:
    """A class given by index or by name, checked against ``names``."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise AdvlabError(f"{flag} must be a class index from 0 to {len(names) - 1} or a class name, got {text}")
        return index
    if text in names:
        return list(names).index(text)
    close = [n for n in names if text.lower() in n.lower()][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else " (--classes names them)"
    raise AdvlabError(f"{flag} {text!r} is not a class name{hint}")


def read_images(paths: Sequence[Path], image_size, preprocessing: str | None = None) -> torch.Tensor:
    """The image files as one uint8 (N, C, H, W) tensor: grey, or colour if any is (the module docstring's
    rules: :mod:`advlab.data.user`), prepared by ``preprocessing``, then resized to ``image_size`` if given,
    else all of one size."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:  # reads the header only: the size is known before decoding
                    width, height = image.size
                    if width * height > MAX_PIXELS:
                        raise AdvlabError(
                            f"{path} declares {width}x{height} pixels, over {MAX_PIXELS // 10**6} million: "
                            "refused before decoding (a decompression bomb, or far larger than any model "
                            "takes); resize it first"
                        )
                    image.load()
                    images.append((path, image.copy()))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise AdvlabError(f"cannot read image {path}: {str(err).splitlines()[0] or type(err).__name__}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise AdvlabError(f"{path} refused before decoding: {str(err).splitlines()[0]}") from None
    colour = any(_mode_of(path, image) == "RGB" for path, image in images)
    arrays = []
    first_size = None
    for path, image in images:
        image = preprocess(image.convert("RGB" if colour else "L"), preprocessing)
        if image_size is not None:
            if image.size != (image_size[1], image_size[0]):
                image = image.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
        elif first_size is None:
            first_size = (path, image.size)
        elif image.size != first_size[1]:
            (w0, h0), (w1, h1) = first_size[1], image.size
            raise AdvlabError(
                f"images of different sizes: {first_size[0]} is {h0}x{w0}, {path} is {h1}x{w1}; "
                "pass --image-size HxW (or --preprocess imagenet) to bring them to one size"
            )
        arrays.append(as_uint8(image))
    return torch.from_numpy(np.stack(arrays))


def _mode_of(path: Path, image) -> str:
    """ "L" or "RGB": what an image's mode becomes, or a refusal where converting would invent or round."""
    mode = image.mode
    if mode in _GREY_MODES:
        return "L"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F", "RGBX") or mode not in _COLOUR_MODES:
        raise AdvlabError(
            f"{path} has mode {mode} (more than 8 bits per channel, or unknown): save it as 8-bit PNG or JPEG"
        )
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            raise AdvlabError(
                f"{path} has transparent pixels: flatten it onto a background first (advlab "
                "will not choose a colour for them)"
            )
    if mode in ("LA", "La"):
        return "L"
    return "RGB"


def as_uint8(image) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


__all__ = [
    "PREPROCESSING",
    "check_preprocess",
    "class_index",
    "is_unlabelled",
    "label_photos",
    "load_photos",
    "preprocess",
    "read_images",
]
