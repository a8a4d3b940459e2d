"""Several processes, one job: PyTorch's own ``torch.distributed``, as ``torchrun`` starts it.

Nothing home-made: ``torchrun`` launches the processes and sets their ranks, ``init_process_group``
joins them (gloo on CPU, NCCL on CUDA), DistributedDataParallel all-reduces the parameter gradients.
This module is the thin layer the rest of advlab sees: a :class:`World` (this process's rank, the
number of processes) carried by the :class:`~advlab.runtime.Runtime`, with the few collectives advlab
needs, each named for what it is for::

    torchrun --nproc_per_node=2 -m advlab train --preset quick --out runs/ddp          # one machine
    torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m advlab train --preset quick --out runs/ddp      # on each of two

How the work is shared (the convention of every public DDP adversarial-training code): each rank trains
on its own part of every global batch and attacks its own examples; only parameter gradients travel.
Evaluation gives each rank whole batches (batch ``i`` to rank ``i mod world``) and gathers the per-example
flags, so its numbers are those of one process. Only rank 0 reads and writes the run folder; what it
reads (a saved state) and what it decides (a refused folder) reach the other ranks by broadcast, so that a
bad input stops every rank with the same one-line error.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from advlab.errors import AdvlabError

BACKENDS = ("auto", "gloo", "nccl")
# A collective waits this long for a slow rank: rank 0 alone writes reports and checkpoints meanwhile.
TIMEOUT = datetime.timedelta(hours=2)
T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the env:// variables)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@dataclass(frozen=True, eq=False)
class World:
    """This process's place in a job of ``size`` processes; rank 0 is the one that writes files."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def owns(self, batch: int) -> bool:
        """Whether this rank evaluates batch number ``batch``: batch ``i`` goes to rank ``i mod size``."""
        return batch % self.size == self.rank

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (every rank gets the total), and returned."""
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """Whether ``flag`` is true on any rank: one decision that every rank takes together."""
        value = torch.tensor([int(bool(flag))], device=self._collective_device(device))
        return bool(self.sum(value).item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        values: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        return values

    def from_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 only and hand its result, or its AdvlabError, to every rank."""
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", work())
            except AdvlabError as err:
                box[0] = ("error", str(err))
        torch.distributed.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise AdvlabError(value)
        return value

    def average_buffers(self, model: nn.Module) -> None:
        """Average BatchNorm's running statistics over the ranks: each rank's saw only its own examples.

        DDP is built with ``forward_sync_buffers=False`` (a broadcast at every forward pass, the attack's
        included, would cost a collective per pass), so the statistics drift apart during an epoch; they
        are made one again before every evaluation and checkpoint. Other buffers (normalization) are equal
        everywhere and left alone.
        """
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    if buffer is not None:
                        self.sum(buffer).div_(self.size)

    def _collective_device(self, device: torch.device | str) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device(device)


def start(device: str = "auto", backend: str = "auto") -> tuple[World | None, str]:
    """Join the job torchrun started, if any: ``(world, device)``, where ``device`` is this rank's own
    (``cuda:LOCAL_RANK`` on GPUs). Outside torchrun: ``(None, device)``. Bad settings are refused before
    any rank waits for another: NCCL without CUDA, an unknown backend, a device index beside torchrun's."""
    backend = (backend or "auto").strip().lower()
    if backend not in BACKENDS:
        raise AdvlabError(f"unknown --dist-backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not launched():
        if backend != "auto":
            raise AdvlabError(
                f"--dist-backend {backend} needs several processes: start advlab with torchrun "
                "(torchrun --nproc_per_node=2 -m advlab ...)"
            )
        return None, device
    try:
        rank, size, local_rank = (int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise AdvlabError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    text = (device or "auto").strip().lower()
    wants_cuda = text.startswith("cuda") or (text == "auto" and torch.cuda.is_available() and backend != "gloo")
    if backend == "nccl" and not wants_cuda:
        raise AdvlabError(
            "--dist-backend nccl needs CUDA GPUs"
            + ("" if torch.cuda.is_available() else " and none is available here")
            + "; use --dist-backend gloo (or auto) on CPU"
        )
    if wants_cuda:
        if not torch.cuda.is_available():
            raise AdvlabError(f"--device {text}: no CUDA device is available here; use --device cpu (gloo)")
        if ":" in text:
            raise AdvlabError(f"--device {text}: under torchrun each rank takes cuda:LOCAL_RANK; say --device cuda")
        if local_rank >= torch.cuda.device_count():
            raise AdvlabError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA device(s) here: "
                "start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        backend = "nccl" if backend == "auto" else backend
    else:
        device, backend = "cpu", "gloo" if backend == "auto" else backend
    if not torch.distributed.is_available():
        raise AdvlabError("this torch build has no torch.distributed; run advlab without torchrun")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, timeout=TIMEOUT)
    return World(rank=rank, size=size, local_rank=local_rank, backend=backend), device


def on_main(world: World | None, work: Callable[[], T]) -> T:
    """``work()`` in one process; under torchrun, run on rank 0 and its result (or error) handed to every rank."""
    return work() if world is None else world.from_main(work)


def stop(*, finished: bool = True) -> None:
    """Leave the job (at the end of a command run under torchrun). A rank that ``finished`` its command
    first waits for the others at a barrier, so that none tears its process group down while a peer still
    has collective work in flight (gloo's threads then abort with "terminate called without an active
    exception"); a rank that failed leaves at once, which ends its peers' pending collectives with an error
    instead of a wait for the timeout."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if finished:
            try:
                torch.distributed.barrier()
            except RuntimeError:  # a peer failed and left first (DistBackendError is one): nothing to wait for
                pass
        torch.distributed.destroy_process_group()


def wrap(model: nn.Module, world: World | None, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel for ``world`` (the model itself outside torchrun)."""
    if world is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (what is saved, verified and bounded)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


__all__ = ["BACKENDS", "World", "launched", "on_main", "start", "stop", "unwrap", "wrap"]
