"""The study's gallery stage: adversarial examples of the standard and the most robust model on the same
images (one per class where possible), and targeted ones on the standard model, saved for the report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from advlab.attacks import AttackSpec, verify_adversarial
from advlab.masking_attacks import strongest_pgd
from advlab.runtime import Runtime
from advlab.study.config import StudyConfig
from advlab.study.explorer import targeted_attack
from advlab.tensor_files import save_tensors


def draw_gallery(
    config: StudyConfig,
    models: dict,
    test,
    *,
    attacks: list[AttackSpec],
    robust: str,
    out: Path,
    inputs: dict,
    runtime: Runtime,
) -> None:
    """Adversarial examples for the standard model and ``robust`` (the most robust) on the same images, plus
    targeted ones on the standard model, into ``out``/gallery.safetensors with ``inputs`` (its cache key)."""
    x, y = _chosen_images(config, models["standard"], test, runtime)
    attack, eps = strongest_pgd(attacks), config.train_eps
    tensors = {"x": x, "labels": y}
    for name in ("standard", robust):
        x_adv = attack(
            models[name], x, y, eps=eps, generator=runtime.generator(config.seed), channels_last=runtime.channels_last
        )
        verify_adversarial(x, x_adv, eps, attack.norm, what=f"gallery {attack.label}")
        with torch.inference_mode():
            tensors[f"{name}.x_adv"] = x_adv
            tensors[f"{name}.logits_clean"] = models[name](x)
            tensors[f"{name}.logits_adv"] = models[name](x_adv)
    classes = len(test.info.classes)
    targets = (y + classes // 2) % classes
    targeted = targeted_attack(attack)
    x_adv = targeted(
        models["standard"],
        x,
        targets,
        eps=config.targeted_eps,
        generator=runtime.generator(config.seed),
        channels_last=runtime.channels_last,
    )
    verify_adversarial(x, x_adv, config.targeted_eps, targeted.norm, what=f"gallery {targeted.label}")
    with torch.inference_mode():
        tensors.update(
            {
                "targeted.x_adv": x_adv,
                "targeted.logits_clean": models["standard"](x),
                "targeted.logits_adv": models["standard"](x_adv),
                "targeted.targets": targets,
            }
        )
    info = {
        "file": "gallery.safetensors",
        "eps": eps,
        "attack": attack.label,
        "models": ["standard", robust],
        "targeted_model": "standard",
        "targeted_eps": config.targeted_eps,
        "targeted_attack": targeted.label,
        "targets": targets.tolist(),
        "targeted_hyperparameters": targeted.hyperparameters(config.targeted_eps),
        "inputs": inputs,
    }
    save_tensors(out / "gallery.safetensors", tensors, metadata={"gallery": json.dumps(info)})


def _chosen_images(config: StudyConfig, standard, test, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per class where possible, each classified correctly by the standard model."""
    x_all, y_all = test.tensors(runtime.device)
    with torch.inference_mode():
        correct = (standard(x_all).argmax(1) == y_all).nonzero().squeeze(1)
    chosen: list[int] = []
    for cls in range(len(test.info.classes)):
        hits = correct[y_all[correct] == cls]
        if len(hits) and len(chosen) < config.gallery_size:
            chosen.append(int(hits[0]))
    return x_all[chosen], y_all[chosen]


__all__ = ["draw_gallery"]
