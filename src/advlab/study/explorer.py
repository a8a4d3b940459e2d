"""The study's explorer stage: what the report's interactive explorer shows, computed once.

On ``explorer_size`` test images chosen to cover the classes (the first image of each class, then the
second of each, ...), for every model and every ε of the study's grid: the adversarial image of the study's
strongest PGD attack (its hyperparameters, the study's seed) and the model's top-5 class probabilities on
it. At each ε the image shown is the strongest found so far over the grid: an adversarial example found at
a smaller ε lies in every larger ball, so once fooled an image stays fooled as ε grows, as the robust
accuracy curve does. Then the targeted picture: the standard model, each image driven towards every other
class by the gallery's targeted attack at ``targeted_eps``.

Numbers go to ``explorer.json`` (and from there to ``metrics.json``); images to ``explorer.safetensors``,
which the report encodes as PNGs. Every adversarial image is checked to lie in its ε-ball.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from torch import nn

from advlab.attacks import AttackSpec, verify_adversarial
from advlab.runtime import Runtime

TOP = 5  # classes shown per image


def explorer_images(labels: torch.Tensor, classes: int, size: int) -> list[int]:
    """``size`` indices covering the classes: the first image of each class, then the second of each, ..."""
    by_class = [(labels == c).nonzero().squeeze(1).tolist() for c in range(classes)]
    chosen: list[int] = []
    rank = 0
    while len(chosen) < min(size, len(labels)):
        row = [hits[rank] for hits in by_class if rank < len(hits)]
        if not row:
            break
        chosen += row[: size - len(chosen)]
        rank += 1
    return chosen


def _top(logits: torch.Tensor) -> tuple[list, list]:
    """Top classes and their probabilities, per row, as lists (fp32 softmax)."""
    probs = logits.float().softmax(dim=1)
    values, indices = probs.topk(min(TOP, probs.shape[1]), dim=1)
    return indices.tolist(), [[round(float(v), 6) for v in row] for row in values]


def explorer_numbers(
    models: dict[str, nn.Module],
    test,
    *,
    attack: AttackSpec,
    eps_grid,
    targeted: AttackSpec,
    targeted_eps: float,
    targeted_model: str,
    size: int,
    seed: int,
    runtime: Runtime,
    progress: bool,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(numbers, tensors)`` of the explorer: see the module docstring."""
    if progress:
        print(
            f"[study] the explorer: {len(models)} models, {size} images, {len(eps_grid)} ε", file=sys.stderr, flush=True
        )
    x_all, y_all = test.tensors()
    index = explorer_images(y_all, len(test.info.classes), size)
    x, y = x_all[index].to(runtime.device), y_all[index].to(runtime.device)
    tensors: dict[str, torch.Tensor] = {"x": x.cpu(), "labels": y.cpu()}
    numbers: dict = {
        "attack": attack.label,
        "hyperparameters": [attack.hyperparameters(e) for e in eps_grid],
        "eps": list(eps_grid),
        "images": index,
        "labels": y.tolist(),
        "top": TOP,
        "models": {},
    }
    for name, model in models.items():
        numbers["models"][name], tensors[f"{name}.x_adv"] = _along_eps(
            model, x, y, attack=attack, eps_grid=eps_grid, seed=seed, runtime=runtime
        )
    numbers["targeted"], tensors["targeted.x_adv"] = _towards_every_class(
        models[targeted_model],
        x,
        y,
        classes=len(test.info.classes),
        attack=targeted,
        eps=targeted_eps,
        seed=seed,
        runtime=runtime,
    )
    numbers["targeted"]["model"] = targeted_model
    return numbers, tensors


def _along_eps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: AttackSpec, eps_grid, seed: int, runtime: Runtime
) -> tuple[dict, torch.Tensor]:
    """One model's strongest example at each ε (fooled stays fooled as ε grows) and its top classes."""
    best = x.clone()  # the strongest example so far
    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    shown, classes, probs, predictions = [], [], [], []
    for eps in eps_grid:
        if eps > 0:
            x_adv = attack(
                model, x, y, eps=eps, generator=runtime.generator(seed), channels_last=runtime.channels_last
            ).float()
            verify_adversarial(x, x_adv, eps, attack.norm, what=f"explorer {attack.label}")
            with torch.inference_mode():
                now = model(x_adv).argmax(1) != y
            take = now | ~fooled  # a new success, or nothing better yet: this ε's own example
            best = torch.where(take[:, None, None, None], x_adv, best)
            fooled |= now
        with torch.inference_mode():
            logits = model(best)
        top_classes, top_probs = _top(logits)
        shown.append(best.cpu())
        classes.append(top_classes)
        probs.append(top_probs)
        predictions.append(logits.argmax(1).tolist())
    numbers = {"top_classes": classes, "top_probs": probs, "predictions": predictions}
    return numbers, torch.stack(shown)  # (ε, image, C, H, W)


def _towards_every_class(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    classes: int,
    attack: AttackSpec,
    eps: float,
    seed: int,
    runtime: Runtime,
) -> tuple[dict, torch.Tensor]:
    """The targeted picture: every image towards every class (its own class: the clean image itself)."""
    k = classes
    goal = torch.arange(k, device=x.device).repeat(len(y))
    source = x.repeat_interleave(k, dim=0)
    x_adv = attack(
        model, source, goal, eps=eps, generator=runtime.generator(seed), channels_last=runtime.channels_last
    ).float()
    same = goal == y.repeat_interleave(k)
    x_adv = torch.where(same[:, None, None, None], source, x_adv)
    verify_adversarial(source, x_adv, eps, attack.norm, what=f"explorer {attack.label}")
    with torch.inference_mode():
        logits = model(x_adv)
    top_classes, top_probs = _top(logits)
    numbers = {
        "attack": attack.label,
        "eps": eps,
        "hyperparameters": attack.hyperparameters(eps),
        "top_classes": [top_classes[i * k : (i + 1) * k] for i in range(len(y))],
        "top_probs": [top_probs[i * k : (i + 1) * k] for i in range(len(y))],
        "reached": (logits.argmax(1) == goal).reshape(len(y), k).tolist(),
    }
    return numbers, x_adv.cpu().reshape(len(y), k, *x.shape[1:])


def targeted_attack(attack: AttackSpec) -> AttackSpec:
    """The gallery's targeted attack: ``attack`` made targeted, with at least 50 steps."""
    return dataclasses.replace(attack, steps=max(attack.steps, 50), targeted=True)


__all__ = ["explorer_images", "explorer_numbers", "targeted_attack"]
