"""The trainer: one training run's objects and what happens to them at each point of the story.

A :class:`Trainer` owns the model (and under torchrun its DistributedDataParallel wrapper), the optimizer,
the method, both random streams, fp16's gradient scaler, the data, the run folder and the run's progress
(:class:`~advlab.train.state.RunProgress`, what a resume restores), with the guard's last good weights and
rules. :func:`advlab.train.loop.train` tells the story with it; :func:`advlab.train.epoch.train_epoch` runs
one pass with it. Everything is checked when it is built, before the run folder is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from advlab.certify import verified_accuracy
from advlab.data import get_info
from advlab.distributed import on_main, wrap
from advlab.evaluate import clean_accuracy
from advlab.files import run_lock, write_json
from advlab.runs import check_run_dir, prepare_run_dir, save_checkpoint, versions
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
    last_reading,
    probe,
)
from advlab.train.methods import METHODS
from advlab.train.optim import OPTIMIZERS, SCHEDULES
from advlab.train.preempt import EpochProgress, Preempted, Preemption
from advlab.train.setup import (
    RUN_FILES,
    build_model,
    check_world,
    cudnn_tuned,
    epoch_line,
    load_training_data,
    logger,
    run_record,
)
from advlab.train.state import (
    RunProgress,
    check_same_config,
    read_state,
    restore,
    restore_position,
    scores_better,
    summarize,
    write_metrics,
    write_state,
)


class Trainer:
    """One training run of ``config`` into the folder ``out`` (see :func:`advlab.train.loop.train`)."""

    def __init__(
        self, config: TrainConfig, out: Path, *, runtime: Runtime, resume: bool, overwrite: bool, progress: bool
    ) -> None:
        self.config, self.runtime, self.world, self.main = config, runtime, runtime.world, runtime.main
        self.resume, self.overwrite = resume, overwrite
        self.log = logger(progress and self.main)
        self.progress = progress and self.main
        # Only rank 0 reads the folder; the other ranks get its state, or its error, by broadcast.
        self.saved_state = on_main(self.world, lambda: self._read_folder(out))
        check_world(self.saved_state, runtime)
        self.info = get_info(config.dataset)
        self.train_data, self.val_data, self.check_data, self.probe_data = load_training_data(
            config, self.world, runtime.device, progress=progress
        )
        self.model, self.model_args = build_model(config, self.info, runtime)
        self.method = METHODS[config.method](config)
        self.optimizer = OPTIMIZERS[config.optimizer](self.model.parameters(), config)
        # Separate generators, so that shuffling and attacks draw the same numbers however the other is used.
        # The shuffle is one on every rank (each takes its part of the same global batch); the attacks' and
        # augmentation's draws are each rank's own (rank 0's are those of one process).
        self.shuffle_rng = torch.Generator().manual_seed(config.seed)
        self.attack_rng = runtime.generator(config.seed + 1)
        self.scaler = torch.amp.GradScaler(runtime.device.type) if runtime.precision == "fp16" else None
        self.run = RunProgress()
        self.out = out  # created by open_folder(), once everything above is checked
        self.checks_runtime = dataclasses.replace(runtime, precision="fp32")  # the guard and checks decide in fp32

    # ------------------------------------------------------------------------------------------- set-up

    def _read_folder(self, out: Path):
        check_run_dir(out, overwrite=self.overwrite, resume=self.resume, resume_option="--resume")
        state = read_state(Path(out)) if self.resume else None
        if self.resume:
            check_same_config(Path(out), self.config, state)
        return state

    @contextlib.contextmanager
    def session(self, save_every: float | None) -> Iterator[Trainer]:
        """The run folder created and locked (one writer), SIGTERM and ``save_every`` saving at batch
        boundaries, cuDNN tuned on CUDA; the saved state restored and the run's first lines said."""
        self.out = on_main(
            self.world,
            lambda: prepare_run_dir(self.out, overwrite=self.overwrite, resume=self.resume, resume_option="--resume"),
        )
        with (
            run_lock(self.out) if self.main else contextlib.nullcontext(),
            Preemption(save_every) as self.preemption,
            cudnn_tuned(self.runtime.device),
        ):
            self._start()
            yield self

    def _start(self) -> None:
        config, out, main = self.config, self.out, self.main
        if not self.resume and main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        if self.saved_state is not None:
            self.run = restore(self.saved_state, self, rank=self.world.rank if self.world is not None else 0)
            if self.run.active_method not in (None, config.method):  # the guard's fallback, chosen before
                self.method = METHODS[self.run.active_method](config)
        self.trained = wrap(self.model, self.world, self.runtime.device)  # DDP all-reduces the gradients
        if main and (not (out / "config.json").is_file() or not self.resume):
            write_json(
                out / "config.json",
                {
                    "config": config.to_dict(),
                    "passes": config.passes,
                    "model_args": self.model_args,
                    "versions": versions(),
                    "runtime": self.runtime.to_dict(),
                },
            )
        self.record = run_record(config, self.info, self.model_args, self.runtime, self.method)
        self._say_how_it_starts()
        self.snapshot = Snapshot(self.model, self.optimizer, epoch=self.run.last_good_epoch or 0)
        self.position = None
        if self.saved_state is not None:
            self.position = restore_position(self.saved_state, self.snapshot, self.runtime.device)
        if self.position is not None:
            self.log(
                f"resuming {out} in epoch {self.position.epoch}/{config.passes} after batch {self.position.batches}"
            )
        self.guard = Guard(
            config, self.run.checks, falling_step=falling_from(SCHEDULES[config.schedule]) * self.total_steps
        )

    def _say_how_it_starts(self) -> None:
        config, run = self.config, self.run
        if self.saved_state is None:
            step = f", α = {config.step_size:.4g}" if self.method.adversarial else ""
            self.log(
                f"recipe {config.recipe}: {config.model}, {config.optimizer} lr {config.lr:g} {config.schedule}, "
                f"{config.epochs} epochs of batch {config.batch_size}{step} (config.json has every setting)"
            )
        elif "position" not in self.saved_state[1]:
            done = run.finished or run.epoch >= config.passes
            self.log(
                f"{self.out} is already complete"
                if done
                else f"resuming {self.out} after epoch {run.epoch}/{config.passes}"
            )

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (a last batch smaller than the number of ranks is left out)."""
        size = self.world.size if self.world is not None else 1
        full, rest = divmod(len(self.train_data), self.config.batch_size)
        steps_per_pass = (full + (1 if rest and rest >= size else 0)) * self.method.optimizer_steps_per_batch
        return steps_per_pass * self.config.passes

    @property
    def epochs_left(self) -> bool:
        return self.run.epoch < self.config.passes and not self.run.finished

    # ---------------------------------------------------------------------------------------- an epoch

    def run_epoch(self) -> tuple[dict[str, Any], float]:
        """One pass over the training data (from where a mid-epoch state left it): its figures and seconds."""
        epoch = self.run.epoch + 1
        start = time.perf_counter()
        if self.position is None or self.position.epoch != epoch:
            self.position = EpochProgress.begin(epoch, self.shuffle_rng, self.runtime.device, self.config.lr)
        else:  # resumed in the middle of this epoch: draw its order again from where the epoch began
            self.shuffle_rng.set_state(self.position.shuffle_start)
        stats = train_epoch(self, self.position, f"epoch {epoch}/{self.config.passes}")
        self.position = None
        return stats, time.perf_counter() - start

    @property
    def guarded(self) -> bool:
        """The guard's checks within epochs apply: an adversarial method, checks every few steps."""
        return self.method.adversarial and self.config.co_check_every > 0

    def check_within_epoch(self, eps: float) -> bool:
        """The guard's check every ``co_check_every`` steps: True when training must stop now."""
        if eps < self.config.eps:
            return False  # the model is not yet trained against the full budget the guard probes
        if self.world is not None:
            self.world.average_buffers(self.model)
        reading = probe(
            self.model,
            self.probe_data,
            eps=self.config.eps,
            steps=self.config.check_steps,
            seed=self.config.seed,
            runtime=self.checks_runtime,
        )
        epoch = self.run.epoch + 1
        rule = self.guard.assess(reading, epoch=epoch, step=self.run.step, within=True, examples=len(self.probe_data))
        if rule is not None:
            return self.on_collapse(reading, examples=len(self.probe_data), within=True, rule=rule)
        if self.guard.good:
            self.snapshot.take(epoch=epoch - 1, step=self.run.step, reading=reading)
        return False

    def after_batch(self, position: EpochProgress) -> None:
        """At each batch boundary: a mid-epoch state when SIGTERM or ``save_every`` asks for one."""
        due = self.preemption.due()
        if not (self.world.any(due) if self.world is not None else due):  # one decision on every rank
            return
        if self.world is not None:
            self.world.average_buffers(self.model)  # every rank's BatchNorm statistics, not rank 0's alone
        self.save_state(position)
        self.preemption.saved()
        terminated = self.preemption.terminated
        if self.world.any(terminated) if self.world is not None else terminated:
            raise Preempted(
                f"stopped by SIGTERM in epoch {position.epoch} after batch {position.batches}, its "
                f"state saved; continue with `advlab train --resume --out {self.out}`"
            )

    def end_epoch(self, stats: dict[str, Any], seconds: float) -> None:
        """The epoch's checks and records: its row, the guard's verdict, the kept and best weights, the state."""
        epoch, start = self.run.epoch + 1, time.perf_counter()
        if self.world is not None:
            self.world.average_buffers(self.model)
        reading = self._validate()
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
        self.run.rows.append(row)
        self.run.epoch = epoch
        self.log(epoch_line(row, self.config))
        if epoch == 1:
            self._note(at_chance_warning(self.config, reading["clean"], classes=len(self.info.classes), epoch=epoch))
        judged = self.method.adversarial and stats["eps"] >= self.config.eps  # not while ε still ramps up
        rule = (
            self.guard.assess(reading, epoch=epoch, step=self.run.step, within=False, examples=len(self.check_data))
            if judged
            else None
        )
        if rule is not None:
            self.on_collapse(reading, examples=len(self.check_data), within=False, rule=rule)
        else:
            self._keep(row, reading, good=not judged or self.guard.good)
        self.save_state()  # the commit point

    def _note(self, line: str | None) -> None:
        if line is not None:
            self.run.warnings.append(line)
            self.log(f"warning: {line}")

    def _validate(self) -> dict[str, float]:
        """Clean accuracy on the validation split; FGSM and PGD accuracy on its first ``check_examples``."""
        config, runtime = self.config, self.checks_runtime
        clean = clean_accuracy(self.model, self.val_data, device=runtime.device, world=runtime.world)
        # The same seed every epoch: the same random starts, so epochs are compared on equal terms.
        reading = probe(
            self.model, self.check_data, eps=config.eps, steps=config.check_steps, seed=config.seed, runtime=runtime
        )
        bounds = METHODS[config.method].bounds
        if bounds is not None:  # what certified training is for: the verified accuracy, beside clean and PGD
            reading["verified"] = verified_accuracy(
                self.model, self.check_data, config.eps, method=bounds, device=runtime.device
            )
        return {**reading, "clean": clean}

    def _keep(self, row: dict[str, Any], reading: dict[str, float], *, good: bool) -> None:
        """The epoch's weights become model.safetensors, a good point for the guard, and best.safetensors if
        they score best: validation PGD accuracy for robust methods (Rice et al.), clean accuracy for standard
        training (its PGD accuracy is ~0 and would pick an untrained epoch), the verified accuracy for
        certified training. A tie goes to the higher clean accuracy (:func:`~advlab.train.state.scores_better`)."""
        epoch, run = row["epoch"], self.run
        self._save("model", row)
        run.last_good_epoch, run.kept_weights = epoch, f"the end of epoch {epoch}"
        if good:
            self.snapshot.take(epoch=epoch)
        score = reading.get("verified", reading["pgd"]) if self.method.robust else reading["clean"]
        best_row = next((r for r in run.rows if r["epoch"] == run.best_epoch), None)
        held = None if run.best_robust is None else (run.best_robust, best_row["val_clean_acc"] if best_row else None)
        if scores_better((score, reading["clean"]), held):
            run.best_robust, run.best_epoch = score, epoch
            self._save("best", row)

    def _save(self, name: str, row: dict[str, Any], **extra: Any) -> None:
        """``name``.safetensors with its record: the epoch, and the epoch's row as its metrics unless given."""
        if self.main:
            save_checkpoint(
                self.out / f"{name}.safetensors",
                self.model,
                {**self.record, "epoch": row["epoch"], "metrics": row, **extra},
            )

    # ------------------------------------------------------------------------------ collapse and state

    def on_collapse(self, reading: dict[str, float], *, examples: int, within: bool, rule: str) -> bool:
        """The guard fired: the last good weights back, the remedy applied, recorded and said. True: stop."""
        config, run = self.config, self.run
        remedy = config.co_remedy
        if len(run.collapses) >= MAX_REMEDIES or (remedy == "fallback" and run.active_method == config.fallback_method):
            remedy = "stop"  # remedies spent, or the fallback itself collapsed
        self.snapshot.restore()
        if remedy == "smaller-step":
            run.alpha_scale /= 2
        elif remedy == "fallback":
            run.active_method = config.fallback_method
            self.method = METHODS[config.fallback_method](config)
        else:
            run.stopped = True
        alpha = None if remedy == "stop" else base_alpha(config, run) * run.alpha_scale
        event = collapse_event(
            epoch=run.epoch + (1 if within else 0),
            step=run.step,
            within=within,
            reading=reading,
            examples=examples,
            config=config,
            rule=rule,
            guard=self.guard,
            restored=self.snapshot,
            remedy=remedy,
            alpha=alpha,
        )
        run.collapses.append(event)
        if self.main:
            warnings.warn(event["message"], CatastrophicOverfittingWarning, stacklevel=3)
        self.log(event["message"])
        if run.stopped:
            self._keep_last_good_weights()
        return run.stopped

    def _keep_last_good_weights(self) -> None:
        """A stopped run's model is its last good weights: saved as model.safetensors when that file holds
        others (a within-epoch check was good since, or epochs were saved while the collapse built up)."""
        snapshot, run = self.snapshot, self.run
        if snapshot.step is not None or run.last_good_epoch != snapshot.epoch:
            # The record's metrics are those of the check that found these weights good.
            self._save(
                "model",
                {"epoch": snapshot.epoch},
                metrics=snapshot.reading or {},
                step=snapshot.step,
                partial_epoch=snapshot.step is not None,
            )
            run.last_good_epoch = snapshot.epoch
        run.kept_weights = snapshot.where

    def save_state(self, position: EpochProgress | None = None) -> None:
        """The records and the resume state: at an epoch's end, or with ``position`` in the middle of one."""
        if self.main:
            write_metrics(self.out, self.run.rows, self.run.checks)
        write_state(self, position=position)

    def finish(self) -> dict[str, Any]:
        """summary.json, with what is wrong with the weights the run ends with (when it has ended)."""
        config, run = self.config, self.run
        ending = []
        if run.stopped or run.epoch >= config.passes:
            ending = end_of_run_warnings(
                config,
                last_reading(self.run, self.snapshot),
                classes=len(self.info.classes),
                robust=self.method.robust,
                where=run.kept_weights or "the end",
            )
        for line in ending:
            self.log(f"warning: {line}")
        summary = summarize(self.out, config, run, ending)
        if self.main:
            write_json(self.out / "summary.json", summary)
        return summary
