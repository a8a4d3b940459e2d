"""Standard and adversarial training in one loop, into a run folder that survives interruptions.

Python::

    from advlab.train import TrainConfig, train
    summary = train(TrainConfig(method="pgd", eps=0.1, steps=7, epochs=10), "runs/pgd")

Command line: ``advlab train --method pgd --eps 0.1 --epochs 10 --out runs/pgd``; ``--config recipe.toml``
or ``--preset quick`` read a ``[train]`` table; ``--resume`` continues an interrupted run from its last
completed epoch; ``--device`` picks where it runs.

The run folder: ``config.json`` (resolved config, versions), ``model.safetensors`` (last good weights),
``best.safetensors`` (highest validation PGD accuracy: Rice et al.'s answer to robust overfitting; highest
clean accuracy for standard training), each with a ``.json`` record; ``metrics.jsonl`` and ``metrics.csv``
(one row per epoch); ``state.safetensors`` (see :mod:`advlab.train.state`); ``summary.json``.
Adversarial methods run under the catastrophic-overfitting guard (:mod:`advlab.train.guard`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advlab.errors import AdvlabError
from advlab.runtime import Runtime
from advlab.train.config import TrainConfig
from advlab.train.trainer import Trainer


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
    stop_after_epochs: int | None = None,
    save_every: float | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out`` and return a summary (also saved as summary.json).

    ``resume`` continues from the last completed epoch (refusing a folder holding another config);
    ``overwrite`` lets a new run replace an old one's files; ``stop_after_epochs`` ends this call after
    that many epochs, as an interruption would; ``save_every`` (minutes) also writes the state in the middle of
    an epoch that often, and SIGTERM writes it at the next batch and raises :class:`Preempted`
    (:mod:`advlab.train.preempt`); ``resume`` continues from either, bit-identical. ``runtime`` says where to
    train (default: CUDA when present, else CPU, with channels-last convolutions on CPU) and in what precision:
    bf16 or fp16 autocast covers every forward and backward pass of the method, its inner attack included, while
    the weights, the optimizer and the per-epoch checks stay fp32 (fp16 adds a gradient scaler). Under torchrun
    (``runtime.world``) the model trains in DistributedDataParallel: each rank trains on and attacks its own
    part of every global batch of ``batch_size``, and only rank 0 writes files (:mod:`advlab.distributed`).
    Everything is checked before the first batch.
    """
    if save_every is not None and not save_every > 0:
        raise AdvlabError(f"--save-every must be a positive number of minutes, got {save_every!r}")
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise AdvlabError(f"stop_after_epochs must be at least 0, got {stop_after_epochs}")
    trainer = Trainer(
        config.resolved(),
        Path(out),
        runtime=runtime if runtime is not None else Runtime(),
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    with trainer.session(save_every):  # the folder created and locked, a saved state restored
        epochs = 0
        while trainer.epochs_left and (stop_after_epochs is None or epochs < stop_after_epochs):
            stats, seconds = trainer.run_epoch()  # the guard checks within it, and may stop the run
            if trainer.run.stopped:  # stopped within the epoch: nothing of it is kept
                trainer.save_state()
                break
            trainer.end_epoch(stats, seconds)  # validation, the guard's verdict, the kept weights, the state
            epochs += 1
        return trainer.finish()
