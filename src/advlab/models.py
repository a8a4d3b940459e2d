"""Image classifiers with their input normalization built in, and a small registry to create them.

Every model takes pixels in [0, 1] and returns logits: normalization is the first layer
(:class:`Normalize`), so attacks and ε live in pixel space. Create one by name::

    from advlab.models import create_model, list_models
    model = create_model("small_cnn", dataset="fashion-mnist")
    model = create_model("preact_resnet18", in_channels=3, num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25,) * 3)

From the command line the name goes to ``advlab train --model NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advlab.errors import AdvlabError


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one architecture."""

    constructor: Callable[..., nn.Module]  # called with in_channels, num_classes and any extra arguments
    input_size: tuple[int, int] | None  # the (height, width) it is built for; None: any
    description: str  # one line for `advlab models`
    raw_pixels: bool = False  # its paper fed it [0, 1] pixels, not mean/std-normalized ones


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, description: str, input_size: tuple[int, int] | None = None, raw_pixels: bool = False):
    """Class (or function) decorator: make an architecture available as ``create_model(name)`` and
    ``advlab train --model name``. The constructor takes ``in_channels`` and ``num_classes``.
    ``raw_pixels``: the network's paper fed it pixels in [0, 1]; a data set then gives it no normalization."""

    def decorate(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(constructor, input_size, description, raw_pixels)
        return constructor

    return decorate


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a layer, so the model's input stays in pixel units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise AdvlabError(f"normalization needs one positive std per mean, got mean={mean} std={std}")
        # Buffers, not parameters: they move with .to(device) and are saved, but never trained or attacked.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# Both CNNs below pool before their ReLU. Max-pooling and ReLU commute (ReLU is monotone), so each is the
# same function, with the same gradients up to ties, as the usual conv-ReLU-pool, and loads the same
# checkpoints (no layer with weights moved); but the ReLU and its backward touch 4× fewer values, which
# the profile of an attack's forward-and-backward pass showed among the largest costs after the
# convolutions. tests/test_attacks.py checks the equivalence.


@register_model(
    "small_cnn", input_size=(28, 28), description="fast 2-conv CNN for 28×28 images (default for (Fashion-)MNIST)"
)
class SmallCNN(nn.Module):
    """A fast two-conv network for 28×28 grey images: over 90% on Fashion-MNIST in a couple of CPU epochs
    (BENCHMARKS.md)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )  # pool, then ReLU: see the note above SmallCNN
        # LazyLinear would make the input size free, but breaks loading weights before a first forward.
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def as_sequence(self) -> list[nn.Module]:
        """The layers in the order forward applies them (what interval bound propagation walks)."""
        return [*self.features, *self.classifier]


@register_model(
    "madry_cnn",
    input_size=(28, 28),
    raw_pixels=True,
    description="conv32-conv64-fc1024 network of Madry et al. 2018 for 28×28 images (raw pixels)",
)
class MadryCNN(nn.Module):
    """The MNIST network of Madry et al. 2018 (arXiv:1706.06083): conv32-conv64 (5×5) and a 1024-unit layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )  # pool, then ReLU: see the note above SmallCNN
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(inplace=True), nn.Linear(1024, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def as_sequence(self) -> list[nn.Module]:
        """The layers in the order forward applies them (what interval bound propagation walks)."""
        return [*self.features, *self.classifier]


@register_model(
    "wong_mnist",
    input_size=(28, 28),
    raw_pixels=True,
    description="conv16-conv32 (stride 2) and fc100: Wong et al.'s fast-AT MNIST network (raw pixels)",
)
class WongMNIST(nn.Module):
    """The MNIST network of Wong, Rice & Kolter 2020 (arXiv:2001.03994, ``MNIST/mnist_net.py``): two 4×4
    convolutions of stride 2 (16 and 32 channels), a 100-unit layer; no pooling, no BatchNorm."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(inplace=True), nn.Linear(100, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def as_sequence(self) -> list[nn.Module]:
        """The layers in the order forward applies them (what interval bound propagation walks)."""
        return [*self.features, *self.classifier]


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, arXiv:1603.05027)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


@register_model(
    "preact_resnet18", input_size=(32, 32), description="PreActResNet-18 for 32×32 colour images (CIFAR-10)"
)
class PreActResNet18(nn.Module):
    """PreActResNet-18 for 32×32 images, the standard model of fast adversarial training (Wong et al. 2020)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model(
    "ibp_large", description="conv64-conv64-conv128 (stride 2)-conv128-conv128, fc512: Gowal et al.'s large IBP network"
)
class IBPLarge(nn.Module):
    """The large network of Gowal et al. 2018 (arXiv:1810.12715, Table 1; CROWN-IBP's ``IBP_large``): five
    3×3 convolutions (64, 64, 128 of stride 2, 128, 128 channels), a 512-unit layer; no pooling, so CROWN-IBP
    goes through it. Normalized inputs, as CROWN-IBP's CIFAR-10 loader gives it (a linear map bounds go
    through)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, height: int = 28, width: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * ((height + 1) // 2) * ((width + 1) // 2), 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def as_sequence(self) -> list[nn.Module]:
        """The layers in the order forward applies them (what interval bound propagation walks)."""
        return [*self.features, *self.classifier]


@register_model("linear", description="one linear layer (a baseline and test case)")
class LinearClassifier(nn.Module):
    """A single linear layer on the flattened image: the analytic test case for attacks."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, height: int = 28, width: int = 28) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(x, 1))

    def as_sequence(self) -> list[nn.Module]:
        """The layers in the order forward applies them (what interval bound propagation walks)."""
        return [nn.Flatten(), self.linear]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def takes_raw_pixels(name: str) -> bool:
    """Whether the network ``name`` is fed [0, 1] pixels without mean/std normalization (its paper's way)."""
    return _lookup(name).raw_pixels


def describe_model(name: str) -> str:
    return _lookup(name).description


def _lookup(name: str) -> ModelEntry:
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise AdvlabError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[key]


def create_model(
    name: str,
    *,
    dataset: str | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Sequential:
    """Build ``Normalize(mean, std)`` followed by the named network.

    ``dataset`` fills in channels, classes, image size and normalization from :mod:`advlab.data`
    (no normalization for a ``raw_pixels`` network, as its paper trained it); explicit arguments override
    it. Without either, normalization is the identity.
    Returns an ``nn.Sequential(normalize, net)`` whose input is pixels in [0, 1].
    """
    entry = _lookup(name)
    constructor, size = entry.constructor, entry.input_size
    height = width = None
    if dataset is not None:
        from advlab.data import get_info  # local import: models must not need data to be importable

        info = get_info(dataset)
        in_channels = info.channels if in_channels is None else in_channels
        num_classes = len(info.classes) if num_classes is None else num_classes
        if not entry.raw_pixels:
            mean = info.mean if mean is None else mean
            std = info.std if std is None else std
        height, width = info.height, info.width
        if size is not None and (height, width) != size:
            raise AdvlabError(
                f"model {name!r} is built for {size[0]}×{size[1]} images but {info.name} has "
                f"{height}×{width}; pick another --model (see `advlab models`)"
            )
    in_channels = 1 if in_channels is None else in_channels
    num_classes = 10 if num_classes is None else num_classes
    mean = (0.0,) * in_channels if mean is None else tuple(mean)
    std = (1.0,) * in_channels if std is None else tuple(std)
    if len(mean) != in_channels:
        raise AdvlabError(f"normalization has {len(mean)} channels but the model expects {in_channels}")
    if constructor in (LinearClassifier, IBPLarge) and height is not None:  # their first fc layer's size
        kwargs.setdefault("height", height)
        kwargs.setdefault("width", width)
    try:
        net = constructor(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as err:  # an unknown keyword from a config file
        raise AdvlabError(f"bad arguments for model {name!r}: {err}") from None
    return nn.Sequential(Normalize(mean, std), net)
