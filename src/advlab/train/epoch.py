"""One pass over the training set: the batches, the method's loss under autocast, the optimizer step.

:func:`train_epoch` is the inner loop of :func:`advlab.train.loop.train`; it knows nothing of the run folder.
Under torchrun each rank takes its part of every global batch, its loss weighted so that DistributedDataParallel's
average of the ranks' gradients is the gradient of the global batch's mean loss, and the epoch's running sums
are summed over the ranks after every batch: each rank's figures are the job's.
"""

from __future__ import annotations

from typing import Any

import torch

from advlab.data.augment import augment
from advlab.train.config import TrainConfig
from advlab.train.methods import METHODS
from advlab.train.optim import SCHEDULES
from advlab.train.preempt import EpochProgress
from advlab.train.state import RunProgress


def train_epoch(
    model,
    current_method,
    optimizer,
    data,
    config,
    run,
    total_steps,
    shuffle_rng,
    attack_rng,
    runtime,
    progress,
    desc,
    position: EpochProgress,
    guard=None,
    after_batch=None,
    scaler=None,
) -> dict[str, Any]:
    """One pass over ``data`` from ``position`` (a fresh epoch, or one resumed after its ``batches`` first
    batches, with its running sums); ``after_batch(position)`` runs at each batch boundary (a mid-epoch save).
    ``model`` is what the method calls: under torchrun the DistributedDataParallel wrapper, and each rank
    gets its part of every batch (:meth:`~advlab.data.ImageData.batches` ``shard``)."""
    schedule = SCHEDULES[config.schedule]
    warmup_steps = config.eps_warmup_epochs / config.epochs * total_steps
    clean_steps = config.clean_epochs / config.epochs * total_steps  # ε = 0 before the ramp (ibp's warm-up)
    world = runtime.world
    weight = 1.0

    def step(loss: torch.Tensor) -> None:
        position.lr = config.lr * schedule((run.step + 1) / total_steps)
        for group in optimizer.param_groups:
            group["lr"] = position.lr
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(runtime.device.type, enabled=False):  # the backward pass follows the forward's types
            if scaler is None:
                (loss * weight).backward()
                optimizer.step()
            else:  # fp16: scaled so that small gradients do not underflow; a step with inf/nan is skipped
                scaler.scale(loss * weight).backward()
                scaler.step(optimizer)
                scaler.update()
        run.step += 1

    model.train()
    device = runtime.device
    bar = _bar(len(data), progress, desc)
    bar.update(position.seen)
    batches = data.batches(
        config.batch_size,
        shuffle=True,
        generator=shuffle_rng,
        device=device,
        skip=position.batches,
        shard=(world.rank, world.size) if world is not None else None,
    )
    for x, y in batches:
        x = augment(config.augment, x, generator=attack_rng)
        if runtime.uses_channels_last:
            x = x.to(memory_format=torch.channels_last)
        n = y.shape[0]
        whole = n  # the global batch: this rank's part of it under torchrun
        if world is not None:  # this rank's share of the global batch's mean loss, as DDP averages the ranks'
            whole = min(config.batch_size, len(data) - position.batches * config.batch_size)
            weight = n * world.size / whole
        ramped = run.step + 1 - clean_steps
        eps = 0.0 if ramped <= 0 else config.eps * min(1.0, ramped / warmup_steps) if warmup_steps > 0 else config.eps
        position.eps = eps
        # α scales with ε (the ramp) and with the guard's smaller-step remedy.
        alpha = base_alpha(config, run) * (eps / config.eps if config.eps > 0 else 1.0) * run.alpha_scale
        before = run.step
        with runtime.autocast():
            out = current_method().train_batch(model, x, y, eps=eps, alpha=alpha, generator=attack_rng, step=step)
        # Σ loss·n and the correct counts of this batch: summed over the ranks, so every rank's are the job's.
        sums = torch.stack([out.loss.detach().float() * n, _correct(out.clean_logits, y), _correct(out.adv_logits, y)])
        if world is not None:
            world.sum(sums)
        position.seen += whole
        position.batches += 1
        position.loss_sum += sums[0]
        if out.clean_logits is not None:
            position.clean_seen = True
            position.clean_correct += sums[1].long()
        if out.adv_logits is not None:
            position.adv_seen = True
            position.adv_correct += sums[2].long()
        bar.update(whole)
        if progress and position.batches % 20 == 1:
            shown = position.adv_correct if position.adv_seen else position.clean_correct
            bar.set_postfix(
                loss=f"{position.loss_sum.item() / position.seen:.3f}", acc=f"{100 * shown.item() / position.seen:.1f}%"
            )
        if guard is not None and run.step // config.co_check_every > before // config.co_check_every:
            if guard(position.eps):
                break
            model.train()
        if after_batch is not None:
            after_batch(position)
            model.train()
    bar.close()
    seen = max(position.seen, 1)
    return {
        "lr": position.lr,
        "eps": position.eps,
        "train_loss": position.loss_sum.item() / seen,
        "train_clean_acc": position.clean_correct.item() / seen if position.clean_seen else None,
        "train_adv_acc": position.adv_correct.item() / seen if position.adv_seen else None,
    }


def _correct(logits: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """How many of ``logits``' predictions are ``y``, as a float scalar (0 without logits)."""
    if logits is None:
        return torch.zeros((), device=y.device)
    return (logits.detach().float().argmax(1) == y).sum().float()


def base_alpha(config: TrainConfig, run: RunProgress) -> float:
    """α at the full ε: the run's own, or after a fallback the fallback method's own rule (fgsm's 1.25ε
    would make PGD's every step jump to a corner of the ball)."""
    if run.active_method in (None, config.method):
        return config.step_size or 0.0
    return METHODS[run.active_method].default_alpha(config.eps, config.steps)


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, dynamic_ncols=True)
