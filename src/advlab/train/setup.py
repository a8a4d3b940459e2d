"""What a training run is built from, outside the trainer's story: the model initialized from the seed, the
device's settings for a run, the resume's world-size check, and the console lines."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

import torch
from torch import nn

from advlab.data import load_dataset
from advlab.errors import AdvlabError
from advlab.models import create_model, takes_raw_pixels
from advlab.runtime import Runtime
from advlab.train.config import TrainConfig

# An overwritten run's files must not pass for this run's: removed when a run starts afresh.
RUN_FILES = (
    "state.safetensors",
    "best.safetensors",
    "best.json",
    "summary.json",
    "metrics.jsonl",
    "metrics.csv",
    "guard.jsonl",
    "model.safetensors",
    "model.json",
)


def load_training_data(config: TrainConfig, world, device: torch.device, *, progress: bool):
    """``(train, val, check, probe)``: the training images (the first ``train_size``), the held-out validation
    split, its first ``check_examples`` (each epoch's check) and their first ``co_check_examples`` (the guard's
    check within epochs); on CUDA all moved to the GPU once, for the whole run."""
    split = dict(data_dir=config.data_dir, val_size=config.val_size, progress=progress)
    train_data = load_dataset(config.dataset, "train", **split)
    if config.train_size is not None:
        train_data = train_data.subset(config.train_size)
    val_data = load_dataset(config.dataset, "val", **split)
    check_data = val_data.subset(min(config.check_examples, len(val_data)))
    if world is not None and min(len(train_data), config.batch_size) < world.size:
        raise AdvlabError(
            f"{world.size} processes but a batch of {min(len(train_data), config.batch_size)} training "
            "images: every rank needs examples of its own; start fewer processes"
        )
    if device.type == "cuda":  # on the GPU for the whole run: batches are cut there, no copy per batch
        train_data, val_data, check_data = (d.to(device) for d in (train_data, val_data, check_data))
    return train_data, val_data, check_data, check_data.subset(min(config.co_check_examples, len(check_data)))


def run_record(config: TrainConfig, info, model_args: dict[str, Any], runtime: Runtime, method) -> dict[str, Any]:
    """What every checkpoint of the run records besides its epoch and metrics (what rebuilds the model)."""
    return {
        "model": config.model,
        "model_args": model_args,
        "dataset": info.name,
        "training_runtime": runtime.to_dict(),
        "normalization": {"mean": model_args["mean"], "std": model_args["std"]},
        "config": config.to_dict(),
        "smoothing_sigma": method.smoothing_sigma(),
    }  # the noise advlab certify smooths it with


@contextlib.contextmanager
def cudnn_tuned(device: torch.device):
    """On CUDA, cuDNN's benchmark mode for the run (training's batch shapes are fixed: it picks the fastest
    kernels once), and the caller's setting back afterwards (early-exit evaluation has many shapes)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def check_world(saved_state, runtime: Runtime) -> None:
    """A state saved by N processes resumes with N: each rank's random streams are saved apart."""
    size = runtime.world.size if runtime.world is not None else 1
    saved = saved_state[1].get("world_size", 1) if saved_state is not None else size
    if saved != size:
        how = "without torchrun" if saved == 1 else f"with torchrun and {saved} processes in all"
        raise AdvlabError(
            f"this run was trained by {saved} process(es) and resumes only {how} (each rank's "
            f"random streams are saved apart), not with {size}; or start afresh with --overwrite"
        )


def build_model(config: TrainConfig, info, runtime: Runtime) -> tuple[nn.Module, dict[str, Any]]:
    """The model, initialized from the seed without touching the global RNG, and the arguments that rebuild it.

    On CPU its convolution weights are kept channels-last: oneDNN runs NHWC faster, above all the attacks'
    input-gradient passes (benchmarks/bench_train.py). The model is this run's own object; only the layout
    changes, values and results are those of the default layout up to float summation order, and
    checkpoints are saved contiguous as ever.
    """
    # A raw-pixel network (wong_mnist, madry_cnn) as its paper fed it; the data set's name lets create_model fill
    # in what some networks need (linear: the image size); the explicit values keep the checkpoint's
    # normalization and shape even if the registry changes.
    raw = takes_raw_pixels(config.model)
    mean, std = ([0.0] * info.channels, [1.0] * info.channels) if raw else (list(info.mean), list(info.std))
    args: dict[str, Any] = {
        "dataset": info.name,
        "in_channels": info.channels,
        "num_classes": len(info.classes),
        "mean": mean,
        "std": std,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(config.model, **args)
    model = model.to(runtime.device)
    if runtime.uses_channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, args


def epoch_line(row: dict[str, Any], config: TrainConfig) -> str:
    train_acc = row["train_adv_acc"] if row["train_adv_acc"] is not None else row["train_clean_acc"]
    verified = f"  val verified {100 * row['val_verified_acc']:.1f}%" if "val_verified_acc" in row else ""
    return (
        f"epoch {row['epoch']}/{config.passes}  loss {row['train_loss']:.3f}  train {100 * train_acc:.1f}%  "
        f"val clean {100 * row['val_clean_acc']:.1f}%  val PGD-{config.check_steps} "
        f"{100 * row['val_robust_acc']:.1f}%{verified}  {row['seconds']:.1f} s"
    )


def logger(enabled: bool) -> Callable[[str], None]:
    from tqdm.auto import tqdm

    def log(line: str) -> None:
        if enabled:
            tqdm.write(line, file=sys.stderr)

    return log


__all__ = [
    "RUN_FILES",
    "build_model",
    "check_world",
    "cudnn_tuned",
    "epoch_line",
    "load_training_data",
    "logger",
    "run_record",
]
