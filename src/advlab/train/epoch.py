"""One pass over the training set: the batches, the method's loss under autocast, the optimizer step.

:func:`train_epoch` is the inner loop of :func:`advlab.train.loop.train`; it knows nothing of the run folder.
Under torchrun each rank takes its part of every global batch, its loss weighted so that DistributedDataParallel's
average of the ranks' gradients is the gradient of the global batch's mean loss, and the epoch's running sums
are summed over the ranks after every batch: each rank's figures are the job's.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from advlab.data.augment import augment
from advlab.train.config import TrainConfig
from advlab.train.methods import METHODS, Method
from advlab.train.optim import SCHEDULES
from advlab.train.preempt import EpochProgress
from advlab.train.state import RunProgress


class EpochOwner(Protocol):
    """What one pass needs of its trainer (:class:`advlab.train.trainer.Trainer` is one)."""

    config: TrainConfig
    run: RunProgress
    method: Method  # the current method: the guard's fallback may switch it within the epoch
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    trained: torch.nn.Module  # what the method calls: under torchrun the DistributedDataParallel wrapper
    train_data: Any
    shuffle_rng: torch.Generator
    attack_rng: torch.Generator
    runtime: Any
    progress: bool
    total_steps: int
    guarded: bool

    def check_within_epoch(self, eps: float) -> bool: ...

    def after_batch(self, position: EpochProgress) -> None: ...


class _Step:
    """Backward and optimizer step for one loss, at the schedule's learning rate; ``weight`` scales the loss
    (a rank's share of the global batch's mean under torchrun)."""

    def __init__(self, owner: EpochOwner, position: EpochProgress) -> None:
        self.owner, self.position, self.weight = owner, position, 1.0
        self.schedule = SCHEDULES[owner.config.schedule]

    def __call__(self, loss: torch.Tensor) -> None:
        owner, run, optimizer, scaler = self.owner, self.owner.run, self.owner.optimizer, self.owner.scaler
        self.position.lr = owner.config.lr * self.schedule((run.step + 1) / owner.total_steps)
        for group in optimizer.param_groups:
            group["lr"] = self.position.lr
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(owner.runtime.device.type, enabled=False):  # the backward follows the forward's types
            if scaler is None:
                (loss * self.weight).backward()
                optimizer.step()
            else:  # fp16: scaled so that small gradients do not underflow; a step with inf/nan is skipped
                scaler.scale(loss * self.weight).backward()
                scaler.step(optimizer)
                scaler.update()
        run.step += 1


def batch_eps(config: TrainConfig, step: int, total_steps: int) -> float:
    """ε for the optimizer step after ``step``: 0 during the clean warm-up, then ramped linearly over
    ``eps_warmup_epochs``, then the full ε."""
    warmup_steps = config.eps_warmup_epochs / config.epochs * total_steps
    clean_steps = config.clean_epochs / config.epochs * total_steps  # ε = 0 before the ramp (ibp's warm-up)
    ramped = step + 1 - clean_steps
    if ramped <= 0:
        return 0.0
    return config.eps * min(1.0, ramped / warmup_steps) if warmup_steps > 0 else config.eps


def train_epoch(owner: EpochOwner, position: EpochProgress, desc: str) -> dict[str, Any]:
    """One pass over the owner's training data from ``position`` (a fresh epoch, or one resumed after its
    ``batches`` first batches, with its running sums); the owner's ``after_batch(position)`` runs at each
    batch boundary (a mid-epoch save) and its guard every ``co_check_every`` steps. Under torchrun each rank
    gets its part of every batch (:meth:`~advlab.data.ImageData.batches` ``shard``)."""
    config, run, runtime, data = owner.config, owner.run, owner.runtime, owner.train_data
    world, step = runtime.world, _Step(owner, position)
    owner.trained.train()
    bar = _bar(len(data), owner.progress, desc)
    bar.update(position.seen)
    shard = (world.rank, world.size) if world is not None else None
    for x, y in data.batches(
        config.batch_size,
        shuffle=True,
        generator=owner.shuffle_rng,
        device=runtime.device,
        skip=position.batches,
        shard=shard,
    ):
        x = augment(config.augment, x, generator=owner.attack_rng)
        if runtime.uses_channels_last:
            x = x.to(memory_format=torch.channels_last)
        whole = y.shape[0]  # the global batch: this rank's part of it under torchrun
        if world is not None:  # this rank's share of the global batch's mean loss, as DDP averages the ranks'
            whole = min(config.batch_size, len(data) - position.batches * config.batch_size)
            step.weight = y.shape[0] * world.size / whole
        position.eps = eps = batch_eps(config, run.step, owner.total_steps)
        # α scales with ε (the ramp) and with the guard's smaller-step remedy.
        alpha = base_alpha(config, run) * (eps / config.eps if config.eps > 0 else 1.0) * run.alpha_scale
        before = run.step
        with runtime.autocast():
            out = owner.method.train_batch(
                owner.trained, x, y, eps=eps, alpha=alpha, generator=owner.attack_rng, step=step
            )
        _tally(position, out, y, whole, world)
        bar.update(whole)
        if owner.progress and position.batches % 20 == 1:
            shown = position.adv_correct if position.adv_seen else position.clean_correct
            bar.set_postfix(
                loss=f"{position.loss_sum.item() / position.seen:.3f}", acc=f"{100 * shown.item() / position.seen:.1f}%"
            )
        if owner.guarded and run.step // config.co_check_every > before // config.co_check_every:
            if owner.check_within_epoch(position.eps):
                break
            owner.trained.train()
        owner.after_batch(position)
        owner.trained.train()
    bar.close()
    seen = max(position.seen, 1)
    return {
        "lr": position.lr,
        "eps": position.eps,
        "train_loss": position.loss_sum.item() / seen,
        "train_clean_acc": position.clean_correct.item() / seen if position.clean_seen else None,
        "train_adv_acc": position.adv_correct.item() / seen if position.adv_seen else None,
    }


def _tally(position: EpochProgress, out, y: torch.Tensor, whole: int, world) -> None:
    """The batch's Σ loss·n and correct counts into the epoch's running sums, summed over the ranks first,
    so every rank's figures are the job's."""
    n = y.shape[0]
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
