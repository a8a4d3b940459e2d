"""What a job reads: the model (:class:`ModelSource`), the images (:class:`DataSource`) and what it is
attacked or certified against (:class:`ThreatModel`), shared by ``evaluate``, ``attack`` and ``certify``.

Each checks what it was given before any work: a user's model and a built-in data set, or the user's own
images (``folder:PATH``, ``npz:PATH``), the ε range of the threat model, the defenses' names.
:func:`open_job` then loads the model onto the device (behind its defenses) and the images, and
:func:`require_compatible` refuses, before any attack, images or budgets the model cannot take.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.attacks.threat import check_norm, max_eps
from advlab.defenses import Preprocessing, defend, parse_defense
from advlab.errors import AdvlabError, check_range
from advlab.model_warnings import ModelWarning, model_warnings, returns_probabilities
from advlab.user_model import UserModel, open_model, provenance, training_record, weights_digest


@dataclass(frozen=True)
class ModelSource:
    """An advlab checkpoint (a run folder or a ``.safetensors`` file) or a user's model (:class:`UserModel`:
    a factory and its weights)."""

    checkpoint: Path | None = None
    user: UserModel | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.user is None):
            raise AdvlabError("name the model: a run folder or .safetensors checkpoint, or --model-from with --weights")

    @classmethod
    def of(cls, source: str | Path | UserModel | ModelSource) -> ModelSource:
        if isinstance(source, ModelSource):
            return source
        return cls(user=source) if isinstance(source, UserModel) else cls(checkpoint=Path(source))

    @property
    def source(self) -> Path | UserModel:
        return self.user if self.user is not None else self.checkpoint

    @property
    def where(self) -> str:
        return str(self.user) if self.user is not None else f"the model in {self.checkpoint}"

    def open(self, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
        return open_model(self.source, device)

    def provenance(self) -> dict[str, Any]:
        return provenance(self.source)

    def digest(self) -> str:
        return weights_digest(self.source)

    def training(self) -> dict[str, Any]:
        return training_record(self.source)


@dataclass(frozen=True)
class DataSource:
    """The images: a built-in data set (``dataset``: a name; by default the one the model was trained on) and
    its ``split``, or the user's images (``dataset`` = ``folder:PATH`` or ``npz:PATH``, resized to
    ``image_size``, with ``classes`` for an npz); the first ``n`` of them (None: all)."""

    dataset: str | None = None
    split: str = "test"
    n: int | None = None
    data_dir: str | Path | None = None
    image_size: tuple[int, int] | None = None
    classes: tuple[str, ...] | None = None
    preprocess: str | None = None  # a named preparation of photos (advlab.data.photos): "imagenet"
    label: str | None = None  # photos (image:): every one's class, an index or a name; None: the model's guess

    def __post_init__(self) -> None:
        from advlab.data.photos import check_preprocess
        from advlab.data.user import is_user_data

        check_preprocess(self.preprocess)
        own = (self.image_size, self.classes, self.preprocess)
        if not is_user_data(self.dataset) and any(v is not None for v in own):
            raise AdvlabError(
                "--image-size, --classes and --preprocess are for your own images "
                "(--data folder:PATH, npz:PATH or image:FILE)"
            )
        if self.label is not None and not str(self.dataset).startswith("image:"):
            raise AdvlabError("--label labels photos (--data image:FILE); a folder's or .npz's labels are its own")
        if self.n is not None and self.n < 1:
            raise AdvlabError(f"--n must be at least 1, got {self.n}")

    def read_user_images(self):
        """The user's own images, read (and refused) before the model is looked for; None for a built-in set."""
        from advlab.data.user import is_user_data, load_user_data

        if not is_user_data(self.dataset):
            return None
        photos = str(self.dataset).startswith("image:")
        classes = None if photos else self.classes  # photos get their names with their labels, from the model
        return load_user_data(self.dataset, image_size=self.image_size, classes=classes, preprocessing=self.preprocess)

    def labelled(self, images, model: nn.Module):
        """Photos given their class names and labels once the model is there (:func:`label_photos`)."""
        from advlab.data.photos import is_unlabelled, label_photos

        if images is None or not is_unlabelled(images):
            return images
        return label_photos(images, model, label=self.label, classes=self.classes)

    def load(self, record: dict, images=None, *, n: int | None = None, progress: bool = True):
        """The user's ``images``, else the split of a built-in set; the first ``n`` (default: this source's)."""
        from advlab.data import load_dataset

        name = self.dataset or record.get("dataset")
        if not name:
            raise AdvlabError("the model names no data set; pass --dataset NAME or --data folder:PATH (or npz:PATH)")
        data = (
            images if images is not None else load_dataset(name, self.split, data_dir=self.data_dir, progress=progress)
        )
        count = self.n if n is None else n
        if count is not None and count > len(data):  # all of them, and one line that says so
            where = name if images is not None else f"{name} {self.split}"
            have = len(data)
            warnings.warn(
                f"{count} images to use (--n, --images or their default), but {where} has {have}: using all {have}"
            )
        return data.subset(min(count, len(data))) if count is not None else data


@dataclass(frozen=True)
class ThreatModel:
    """What the model is attacked or certified against: the norm, the budgets ε (pixel units) and the
    preprocessing defenses in front of the model (``jpeg:quality=75``, ...)."""

    eps: tuple[float, ...] = ()
    norm: str = "linf"
    defenses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        check_norm(self.norm)
        for e in self.eps:
            check_range("--eps", e, 0.0, None)
        self.modules()  # an unknown defense fails before the model loads

    def modules(self) -> list[Preprocessing]:
        return [parse_defense(d) for d in self.defenses]


@dataclass
class Job:
    """A model behind its defenses, its record, the images and what was given for them."""

    source: ModelSource
    model: nn.Module
    record: dict[str, Any]
    data: Any
    defenses: list[Preprocessing]


def open_job(
    source: ModelSource, data: DataSource, threat: ThreatModel, *, device, progress: bool, n: int | None = None
) -> Job:
    """The user's images (read first: a bad folder is refused before the model is looked for), the model
    on ``device`` behind the threat model's defenses, and the images it is measured on."""
    images = data.read_user_images()
    model, record = source.open(device)
    images = data.labelled(images, model)
    defenses = threat.modules()
    return Job(source, defend(model, defenses), record, data.load(record, images, n=n, progress=progress), defenses)


def require_compatible(job: Job, *, budgets: Sequence[tuple[AttackSpec, float]] = (), warn: bool = True) -> None:
    """Refuse, before any attack, a data set whose images or classes the model was not built for: its
    channels and classes against the record, then one image through the model (any other size mismatch);
    and each (attack, ε) of ``budgets`` whose ε the images cannot hold (above 1 in L∞). A user's model
    (:mod:`advlab.user_model`) also gets the model warnings: probabilities are refused, the others warned of
    (``warn``; ``evaluate`` reports them with its result instead)."""
    model, record, data, where = job.model, job.record, job.data, job.source.where
    info = data.info
    args = record.get("model_args", {})
    shape = f"{info.channels}×{info.height}×{info.width}"
    if isinstance(args.get("in_channels"), int) and args["in_channels"] != info.channels:
        raise AdvlabError(
            f"{where} takes {args['in_channels']}-channel images but {info.name} has {shape}; "
            "evaluate it on the data set it was trained on (--dataset)"
        )
    x, _ = data.subset(1).tensors(next((p.device for p in model.parameters()), torch.device("cpu")))
    for attack, eps in budgets:
        check_range(f"--eps for {attack.label}", eps, 0.0, max_eps(attack.norm, x))
    try:
        with torch.inference_mode():
            logits = model(x)
    except (RuntimeError, ValueError, TypeError) as err:
        hint = "; resize them with --image-size HxW" if info.kind == "user" else ""
        raise AdvlabError(
            f"{where} cannot take {info.name}'s {shape} images: {str(err).splitlines()[0]}{hint}"
        ) from None
    if logits.dim() != 2 or logits.shape[1] != len(info.classes):
        raise AdvlabError(
            f"{where} gives {tuple(logits.shape[1:])} outputs per image but {info.name} has "
            f"{len(info.classes)} classes; evaluate it on the data set it was trained on (--dataset)"
        )
    if record.get("source") is not None:  # a user's model: the model warnings before any attack
        xs, ys = data.subset(min(64, len(data))).tensors(x.device)
        with torch.inference_mode():
            if returns_probabilities(model(xs)):
                raise AdvlabError(
                    f"{where} returns probabilities (every row in [0, 1], summing to 1): return the "
                    "logits instead (drop the final softmax), or the attacks' gradients vanish and "
                    "the robustness measured is overstated"
                )
        for warning in model_warnings(model, xs, ys, training=False) if warn else ():  # evaluate runs its own
            warnings.warn(f"{where}: {warning['message']}", ModelWarning, stacklevel=2)


def check_output(out: Path | None, overwrite: bool) -> None:
    """An output file that exists is refused unless ``overwrite``; its folder must be writable, before any work."""
    from advlab.files import check_writable

    if out is not None and out.exists() and not overwrite:
        raise AdvlabError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out is not None:
        check_writable(out)


__all__ = ["DataSource", "Job", "ModelSource", "ThreatModel", "check_output", "open_job", "require_compatible"]
