"""How many images an attack's batch can hold: what one image's forward pass keeps for the backward pass,
measured on the model, against the memory free on the device, so that a ResNet-50 at 224 × 224 does not
take 256 images at once (tens of GiB) while a 28 × 28 network keeps the measured best of 256. On a CPU a
batch is also kept under :data:`CPU_BATCH_BYTES` of activations: more is slower there, not faster.

    batch = fitting_batch(model, x[:1], device, ceiling=256)     # at most the ceiling, at least 1
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SHARE = 0.5  # of the free memory, for the attack's batch: the rest for the process, the data and the OS
KEPT_PER_ACTIVATION = 3  # an attack's pass keeps each activation, its gradient and working space
# Measured (benchmarks/results/imagenet-batch-trial.json and imagenet-size-detail.json, 2-core AMD EPYC):
# PGD-10 through a ResNet-50 at 224 × 224 (116 MiB of activations an image) took 1.03 and 1.20 s an image in
# batches of 8, 0.98 and 1.37 in 16 (1.9 GiB of activations), 1.35 and 1.61 in 32 (3.7 GiB). A PreAct
# ResNet-18 at 32 × 32 (4.5 MiB an image) keeps its 256.
CPU_BATCH_BYTES = 2 << 30


def free_bytes(device: torch.device | str) -> int:
    """Memory free for tensors on ``device``: CUDA's own count, or the OS's MemAvailable for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # not Linux: assume 4 GiB


def activation_bytes(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes of every leaf module's output for the one image ``x1``: what a backward pass keeps."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for handle in handles:
            handle.remove()
    return max(total, x1.numel() * x1.element_size())


def fitting_batch(model: nn.Module, x1: torch.Tensor, device: torch.device | str, *, ceiling: int) -> int:
    """The largest batch up to ``ceiling`` whose attack passes fit in :data:`SHARE` of the free memory (on a
    CPU, also at most :data:`CPU_BATCH_BYTES` of activations)."""
    per_image = activation_bytes(model, x1[:1])
    fits = int(SHARE * free_bytes(device) // (KEPT_PER_ACTIVATION * per_image))
    if torch.device(device).type == "cpu":
        fits = min(fits, CPU_BATCH_BYTES // per_image)
    return max(1, min(ceiling, fits))


__all__ = ["CPU_BATCH_BYTES", "activation_bytes", "fitting_batch", "free_bytes"]
