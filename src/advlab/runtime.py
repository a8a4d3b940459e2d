"""Where and how the arithmetic runs: the device, the attacks' precision, the CPU memory layout.

Nothing here is module state. A :class:`Runtime` is a frozen value that the caller builds and passes
down (``evaluate(..., runtime=Runtime("cuda", precision="bf16"))``); the attack functions take the one
setting they need, ``channels_last``, as an argument. Nothing touches CUDA at import time: the device
is resolved, and CUDA asked about, only when a ``Runtime`` is created.

Command line: ``--device auto|cpu|cuda|cuda:N`` (train, evaluate, attack, study) and
``--precision fp32|bf16|fp16`` (train, evaluate, attack). Under ``torchrun`` the runtime also carries the
:class:`~advlab.distributed.World` (this process's rank among several), and work is shared out by it.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from advlab.distributed import World
from advlab.errors import AdvlabError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device ``spec`` names, checked to exist: ``auto``/None → ``cuda`` when present, else ``cpu``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise AdvlabError(f"unknown device {spec!r}; choose {DEVICE_HELP}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise AdvlabError(f"unsupported device {spec!r}; choose {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise AdvlabError(
            f"--device {text}: no CUDA device is available here (this torch "
            f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); "
            "use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise AdvlabError(f"--device {text}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
    # With its index, so that it compares equal to the device a model's parameters report.
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


@dataclass(frozen=True)
class Runtime:
    """The device the numbers are computed on, the precision of the attacks' passes, and the CPU layout.

    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``;
    resolved and checked on creation. ``precision``: ``"fp32"`` (the reference), ``"bf16"`` (CPU with
    oneDNN, fast with AVX512-BF16 or AMX; or CUDA) or ``"fp16"`` (CUDA) autocast for the attacks' forward
    and backward passes; examples are always judged in fp32. ``channels_last``: on CPU, run convolutions
    in NHWC layout (oneDNN is faster there: benchmarks/bench_tuning.py, BENCHMARKS.md); it changes no
    value, only the order of float sums and which of several equal maxima a max-pool picks. ``world``: this
    process's place among the ranks torchrun started (:mod:`advlab.distributed`); None for one process.
    """

    device: torch.device | str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    world: World | None = None

    def __post_init__(self) -> None:
        device = resolve_device(self.device)
        object.__setattr__(self, "device", device)
        if self.precision not in PRECISIONS:
            raise AdvlabError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and device.type != "cuda":
            raise AdvlabError("fp16 autocast needs a CUDA device; on CPU use --precision bf16 or fp32")
        if self.precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
            raise AdvlabError("this CPU build of torch has no oneDNN, so no fast bf16; use --precision fp32")
        if not isinstance(self.channels_last, bool):
            raise AdvlabError(f"channels_last must be true or false, got {self.channels_last!r}")

    @classmethod
    def for_model(cls, model: nn.Module, **settings) -> Runtime:
        """A runtime on the device ``model``'s parameters live on (CPU for a model without any)."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return cls(device=device, **settings)

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints: always, but for ranks other than 0 under torchrun."""
        return self.world is None or self.world.main

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the attacks' passes (a no-op context for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def generator(self, seed: int) -> torch.Generator:
        """A random generator seeded with ``seed`` on this device, where the random starts are drawn; under
        torchrun each rank draws its own stream (rank 0's starts as one process's does)."""
        if self.world is not None and self.world.rank > 0:
            seed = (seed + 1_000_003 * self.world.rank) % 2**63
        return torch.Generator(device=self.device).manual_seed(seed)

    @property
    def uses_channels_last(self) -> bool:
        """Whether training keeps its model and batches channels-last: on CPU (oneDNN runs NHWC faster), and on
        CUDA under reduced precision (tensor cores run NHWC convolutions; fp32 gains nothing there)."""
        return self.channels_last and (
            self.device.type == "cpu" or (self.device.type == "cuda" and self.precision != "fp32")
        )

    def to_dict(self) -> dict:
        values = {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last}
        if self.world is not None:
            values["world_size"] = self.world.size
        return values


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two devices are one: ``cuda`` means the current CUDA device, so it equals ``cuda:0`` there."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def _conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """The initialized 4-D (convolution) weights of ``model``; lazy ones not yet shaped are left out."""
    return [p for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter) and p.dim() == 4]


def _plain(module: nn.Module) -> bool:
    """A module whose attributes work as nn.Module's do: no class of it overrides how they are set or found
    (torch.compile's and TorchScript's wrappers forward them to the module they wrap)."""
    kind = type(module)
    return kind.__setattr__ is nn.Module.__setattr__ and kind.__getattr__ is nn.Module.__getattr__


def channels_last_twin(model: nn.Module) -> nn.Module | None:
    """The caller's model with its convolution weights in channels-last layout, or None if it has none.

    A shallow twin: every module is copied without its attributes (``copy.copy``) and given its own
    parameter and submodule dictionaries, in which each convolution weight is a detached channels-last copy.
    Everything else is the caller's very object: other parameters, buffers, random generators, hooks and
    any mutable state. So the twin computes the caller's function and its randomness advances the caller's
    generators, while the caller's modules, parameters and their storage are never changed. What a forward
    pass *rebinds* on ``self`` (an int counter, ``self.cache = ...``) lands on the twin, and hooks receive the
    twin as their module. A model with a module that cannot be copied this way (torch.compile and
    TorchScript wrappers, parametrizations, custom ``__setattr__``) gets None and runs in its own layout;
    so does a model with no convolution. A forward that needs contiguous weights (``weight.view(...)``)
    fails on the twin: attack it with ``channels_last=False``.
    """
    if not _conv_weights(model) or not all(_plain(m) for m in model.modules()):
        return None
    weights: dict[int, torch.Tensor] = {}  # tied weights stay tied
    twins: dict[int, nn.Module] = {}

    def laid_out(p: torch.Tensor | None) -> torch.Tensor | None:
        if p is None or p.dim() != 4:
            return p
        if id(p) not in weights:
            weights[id(p)] = p.detach().to(memory_format=torch.channels_last)
        return weights[id(p)]

    def twin_of(module: nn.Module) -> nn.Module:
        if id(module) not in twins:
            twin = copy.copy(module)
            twins[id(module)] = twin
            # Straight into the twin's __dict__: never through a __setattr__ that could reach the caller.
            twin.__dict__["_parameters"] = {name: laid_out(p) for name, p in module._parameters.items()}
            twin.__dict__["_modules"] = {
                name: None if child is None else twin_of(child) for name, child in module._modules.items()
            }
        return twins[id(module)]

    try:
        return twin_of(model)
    except Exception:  # noqa: BLE001 - an exotic module that cannot be copied simply runs in its own layout
        return None


@contextlib.contextmanager
def fast_layout(model: nn.Module, x: torch.Tensor, enabled: bool = True) -> Iterator[tuple[nn.Module, torch.Tensor]]:
    """Yield ``(model, x)`` to attack with: on CPU, with ``enabled``, a channels-last twin of the model and
    a channels-last view of ``x``; otherwise the two unchanged.

    oneDNN's CPU convolutions are fastest in NHWC (benchmarks/bench_attacks.py, "limit" against "limit
    NCHW"; BENCHMARKS.md). The twin (:func:`channels_last_twin`) costs one copy of the convolution
    weights per call and nothing else; a model whose weights are already channels-last (a model in
    training) is used as it is, and only ``x`` is laid out.
    """
    if not enabled or x.device.type != "cpu" or x.dim() != 4:
        yield model, x
        return
    weights = _conv_weights(model)
    if weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        yield model, x.to(memory_format=torch.channels_last)  # already laid out (a model in training)
        return
    twin = channels_last_twin(model)
    if twin is None:
        yield model, x
        return
    yield twin, x.to(memory_format=torch.channels_last)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        return None


def release_freed_memory() -> None:
    """Give the memory the last batch freed back to the operating system.

    glibc keeps freed heap memory for reuse, and the ever-changing sizes of early-exit sub-batches
    fragment it, so without this the peak memory of an evaluation grows with the number of images
    (measured in benchmarks/bench_eval.py). A no-op where glibc's ``malloc_trim`` is absent.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
