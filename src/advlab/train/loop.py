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
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.data import get_info, load_dataset
from advlab.errors import AdvlabError
from advlab.evaluate import clean_accuracy, evaluate
from advlab.models import create_model
from advlab.runs import prepare_run_dir, save_checkpoint, versions, write_json
from advlab.runtime import Runtime
from advlab.train.config import TrainConfig
from advlab.train.methods import METHODS
from advlab.train.optim import OPTIMIZERS, SCHEDULES
from advlab.train.state import (RunProgress, check_same_config, read_state, restore, summarize, write_metrics,
                                write_state)


class CatastrophicOverfittingWarning(UserWarning):
    """Validation PGD accuracy collapsed during training; the run stopped and kept the last good weights."""


def catastrophic_overfitting(best_robust: float | None, robust: float, threshold: float) -> bool:
    """Wong et al.'s early-stopping rule, against the best epoch so far instead of the previous one.

    Fast FGSM training that overfits catastrophically gains FGSM accuracy while its PGD accuracy falls.
    On CIFAR-10 the fall is sudden; on Fashion-MNIST it is gradual (FGSM training from x at ε = 0.2:
    validation PGD-10 accuracy 41% → 31% → 22% over six epochs while training accuracy rose from 54% to
    73%), so a fall of more than ``threshold`` (0.1 = 10 points) below the best epoch marks it. That is
    far beyond the ±1.5 points of noise on 1,000 validation images, and beyond robust overfitting
    (Rice et al.), which costs a few points over many epochs."""
    return best_robust is not None and best_robust - robust > threshold


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out`` and return a summary (also saved as summary.json).

    ``resume`` continues from the last completed epoch (refusing a folder holding another config);
    ``overwrite`` lets a new run replace an old one's files; ``stop_after_epochs`` ends this call after
    that many epochs, as an interruption would. ``runtime`` says where to train (default: CUDA when
    present, else CPU, with channels-last convolutions on CPU). Everything is checked before the first batch.
    """
    config = config.resolved()
    runtime = runtime if runtime is not None else Runtime()
    if runtime.precision != "fp32":
        raise AdvlabError(f"training runs in fp32; --precision {runtime.precision} is for evaluate and attack")
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise AdvlabError(f"stop_after_epochs must be at least 0, got {stop_after_epochs}")
    out = prepare_run_dir(out, overwrite=overwrite, resume=resume, resume_option="--resume")
    saved_state = read_state(out) if resume else None
    if resume:
        check_same_config(out, config, saved_state)
    else:
        for name in ("state.safetensors", "best.safetensors", "best.json", "summary.json"):
            (out / name).unlink(missing_ok=True)  # an overwritten run's files must not pass for this run's
    device = runtime.device
    info = get_info(config.dataset)
    train_data = load_dataset(config.dataset, "train", data_dir=config.data_dir, val_size=config.val_size,
                              progress=progress)
    if config.train_size is not None:
        train_data = train_data.subset(config.train_size)
    val_data = load_dataset(config.dataset, "val", data_dir=config.data_dir, val_size=config.val_size,
                            progress=progress)
    check_data = val_data.subset(min(config.check_examples, len(val_data)))
    model, model_args = _build_model(config, info, runtime)
    method = METHODS[config.method](config)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config)
    # Separate generators, so that shuffling and attacks draw the same numbers however the other is used.
    shuffle_rng = torch.Generator().manual_seed(config.seed)
    attack_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    run = RunProgress()
    if saved_state is not None:
        run = restore(saved_state, model, optimizer, method, shuffle_rng, attack_rng)
    if not (out / "config.json").is_file() or not resume:
        write_json(out / "config.json", {"config": config.to_dict(), "passes": config.passes,
                                         "model_args": model_args, "versions": versions()})
    record = {"model": config.model, "model_args": model_args, "dataset": info.name,
              "normalization": {"mean": list(info.mean), "std": list(info.std)}, "config": config.to_dict()}
    log = _logger(progress)
    if saved_state is not None:
        log(f"resuming {out} after epoch {run.epoch}/{config.passes}" if not run.finished or run.epoch < config.passes
            else f"{out} is already complete")

    steps_per_pass = math.ceil(len(train_data) / config.batch_size) * method.optimizer_steps_per_batch
    total_steps = steps_per_pass * config.passes
    epochs_this_call = 0
    while run.epoch < config.passes and not run.finished:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        epoch = run.epoch + 1
        start = time.perf_counter()
        stats = _train_epoch(model, method, optimizer, train_data, config, run, total_steps, shuffle_rng,
                             attack_rng, runtime, progress, f"epoch {epoch}/{config.passes}")
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        val_clean, val_robust = _validate(model, val_data, check_data, config, runtime)
        row = {"epoch": epoch, **stats, "val_clean_acc": val_clean, "val_robust_acc": val_robust,
               "seconds": seconds, "val_seconds": time.perf_counter() - start}
        run.rows.append(row)
        run.epoch = epoch
        log(_epoch_line(row, config))
        collapsed = method.adversarial and catastrophic_overfitting(run.best_robust, val_robust, config.co_threshold)
        if collapsed:
            message = (f"catastrophic overfitting at epoch {epoch}: validation PGD-{config.check_steps} accuracy "
                       f"fell to {100 * val_robust:.1f}% from a best of {100 * run.best_robust:.1f}% "
                       f"(epoch {run.best_epoch}); stopped, model.safetensors keeps epoch {run.last_good_epoch}")
            run.collapse = {"epoch": epoch, "message": message}
            warnings.warn(message, CatastrophicOverfittingWarning, stacklevel=2)
            log(message)
        else:
            save_checkpoint(out / "model.safetensors", model, {**record, "epoch": epoch, "metrics": row})
            run.last_good_epoch = epoch
            # The best epoch: highest validation PGD accuracy for adversarial training (Rice et al.), highest
            # clean accuracy for standard training (its PGD accuracy is ~0 and would pick an untrained epoch).
            score = val_robust if method.adversarial else val_clean
            if run.best_robust is None or score > run.best_robust:
                run.best_robust, run.best_epoch = score, epoch
                save_checkpoint(out / "best.safetensors", model, {**record, "epoch": epoch, "metrics": row})
        write_metrics(out, run.rows)
        write_state(out, config, run, model, optimizer, method, shuffle_rng, attack_rng)  # the commit point
        epochs_this_call += 1
    summary = summarize(out, config, run)
    write_json(out / "summary.json", summary)
    return summary


def _train_epoch(model, method, optimizer, data, config, run, total_steps, shuffle_rng, attack_rng, runtime,
                 progress, desc) -> dict[str, Any]:
    schedule = SCHEDULES[config.schedule]
    warmup_steps = config.eps_warmup_epochs / config.epochs * total_steps
    lr = config.lr

    def step(loss: torch.Tensor) -> None:
        nonlocal lr
        lr = config.lr * schedule((run.step + 1) / total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1

    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), device=device)
    clean_correct = torch.zeros((), device=device, dtype=torch.long)
    adv_correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    clean_seen = adv_seen = False
    eps = config.eps
    bar = _bar(len(data), progress, desc)
    for i, (x, y) in enumerate(data.batches(config.batch_size, shuffle=True, generator=shuffle_rng, device=device)):
        if runtime.uses_channels_last:
            x = x.to(memory_format=torch.channels_last)
        eps = config.eps * min(1.0, (run.step + 1) / warmup_steps) if warmup_steps > 0 else config.eps
        alpha = (config.step_size or 0.0) * (eps / config.eps if config.eps > 0 else 1.0)  # α scales with ε
        out = method.train_batch(model, x, y, eps=eps, alpha=alpha, generator=attack_rng, step=step)
        n = y.shape[0]
        seen += n
        loss_sum += out.loss.detach() * n
        if out.clean_logits is not None:
            clean_seen = True
            clean_correct += (out.clean_logits.detach().argmax(1) == y).sum()
        if out.adv_logits is not None:
            adv_seen = True
            adv_correct += (out.adv_logits.detach().argmax(1) == y).sum()
        bar.update(n)
        if progress and i % 20 == 0:
            shown = adv_correct if adv_seen else clean_correct
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * shown.item() / seen:.1f}%")
    bar.close()
    seen = max(seen, 1)
    return {"lr": lr, "eps": eps, "train_loss": loss_sum.item() / seen,
            "train_clean_acc": clean_correct.item() / seen if clean_seen else None,
            "train_adv_acc": adv_correct.item() / seen if adv_seen else None}


def _validate(model, val_data, check_data, config, runtime) -> tuple[float, float]:
    """Clean accuracy on the validation split and PGD accuracy on its first ``check_examples``."""
    attack = AttackSpec("pgd", steps=config.check_steps)
    clean = clean_accuracy(model, val_data, device=runtime.device)
    # The same seed every epoch: the same random starts, so epochs are compared on equal terms.
    result = evaluate(model, check_data, attacks=[attack], eps=[config.eps], seed=config.seed, runtime=runtime,
                      progress=False)
    return clean, result.robust[attack.label][0]


def _build_model(config: TrainConfig, info, runtime: Runtime) -> tuple[nn.Module, dict[str, Any]]:
    """The model, initialized from the seed without touching the global RNG, and the arguments that rebuild it.

    On CPU its convolution weights are kept channels-last: oneDNN runs NHWC faster, above all the attacks'
    input-gradient passes (benchmarks/bench_train.py). The model is this run's own object; only the layout
    changes, values and results are those of the default layout up to float summation order, and
    checkpoints are saved contiguous as ever.
    """
    # The data set's name lets create_model fill in what some networks need (linear: the image size);
    # the explicit values keep the checkpoint's normalization and shape even if the registry changes.
    args: dict[str, Any] = {"dataset": info.name, "in_channels": info.channels, "num_classes": len(info.classes),
                            "mean": list(info.mean), "std": list(info.std)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(config.model, **args)
    model = model.to(runtime.device)
    if runtime.uses_channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, args


def _epoch_line(row: dict[str, Any], config: TrainConfig) -> str:
    train_acc = row["train_adv_acc"] if row["train_adv_acc"] is not None else row["train_clean_acc"]
    return (f"epoch {row['epoch']}/{config.passes}  loss {row['train_loss']:.3f}  train {100 * train_acc:.1f}%  "
            f"val clean {100 * row['val_clean_acc']:.1f}%  val PGD-{config.check_steps} "
            f"{100 * row['val_robust_acc']:.1f}%  {row['seconds']:.1f} s")


def _logger(enabled: bool) -> Callable[[str], None]:
    from tqdm.auto import tqdm

    def log(line: str) -> None:
        if enabled:
            tqdm.write(line, file=sys.stderr)

    return log


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, dynamic_ncols=True)
