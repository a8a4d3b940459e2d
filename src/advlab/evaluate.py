"""Clean and robust accuracy of a classifier over a list of attacks and a grid of ε: measurement only.

Robust accuracy is measured per example: an example counts as robust under an attack only if the
model classifies it correctly both clean and at the attack's adversarial point, re-checked by a fresh
forward pass in fp32 on the returned images (never taken from the attack's own bookkeeping). The worst
case over attacks is the per-example AND. Every attack's output is verified to lie in its ε-ball and in
[0, 1] with no NaN, and :class:`IntegrityError` is raised otherwise. A targeted attack is run against
each of the most likely wrong classes in turn (all of them unless the attack names a number), and an
example is robust only if it survives every target.

Python::

    from advlab.attacks import parse_attack
    result = evaluate(model, test_data, attacks=[parse_attack("fgsm"), parse_attack("pgd20")], eps=[0.1])
    print(result.table())

Command line: ``advlab evaluate RUN_DIR --attack fgsm --attack pgd20 --eps 0.05,0.1`` (through
:mod:`advlab.jobs`, which loads a checkpoint, runs this and writes the results).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, eval_mode
from advlab.attacks.threat import IntegrityError, verify_adversarial
from advlab.errors import AdvlabError, Contradiction, check_range
from advlab.model_warnings import is_randomized
from advlab.runtime import Runtime, release_freed_memory, same_device
from advlab.tally import DRAWS, EvalResult, Tally
from advlab.verdicts import Plan, correct_draws, measure_batch, verdict

__all__ = [
    "DEFAULT_BATCH",
    "POOL",
    "DRAWS",
    "EvalResult",
    "IntegrityError",
    "clean_accuracy",
    "evaluate",
    "transfer_flags",
    "verify_adversarial",
]

# Images per evaluation batch, chosen by measurement (benchmarks/bench_eval_batch.py; BENCHMARKS.md, "The
# evaluation batch"): activations that fit the cache against per-batch overhead.
DEFAULT_BATCH = 256
# Batches pooled into one unit of work: each attack (and each target of a targeted one) runs on what the pool
# still holds, in batches of at most ``batch_size``, so a chain's later attacks see full batches of leftovers
# instead of a few per batch. On a small network each attack step's fixed cost is most of its time, and a
# pool of 4 cut the standard suite's time on one (BENCHMARKS.md, "Evaluation as strong as AutoAttack").
POOL = 4


def _batches(data, batch_size: int, device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(data, "batches"):
        return data.batches(batch_size, device=device)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        return (
            (x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)
        )
    return data  # an iterable of (x, y) batches, e.g. a DataLoader


def _pools(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], pool: int):
    """Consecutive batches, ``pool`` at a time, joined into one (x, y): the evaluation's unit of work."""
    group: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == pool:
            yield _joined(group)
            group = []
    if group:
        yield _joined(group)


def _joined(group: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(group) == 1:
        return group[0]
    return torch.cat([x for x, _ in group]), torch.cat([y for _, y in group])


def _runtime_for(model: nn.Module, runtime: Runtime | None) -> Runtime:
    if runtime is None:
        return Runtime.for_model(model)
    device = next((p.device for p in model.parameters()), runtime.device)
    if not same_device(device, runtime.device):
        raise AdvlabError(
            f"the model is on {device} but the evaluation runs on {runtime.device}; "
            "move the model there first (model.to(device))"
        )
    return runtime


def evaluate(
    model: nn.Module,
    data,
    *,
    attacks: Sequence[AttackSpec],
    eps: Sequence[float],
    batch_size: int = DEFAULT_BATCH,
    early_stop: bool = True,
    chain: bool = False,
    seed: int = 0,
    runtime: Runtime | None = None,
    progress: bool = True,
    keep_per_example: bool = False,
    checks: bool = True,
    state=None,
    pool: int = POOL,
) -> EvalResult:
    """Clean accuracy, and robust accuracy for each attack and ε, with the per-example worst case.

    ``data`` is an :class:`advlab.data.ImageData`, an ``(x, y)`` pair of tensors or an iterable of
    batches (under torchrun, the same batches in the same order on every rank: each keeps every world-th).
    ``early_stop`` (the default) attacks only the examples still correct and lets each attack
    and restart drop an example as soon as it is fooled (exactly as strong, much faster on weak models);
    ``early_stop=False`` is the naive baseline that attacks every example with every step and restart.
    ``chain=True`` runs each attack only on the examples that all earlier attacks left robust (AutoAttack
    style, fastest); then the per-attack numbers are cumulative. Randomness (random starts) comes from a
    generator seeded with ``seed`` on the runtime's device, so results repeat.
    ``runtime`` (default: the model's device, fp32, channels-last on CPU) sets the attacks' precision:
    ``bf16`` or ``fp16`` autocast covers the attacks' passes only, and every example is still judged in
    fp32, so a weaker low-precision attack shows as higher robust accuracy, never hidden.
    ``checks`` (the default) runs :mod:`advlab.model_warnings` on the first batch and, when a gradient-free
    attack is in the list, warns of the images it broke that every gradient attack left robust; the
    warnings are in ``result.model_warnings``. ``state`` (an object with ``load() -> dict | None`` and
    ``save(dict)``, such as :class:`advlab.eval_state.EvalState`) makes a long evaluation resumable: the
    progress is saved after every pool, random generator included, and a resumed run skips the finished
    pools and ends with the very numbers an uninterrupted one would. ``pool`` batches at a time are one unit
    of work (:data:`POOL`): every attack runs on what the pool still holds, in batches of ``batch_size``.
    """
    _check_request(attacks, eps)
    check_range("pool", pool, 1, None)
    runtime = _runtime_for(model, runtime)
    if runtime.world is not None and state is not None:
        raise AdvlabError("a resumable evaluation (state beside --out) runs in one process, not under torchrun")
    generator, training, tally = runtime.generator(seed), model.training, Tally(attacks, eps)
    done = tally.restore(state.load() if state is not None else None, generator)
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, list)) else None
    bar = _progress(total, progress and runtime.main, "evaluate")
    with eval_mode(model):
        for index, (x, y) in enumerate(_pools(_batches(data, batch_size, runtime.device), pool)):
            if index < done or (runtime.world is not None and not runtime.world.owns(index)):
                bar.update(len(y) if index < done else 0)  # a finished pool, or another rank's
                continue
            tally.first_batch(model, x[:batch_size], y[:batch_size], training=training, checks=checks)
            plan = Plan(runtime, generator, early_stop, chain, tally.draws, batch=batch_size)
            correct = correct_draws(model, x, y, tally.draws, batch=batch_size)
            tally.add(index, correct, measure_batch(model, x, y, correct, attacks=attacks, eps=eps, plan=plan))
            bar.update(len(y))
            release_freed_memory()
            if state is not None:
                state.save(tally.state(generator))
    bar.close()
    if runtime.world is not None:  # every rank's verdicts, back in batch order: the numbers of one process
        tally = tally.gathered(runtime.world)
    return tally.result(checks=checks, keep_per_example=keep_per_example)


def _check_request(attacks: Sequence[AttackSpec], eps: Sequence[float]) -> None:
    """One clear error, before any work, for an evaluation that cannot run as asked."""
    if not attacks:
        raise AdvlabError("give at least one attack to evaluate")
    if not eps:
        raise AdvlabError("give at least one ε to evaluate")
    for attack in attacks:
        if not isinstance(attack, AttackSpec):
            raise AdvlabError(f"attacks must be AttackSpec values (advlab.attacks.parse_attack), got {attack!r}")
        for e in eps:  # up front: an attack that never runs (nothing left to attack) must not hide a bad ε
            check_range("eps", e, 0.0, 1.0 if attack.norm == "linf" else None)
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise AdvlabError(f"the same attack is listed twice: {labels}")


# The cross-check's attack on verified examples: PGD-50 from 5 random starts, a strong budget spent only on
# the (usually few) examples a bound proved.
CROSS_CHECK_ATTACK = "pgd50x5"


def cross_check_verified(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    verified: Sequence[int],
    *,
    eps: float,
    what: str,
    attack: str = CROSS_CHECK_ATTACK,
    runtime: Runtime | None = None,
) -> dict:
    """Attack the examples a bound verified at ``eps`` (``verified``: indices into ``x``, ``y``); an example
    both proved robust and broken means an unsound bound or a wrong attack, and is refused with an error
    that names it (``what``: the certifier, for the message). Returns what was checked."""
    from advlab.attacks import parse_attack

    spec = parse_attack(attack)
    index = torch.as_tensor(list(verified), dtype=torch.long)
    record = {"attack": spec.label, "verified": int(index.numel()), "broken": 0}
    if index.numel() == 0 or eps == 0:
        return record
    result = evaluate(
        model,
        (x[index], y[index]),
        attacks=[spec],
        eps=[eps],
        progress=False,
        keep_per_example=True,
        runtime=runtime,
        checks=False,
    )
    broken = index[~result.per_example[f"{spec.label}@{eps:g}"]]
    if broken.numel():
        shown = ", ".join(str(i) for i in broken[:5].tolist())
        raise Contradiction(
            f"cross-check failed: {spec.label} broke {broken.numel()} of the {index.numel()} images {what} "
            f"verified at eps = {eps:g} (image {shown}{', ...' if broken.numel() > 5 else ''}): a bound or an "
            "attack is wrong; please report it"
        )
    return record


def clean_accuracy(model: nn.Module, data, *, batch_size: int = 1000, device=None, world=None) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly (eval mode, no gradients); ``world``: each
    torchrun rank counts its own batches and the counts are summed."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    counts = torch.zeros(2, dtype=torch.long, device=device)
    with eval_mode(model), torch.inference_mode():
        for index, (x, y) in enumerate(_batches(data, batch_size, device)):
            if world is not None and not world.owns(index):
                continue
            counts[0] += (model(x).argmax(1) == y).sum()
            counts[1] += len(y)
    correct, seen = (world.sum(counts) if world is not None else counts).tolist()
    return correct / max(seen, 1)


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def transfer_flags(
    target: nn.Module,
    surrogate: nn.Module,
    data,
    *,
    attack: AttackSpec,
    eps: float,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """A black-box transfer attack, per example (CPU bool tensor): does ``target`` classify both the clean
    image and the adversarial example crafted against ``surrogate`` correctly? Its mean is the transfer
    accuracy; if that beats the white-box attack on ``target``, the white-box gradients are probably masked."""
    if attack.targeted:
        raise AdvlabError(f"a transfer attack is untargeted; {attack.label} is not")
    runtime = _runtime_for(target, runtime)
    generator = runtime.generator(seed)
    flags: list[torch.Tensor] = []
    draws = None
    with eval_mode(target), eval_mode(surrogate):
        for x, y in _batches(data, batch_size, runtime.device):
            if draws is None:  # a randomized target (a random defense): the majority of its passes decides
                draws = DRAWS if is_randomized(target, x) else 1
            with runtime.autocast():
                x_adv = attack(surrogate, x, y, eps=eps, generator=generator, channels_last=runtime.channels_last)
            verify_adversarial(x, x_adv, eps, attack.norm, what=f"transfer {attack.label}")
            flags.append((verdict(target, x, y, draws) & verdict(target, x_adv.float(), y, draws)).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
