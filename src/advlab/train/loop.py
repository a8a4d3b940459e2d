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

import contextlib
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from advlab.certify import verified_accuracy
from advlab.data import get_info, load_dataset
from advlab.distributed import on_main, wrap
from advlab.errors import AdvlabError
from advlab.evaluate import clean_accuracy
from advlab.files import run_lock
from advlab.models import create_model, takes_raw_pixels
from advlab.runs import check_run_dir, prepare_run_dir, save_checkpoint, versions, write_json
from advlab.runtime import Runtime
from advlab.train.config import TrainConfig
from advlab.train.epoch import base_alpha, train_epoch
from advlab.train.guard import (
    MAX_REMEDIES,
    CatastrophicOverfittingWarning,
    Guard,
    Snapshot,
    at_chance_warning,
    collapse_event,
    end_of_run_warnings,
    falling_from,
    probe,
)
from advlab.train.methods import METHODS
from advlab.train.optim import OPTIMIZERS, SCHEDULES
from advlab.train.preempt import EpochProgress, Preempted, Preemption
from advlab.train.state import (
    RunProgress,
    check_same_config,
    read_state,
    restore,
    restore_position,
    summarize,
    write_metrics,
    write_state,
)


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
    (:mod:`advlab.train.preempt`); ``resume`` continues from either, bit-identical. ``runtime`` says where to train
    (default: CUDA when
    present, else CPU, with channels-last convolutions on CPU) and in what precision: bf16 or fp16 autocast
    covers every forward and backward pass of the method, its inner attack included, while the weights, the
    optimizer and the per-epoch checks stay fp32 (fp16 adds a gradient scaler). Under torchrun
    (``runtime.world``) the model trains in DistributedDataParallel: each rank trains on and attacks its own
    part of every global batch of ``batch_size``, and only rank 0 writes files (:mod:`advlab.distributed`).
    Everything is checked before the first batch.
    """
    config = config.resolved()
    runtime = runtime if runtime is not None else Runtime()
    world, main = runtime.world, runtime.main
    if save_every is not None and not save_every > 0:
        raise AdvlabError(f"--save-every must be a positive number of minutes, got {save_every!r}")
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise AdvlabError(f"stop_after_epochs must be at least 0, got {stop_after_epochs}")

    def read_folder():
        check_run_dir(out, overwrite=overwrite, resume=resume, resume_option="--resume")
        state = read_state(Path(out)) if resume else None
        if resume:
            check_same_config(Path(out), config, state)
        return state

    # Only rank 0 reads the folder; the other ranks get its state, or its error, by broadcast.
    saved_state = on_main(world, read_folder)
    _check_world(saved_state, runtime)
    device = runtime.device
    info = get_info(config.dataset)
    train_data = load_dataset(
        config.dataset, "train", data_dir=config.data_dir, val_size=config.val_size, progress=progress
    )
    if config.train_size is not None:
        train_data = train_data.subset(config.train_size)
    val_data = load_dataset(
        config.dataset, "val", data_dir=config.data_dir, val_size=config.val_size, progress=progress
    )
    check_data = val_data.subset(min(config.check_examples, len(val_data)))
    if world is not None and min(len(train_data), config.batch_size) < world.size:
        raise AdvlabError(
            f"{world.size} processes but a batch of {min(len(train_data), config.batch_size)} "
            "training images: every rank needs examples of its own; start fewer processes"
        )
    if device.type == "cuda":  # on the GPU for the whole run: batches are cut there, no copy per batch
        train_data, val_data, check_data = (d.to(device) for d in (train_data, val_data, check_data))
    model, model_args = _build_model(config, info, runtime)
    method = METHODS[config.method](config)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config)
    # Everything is checked: only now is the run folder created (a refused run leaves no empty folder).
    out = on_main(world, lambda: prepare_run_dir(out, overwrite=overwrite, resume=resume, resume_option="--resume"))
    # One writer per run folder (a second train on it is refused); SIGTERM saves at the next batch boundary.
    with (
        run_lock(out) if main else contextlib.nullcontext(),
        Preemption(save_every) as preemption,
        _cudnn_tuned(device),
    ):
        if not resume and main:
            for name in (
                "state.safetensors",
                "best.safetensors",
                "best.json",
                "summary.json",
                "metrics.jsonl",
                "metrics.csv",
                "guard.jsonl",
                "model.safetensors",
                "model.json",
            ):
                (out / name).unlink(missing_ok=True)  # an overwritten run's files must not pass for this run's
        # Separate generators, so that shuffling and attacks draw the same numbers however the other is used.
        # The shuffle is one on every rank (each takes its part of the same global batch); the attacks' and
        # augmentation's draws are each rank's own (rank 0's are those of one process).
        shuffle_rng = torch.Generator().manual_seed(config.seed)
        attack_rng = runtime.generator(config.seed + 1)
        run = RunProgress()
        scaler = torch.amp.GradScaler(device.type) if runtime.precision == "fp16" else None
        if saved_state is not None:
            run = restore(
                saved_state,
                model,
                optimizer,
                method,
                shuffle_rng,
                attack_rng,
                rank=world.rank if world is not None else 0,
                scaler=scaler,
            )
            if run.active_method not in (None, config.method):
                method = METHODS[run.active_method](config)  # the guard's fallback, chosen before the interruption
        trained = wrap(model, world, device)  # what the methods call: DDP all-reduces the gradients of its passes
        check_runtime = dataclasses.replace(runtime, precision="fp32")  # the guard and the checks decide in fp32
        if main and (not (out / "config.json").is_file() or not resume):
            write_json(
                out / "config.json",
                {
                    "config": config.to_dict(),
                    "passes": config.passes,
                    "model_args": model_args,
                    "versions": versions(),
                    "runtime": runtime.to_dict(),
                },
            )  # where and in what precision
        record = {
            "model": config.model,
            "model_args": model_args,
            "dataset": info.name,
            "training_runtime": runtime.to_dict(),
            "normalization": {"mean": model_args["mean"], "std": model_args["std"]},
            "config": config.to_dict(),
        }
        log = _logger(progress and main)
        if saved_state is not None:
            if "position" not in saved_state[1]:
                log(
                    f"{out} is already complete"
                    if run.finished or run.epoch >= config.passes
                    else f"resuming {out} after epoch {run.epoch}/{config.passes}"
                )
        else:
            log(
                f"recipe {config.recipe}: {config.model}, {config.optimizer} lr {config.lr:g} {config.schedule}, "
                f"{config.epochs} epochs of batch {config.batch_size}"
                + (f", α = {config.step_size:.4g}" if method.adversarial else "")
                + " (config.json has every setting)"
            )
        snapshot = Snapshot(model, optimizer, epoch=run.last_good_epoch or 0)
        position = restore_position(saved_state, snapshot, device) if saved_state is not None else None
        if position is not None:
            log(f"resuming {out} in epoch {position.epoch}/{config.passes} after batch {position.batches}")

        def collapsed(epoch: int, reading: dict[str, float], examples: int, within: bool, rule: str) -> bool:
            """Restore the last good weights, apply the remedy, record and say it. True: stop training."""
            nonlocal method
            remedy = config.co_remedy
            if len(run.collapses) >= MAX_REMEDIES or (
                remedy == "fallback" and run.active_method == config.fallback_method
            ):
                remedy = "stop"  # remedies spent, or the fallback itself collapsed
            snapshot.restore()
            if remedy == "smaller-step":
                run.alpha_scale /= 2
            elif remedy == "fallback":
                run.active_method = config.fallback_method
                method = METHODS[config.fallback_method](config)
            else:
                run.stopped = True
            event = collapse_event(
                epoch=epoch,
                step=run.step,
                within=within,
                reading=reading,
                examples=examples,
                config=config,
                rule=rule,
                guard=collapse_guard,
                restored=snapshot,
                remedy=remedy,
                alpha=None if remedy == "stop" else base_alpha(config, run) * run.alpha_scale,
            )
            run.collapses.append(event)
            if main:
                warnings.warn(event["message"], CatastrophicOverfittingWarning, stacklevel=3)
            log(event["message"])
            if run.stopped and (snapshot.step is not None or run.last_good_epoch != snapshot.epoch):
                # The last good weights are not those of model.safetensors (a within-epoch check was good
                # since, or later epochs were saved while the collapse built up): keep them as the run's model.
                meta = {
                    **record,
                    "epoch": snapshot.epoch,
                    "step": snapshot.step,
                    "partial_epoch": snapshot.step is not None,
                    "metrics": snapshot.reading or {},
                }
                if main:
                    save_checkpoint(out / "model.safetensors", model, meta)
                run.last_good_epoch = snapshot.epoch
            if run.stopped:
                run.kept_weights = snapshot.where
            return run.stopped

        def guard(epoch: int, eps: float) -> bool:
            """The within-epoch check: True when training must stop now."""
            if eps < config.eps:
                return False  # the model is not yet trained against the full budget the guard probes
            if world is not None:
                world.average_buffers(model)
            reading = probe(
                model, probe_data, eps=config.eps, steps=config.check_steps, seed=config.seed, runtime=check_runtime
            )
            rule = collapse_guard.assess(reading, epoch=epoch, step=run.step, within=True, examples=len(probe_data))
            if rule is not None:
                return collapsed(epoch, reading, len(probe_data), True, rule)
            if collapse_guard.good:
                snapshot.take(epoch=epoch - 1, step=run.step, reading=reading)
            return False

        probe_data = check_data.subset(min(config.co_check_examples, len(check_data)))
        size = world.size if world is not None else 1  # a last batch of fewer than `size` is left out
        full, rest = divmod(len(train_data), config.batch_size)
        steps_per_pass = (full + (1 if rest and rest >= size else 0)) * method.optimizer_steps_per_batch
        total_steps = steps_per_pass * config.passes
        collapse_guard = Guard(config, run.checks, falling_step=falling_from(SCHEDULES[config.schedule]) * total_steps)
        epochs_this_call = 0
        while run.epoch < config.passes and not run.finished:
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                break
            epoch = run.epoch + 1
            start = time.perf_counter()
            if position is None or position.epoch != epoch:
                position = EpochProgress.begin(epoch, shuffle_rng, device, config.lr)
            else:  # resumed in the middle of this epoch: draw its order again from where the epoch began
                shuffle_rng.set_state(position.shuffle_start)

            def after_batch(now: EpochProgress, epoch: int = epoch) -> None:
                due = preemption.due()
                if not (world.any(due) if world is not None else due):  # one decision on every rank
                    return
                if main:
                    write_metrics(out, run.rows, run.checks)
                if world is not None:
                    world.average_buffers(model)  # every rank's BatchNorm statistics, not rank 0's alone
                write_state(
                    out,
                    config,
                    run,
                    model,
                    optimizer,
                    method,
                    shuffle_rng,
                    attack_rng,
                    position=now,
                    snapshot=snapshot,
                    world=world,
                    scaler=scaler,
                )
                preemption.saved()
                if world.any(preemption.terminated) if world is not None else preemption.terminated:
                    raise Preempted(
                        f"stopped by SIGTERM in epoch {epoch} after batch {now.batches}, its state saved; "
                        f"continue with `advlab train --resume --out {out}`"
                    )

            stats = train_epoch(
                trained,
                lambda: method,
                optimizer,
                train_data,
                config,
                run,
                total_steps,
                shuffle_rng,
                attack_rng,
                runtime,
                progress and main,
                f"epoch {epoch}/{config.passes}",
                position,
                guard=(lambda eps: guard(epoch, eps)) if method.adversarial and config.co_check_every else None,
                after_batch=after_batch,
                scaler=scaler,
            )
            position = None
            # (current_method: the guard's fallback remedy may switch methods within the epoch)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            if world is not None:
                world.average_buffers(model)
            reading = None if run.stopped else _validate(model, val_data, check_data, config, check_runtime)
            if reading is None:  # stopped within the epoch: nothing of it is kept
                if main:
                    write_metrics(out, run.rows, run.checks)
                write_state(
                    out, config, run, model, optimizer, method, shuffle_rng, attack_rng, world=world, scaler=scaler
                )
                break
            row = {
                "epoch": epoch,
                **stats,
                "val_clean_acc": reading["clean"],
                "val_robust_acc": reading["pgd"],
                "val_fgsm_acc": reading["fgsm"],
                "seconds": seconds,
                "val_seconds": time.perf_counter() - start,
            }
            if "verified" in reading:
                row["val_verified_acc"] = reading["verified"]
            run.rows.append(row)
            run.epoch = epoch
            log(_epoch_line(row, config))
            if epoch == 1:
                note = at_chance_warning(config, reading["clean"], classes=len(info.classes), epoch=epoch)
                if note is not None:
                    run.warnings.append(note)
                    log(f"warning: {note}")
            rule = None
            judged = method.adversarial and stats["eps"] >= config.eps  # not while ε still ramps up
            if judged:
                rule = collapse_guard.assess(
                    reading, epoch=epoch, step=run.step, within=False, examples=len(check_data)
                )
            if rule is not None:
                collapsed(epoch, reading, len(check_data), False, rule)
            else:
                if main:
                    save_checkpoint(out / "model.safetensors", model, {**record, "epoch": epoch, "metrics": row})
                run.last_good_epoch = epoch
                run.kept_weights = f"the end of epoch {epoch}"
                if not judged or collapse_guard.good:
                    snapshot.take(epoch=epoch)
                # The best epoch: highest validation PGD accuracy for adversarial training (Rice et al.), highest
                # clean accuracy for standard training (its PGD accuracy is ~0 and would pick an untrained epoch).
                # Certified training (ibp): the highest validation verified accuracy, what it is trained for.
                score = reading.get("verified", reading["pgd"]) if method.robust else reading["clean"]
                if run.best_robust is None or score > run.best_robust:
                    run.best_robust, run.best_epoch = score, epoch
                    if main:
                        save_checkpoint(out / "best.safetensors", model, {**record, "epoch": epoch, "metrics": row})
            if main:
                write_metrics(out, run.rows, run.checks)
            write_state(
                out, config, run, model, optimizer, method, shuffle_rng, attack_rng, world=world, scaler=scaler
            )  # the commit point
            epochs_this_call += 1
        finished = run.stopped or run.epoch >= config.passes
        ending = (
            end_of_run_warnings(
                config,
                _final_reading(run, snapshot),
                classes=len(info.classes),
                robust=method.robust,
                where=run.kept_weights or "the end",
            )
            if finished
            else []
        )
        for note in ending:
            log(f"warning: {note}")
        summary = summarize(out, config, run, ending)
        if main:
            write_json(out / "summary.json", summary)
        return summary


@contextlib.contextmanager
def _cudnn_tuned(device: torch.device):
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


def _check_world(saved_state, runtime: Runtime) -> None:
    """A state saved by N processes resumes with N: each rank's random streams are saved apart."""
    size = runtime.world.size if runtime.world is not None else 1
    saved = saved_state[1].get("world_size", 1) if saved_state is not None else size
    if saved != size:
        how = "without torchrun" if saved == 1 else f"with torchrun and {saved} processes in all"
        raise AdvlabError(
            f"this run was trained by {saved} process(es) and resumes only {how} (each rank's "
            f"random streams are saved apart), not with {size}; or start afresh with --overwrite"
        )


def _final_reading(run, snapshot: Snapshot) -> dict[str, float] | None:
    """The last check of the weights model.safetensors holds: a within-epoch check's reading, or the row of
    the epoch they come from."""
    if snapshot.step is not None and run.stopped:
        return snapshot.reading
    row = next((r for r in run.rows if r["epoch"] == run.last_good_epoch), None)
    if row is None:
        return None
    return {"clean": row["val_clean_acc"], "fgsm": row["val_fgsm_acc"], "pgd": row["val_robust_acc"]}


def _validate(model, val_data, check_data, config, runtime) -> dict[str, float]:
    """Clean accuracy on the validation split; FGSM and PGD accuracy on its first ``check_examples``."""
    clean = clean_accuracy(model, val_data, device=runtime.device, world=runtime.world)
    # The same seed every epoch: the same random starts, so epochs are compared on equal terms.
    reading = probe(model, check_data, eps=config.eps, steps=config.check_steps, seed=config.seed, runtime=runtime)
    bounds = METHODS[config.method].bounds
    if bounds is not None:  # what certified training is for: the verified accuracy, beside clean and PGD
        reading["verified"] = verified_accuracy(model, check_data, config.eps, method=bounds, device=runtime.device)
    return {**reading, "clean": clean}


def _build_model(config: TrainConfig, info, runtime: Runtime) -> tuple[nn.Module, dict[str, Any]]:
    """The model, initialized from the seed without touching the global RNG, and the arguments that rebuild it.

    On CPU its convolution weights are kept channels-last: oneDNN runs NHWC faster, above all the attacks'
    input-gradient passes (benchmarks/bench_train.py). The model is this run's own object; only the layout
    changes, values and results are those of the default layout up to float summation order, and
    checkpoints are saved contiguous as ever.
    """
    # The data set's name lets create_model fill in what some networks need (linear: the image size);
    # the explicit values keep the checkpoint's normalization and shape even if the registry changes.
    mean, std = (
        ([0.0] * info.channels, [1.0] * info.channels)
        if takes_raw_pixels(config.model)
        else (list(info.mean), list(info.std))
    )  # a raw-pixel network (wong_mnist, madry_cnn) as its paper fed it
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


def _epoch_line(row: dict[str, Any], config: TrainConfig) -> str:
    train_acc = row["train_adv_acc"] if row["train_adv_acc"] is not None else row["train_clean_acc"]
    verified = f"  val verified {100 * row['val_verified_acc']:.1f}%" if "val_verified_acc" in row else ""
    return (
        f"epoch {row['epoch']}/{config.passes}  loss {row['train_loss']:.3f}  train {100 * train_acc:.1f}%  "
        f"val clean {100 * row['val_clean_acc']:.1f}%  val PGD-{config.check_steps} "
        f"{100 * row['val_robust_acc']:.1f}%{verified}  {row['seconds']:.1f} s"
    )


def _logger(enabled: bool) -> Callable[[str], None]:
    from tqdm.auto import tqdm

    def log(line: str) -> None:
        if enabled:
            tqdm.write(line, file=sys.stderr)

    return log
