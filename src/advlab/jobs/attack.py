"""``advlab attack``'s job: a few adversarial examples and what the model says of them, saved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from advlab.attacks import AttackSpec, verify_adversarial
from advlab.defenses import describe
from advlab.errors import AdvlabError
from advlab.evaluate import DEFAULT_BATCH
from advlab.files import write_json
from advlab.jobs.sources import DataSource, ModelSource, ThreatModel, open_job, require_compatible
from advlab.memory import fitting_batch
from advlab.runs import check_run_dir, prepare_run_dir
from advlab.runtime import Runtime
from advlab.tensor_files import save_tensors


def attack_checkpoint(
    model: ModelSource | str | Path,
    data: DataSource,
    threat: ThreatModel,
    *,
    attack: AttackSpec,
    out: str | Path,
    target: int | str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict:
    """Attack the first ``data.n`` images (8 by default) at the threat model's one ε and write
    ``adversarial.safetensors`` (images, labels, logits) and ``attack.json`` (hyperparameters, class names,
    success rate) into the folder ``out``; :func:`advlab.report.save_attack_gallery` draws ``gallery.png``
    from those files. ``target`` makes the attack targeted at that class index (examples already of that
    class are skipped), given by index or by name."""
    source = ModelSource.of(model)
    (eps,) = threat.eps
    if attack.targeted and target is None:
        raise AdvlabError(
            f"{attack.label} is targeted: name the class with --target CLASS (advlab evaluate "
            "tries the most likely wrong classes itself)"
        )
    if attack.targeted and attack.targets is not None:
        raise AdvlabError(f"{attack.label}: a number of target classes means nothing here; use --target CLASS")
    check_run_dir(out, overwrite=overwrite)  # refused before any work; created only when the files are written
    runtime = runtime if runtime is not None else Runtime()
    job = open_job(source, dataclasses.replace(data, n=None), threat, device=runtime.device, progress=progress)
    require_compatible(job, budgets=[(attack, eps)])
    images, attack, target = _aimed(job.data, attack, target, n=data.n or 8)
    classes = job.data.info.classes
    x, y = images.tensors(runtime.device)
    goal = torch.full_like(y, target) if target is not None else y
    x_adv, logits_clean, logits_adv = _in_batches(job.model, attack, x, goal, eps=eps, runtime=runtime, seed=seed)
    prediction = logits_adv.argmax(1)
    success = prediction == goal if target is not None else prediction != y
    tensors = {
        "x": x,
        "x_adv": x_adv,
        "labels": y,
        "logits_clean": logits_clean,
        "logits_adv": logits_adv,
        "prediction_clean": logits_clean.argmax(1),
        "prediction_adv": prediction,
    }
    if target is not None:
        tensors["targets"] = goal
    out = prepare_run_dir(out, overwrite=overwrite)
    save_tensors(out / "adversarial.safetensors", tensors)
    summary = {
        **source.provenance(),
        "dataset": images.info.name,
        "split": data.split,
        "n": len(y),
        "training_status": source.training()["training_status"],
        "defenses": describe(job.defenses),
        **attack.hyperparameters(eps),
        "label": attack.label,
        "target": target,
        "classes": list(classes),
        "runtime": runtime.to_dict(),
        "clean_accuracy": float((logits_clean.argmax(1) == y).float().mean()),
        "success_rate": float(success.float().mean()),
        "files": ["adversarial.safetensors", "attack.json"],
    }
    write_json(out / "attack.json", summary)
    return summary


def _in_batches(model, attack: AttackSpec, x, goal, *, eps: float, runtime: Runtime, seed: int):
    """The attack on as many images at a time as fit the free memory (224×224 photos: a few), checked in
    its ε-ball; returns the adversarial images and the clean and adversarial logits."""
    batch = fitting_batch(model, x[:1], runtime.device, ceiling=DEFAULT_BATCH)
    generator, parts = runtime.generator(seed), range(0, len(x), batch)
    with runtime.autocast():
        x_adv = torch.cat(
            [
                attack(model, x[i : i + batch], goal[i : i + batch], eps=eps, generator=generator,
                       channels_last=runtime.channels_last).float()
                for i in parts
            ]
        )  # fmt: skip
    verify_adversarial(x, x_adv, eps, attack.norm, what=attack.label)
    with torch.inference_mode():
        logits_clean = torch.cat([model(x[i : i + batch]) for i in parts])
        logits_adv = torch.cat([model(x_adv[i : i + batch]) for i in parts])
    return x_adv, logits_clean, logits_adv


def _aimed(images, attack: AttackSpec, target: int | str | None, *, n: int):
    """The first ``n`` images to attack, the attack and the target's index: for a ``target`` class (an
    index or a name), targeted, on images not already of it."""
    from advlab.data.photos import class_index

    if target is None:
        return images.subset(min(n, len(images))), attack, None
    index = class_index(target, images.info.classes, flag="--target")
    images = images.subset((images.labels != index).nonzero().squeeze(1))
    if len(images) == 0:
        raise AdvlabError(f"--target {target}: every image is of that class already; nothing to attack")
    return images.subset(min(n, len(images))), dataclasses.replace(attack, targeted=True), index
