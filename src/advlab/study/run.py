"""Running a study: train each model, evaluate it, measure its sanity checks, draw the gallery; each stage
cached in the run folder with the inputs it was computed from, so an interrupted study resumes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from advlab.attacks import AttackSpec, parse_attack, verify_adversarial
from advlab.attacks.suites import suite_attacks
from advlab.checks import measure_checks, strongest_pgd
from advlab.data import load_dataset
from advlab.distributed import on_main
from advlab.errors import AdvlabError
from advlab.evaluate import evaluate
from advlab.files import file_sha256, run_lock
from advlab.runs import load_checkpoint, load_tensors, prepare_run_dir, read_json, save_tensors, write_json
from advlab.runtime import Runtime
from advlab.schema import Evaluation, read_checked
from advlab.study.arms_race import measure_arms_race
from advlab.study.certified import certified_numbers
from advlab.study.config import StudyConfig
from advlab.study.explorer import explorer_numbers, targeted_attack
from advlab.study.metrics import collect_metrics
from advlab.train import train


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"[study] {message}", file=sys.stderr, flush=True)


def _digest(path: Path) -> str:
    """A short content hash of a file: what a cached stage records of the files it was computed from."""
    return file_sha256(path)[:16]


def _stage(path: Path, compute: Callable[[], dict], *, redo: bool, inputs: dict, world=None) -> dict:
    """Return the cached result at ``path`` if it was computed from these ``inputs`` (settings and the
    digests of the files it read), else compute it and save it there (atomically) with its inputs. So a
    retrained model, a changed surrogate or an interrupted ``--overwrite`` never leaves a stale stage.
    With ``world`` (a stage every torchrun rank computes together) rank 0 decides and writes."""
    inputs = json.loads(json.dumps(inputs))  # as saved: tuples become lists

    def cached() -> dict | None:
        if path.is_file() and not redo:
            found = read_json(path)
            if found.get("inputs") == inputs:
                return found
        return None

    found = on_main(world, cached)
    if found is not None:
        return found
    result = {**compute(), "inputs": inputs}
    if world is None or world.main:
        write_json(path, result)
    return result


def run_study(
    config: StudyConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict | None:
    """Run (or resume) the study ``config`` in the folder ``out``; write and return its ``metrics.json``.

    ``runtime`` says where every stage runs (default: CUDA when present, else CPU). Under torchrun
    (``runtime.world``) every rank trains each model together (DDP) and evaluates it on its share of the
    batches; the other stages (checks, certified, arms race, gallery, explorer) run on rank 0 alone, and the
    other ranks return None as soon as the shared stages are done (no collective waits on rank 0's hours). The report
    is drawn from the saved files by
    :func:`advlab.report.build_report` (``advlab study`` calls it at the end).
    """
    runtime = runtime if runtime is not None else Runtime()
    if runtime.precision != "fp32":
        raise AdvlabError(
            f"the study trains and evaluates in fp32; precision {runtime.precision!r} is for "
            "`advlab evaluate` and `advlab attack`"
        )
    world, main = runtime.world, runtime.main
    start = time.perf_counter()
    out = Path(out)
    saved = out / "config.json"
    resolved = {name: config.train_config(name).to_dict() for name in config.models}  # validates every model

    def open_folder() -> None:
        if saved.is_file() and not overwrite:
            previous = read_json(saved).get("study", {})
            current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
            if previous != current:
                changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
                raise AdvlabError(
                    f"{out} holds a study with other settings ({', '.join(changed)}); "
                    "choose another --out or pass --overwrite"
                )
        prepare_run_dir(out, resume=saved.is_file(), overwrite=overwrite)

    on_main(world, open_folder)
    # One writer per study folder: a second study on it is refused (under torchrun, rank 0 writes).
    with run_lock(out) if main else contextlib.nullcontext():
        if main:
            if overwrite:  # an --overwrite that is interrupted must not leave the old models marked as trained
                for marker in (out / "models").glob("*/done.json"):
                    marker.unlink()
            write_json(saved, {"study": config.to_dict(), "train_configs": resolved})

        test = load_dataset(config.dataset, "test", data_dir=config.data_dir, progress=progress)
        test = test.subset(min(config.n_eval, len(test)))
        attacks = config.attack_specs()
        models: dict[str, torch.nn.Module] = {}
        for name in config.models:
            folder = out / "models" / name
            done = folder / "done.json"
            if on_main(world, lambda done=done: overwrite or not done.is_file()):
                _log(f"training {config.label(name)}", progress and main)
                summary = train(
                    config.train_config(name),
                    folder,
                    resume=folder.is_dir() and not overwrite,
                    overwrite=overwrite,
                    progress=progress,
                    runtime=runtime,
                )
                # On disk before any rank reads it.
                on_main(world, lambda done=done, summary=summary: str(write_json(done, summary)))
            models[name], _ = load_checkpoint(folder / "model.safetensors", device=runtime.device)
        digests = {name: _digest(out / "models" / name / "model.safetensors") for name in models}
        for name, model in models.items():
            folder = out / "models" / name

            def evaluate_model(model=model, name=name) -> dict:
                _log(f"evaluating {config.label(name)} on {len(test)} test images", progress and main)
                result = evaluate(
                    model,
                    test,
                    attacks=attacks,
                    eps=list(config.eps_grid),
                    seed=config.seed,
                    progress=progress,
                    keep_per_example=True,
                    runtime=runtime,
                )
                # The examples no attack broke at the training ε: the sanity checks attack these further.
                survivors = torch.ones(result.n, dtype=torch.bool)
                for attack in attacks:
                    survivors &= result.per_example[f"{attack.label}@{config.train_eps:g}"]
                return {**result.to_dict(), "train_eps_survivors": survivors.nonzero().squeeze(1).tolist()}

            _stage(
                folder / "eval.json",
                evaluate_model,
                redo=overwrite,
                world=world,
                inputs={
                    "model": digests[name],
                    "attacks": config.attacks,
                    "eps": config.eps_grid,
                    "n": len(test),
                    "seed": config.seed,
                    "device": runtime.device.type,  # random starts differ by device
                    **({"world_size": world.size} if world is not None else {}),
                },
            )  # and by rank
        if not main:
            return None  # the shared stages are done: rank 0 measures the rest alone, for as long as it takes
        alone = dataclasses.replace(runtime, world=None)
        return _measure(config, out, models, test, attacks, digests, resolved, overwrite, progress, alone, start)


def _measure(
    config: StudyConfig,
    out: Path,
    models: dict,
    test,
    attacks: list[AttackSpec],
    digests: dict,
    resolved: dict,
    overwrite: bool,
    progress: bool,
    runtime: Runtime,
    start: float,
) -> dict:
    """The stages after evaluation: sanity checks, certified numbers, the arms race, the gallery, the
    explorer, then ``metrics.json``; each cached like the others."""
    for name in models:
        surrogate = _surrogate(config, name)
        _stage(
            out / "models" / name / "checks.json",
            lambda name=name: _check_numbers(config, name, models, test, attacks, out, progress, runtime),
            redo=overwrite,
            inputs={
                "model": digests[name],
                "surrogate": digests[surrogate],
                "eval": _digest(out / "models" / name / "eval.json"),
                "device": runtime.device.type,
                "dlr": config.check_dlr,
                "square": config.check_square,
                "suite": config.suite,
            },
        )
    if config.certify:
        for name in models:
            trained = resolved[name]
            smoothing = (
                {
                    "sigma": trained["sigma"],
                    "n": config.smoothing_n,
                    "n0": config.smoothing_n0,
                    "alpha": config.smoothing_alpha,
                    "images": config.smoothing_images,
                }
                if trained["method"] == "gaussian"
                else None
            )
            _stage(
                out / "models" / name / "certified.json",
                lambda name=name, smoothing=smoothing: certified_numbers(
                    models[name],
                    test,
                    eps=config.train_eps,
                    label=config.label(name),
                    smoothing=smoothing,
                    runtime=runtime,
                    progress=progress,
                ),
                redo=overwrite,
                inputs={
                    "model": digests[name],
                    "eps": config.train_eps,
                    "n": len(test),
                    "smoothing": smoothing,
                    "device": runtime.device.type,
                },
            )
    metrics = collect_metrics(out)
    best = metrics["best_robust_model"]
    if config.defenses:
        names = ["standard"] + ([best] if best != "standard" else [])
        _stage(
            out / "arms_race.json",
            lambda: measure_arms_race(
                models,
                names,
                {n: config.label(n) for n in names},
                test,
                defenses=list(config.defenses),
                attack=config.arms_race_attack,
                eot=config.arms_race_eot,
                eps=config.train_eps,
                n=config.arms_race_n,
                seed=config.seed,
                runtime=runtime,
                progress=progress,
            ),
            redo=overwrite,
            inputs={
                "models": {n: digests[n] for n in names},
                "defenses": config.defenses,
                "attack": config.arms_race_attack,
                "eot": config.arms_race_eot,
                "n": min(config.arms_race_n, len(test)),
                "eps": config.train_eps,
                "seed": config.seed,
                "device": runtime.device.type,
            },
        )
    gallery_inputs = {
        "standard": digests["standard"],
        best: digests[best],
        "size": config.gallery_size,
        "eps": config.train_eps,
        "targeted_eps": config.targeted_eps,
        "attacks": config.attacks,
        "n": len(test),
        "seed": config.seed,
        "device": runtime.device.type,
    }
    if overwrite or _gallery_inputs(out) != json.loads(json.dumps(gallery_inputs)):
        _log("drawing the gallery", progress)
        _gallery(config, metrics, models, test, attacks, out, gallery_inputs, runtime)
    if config.explorer_size:
        _stage(
            out / "explorer.json",
            lambda: _explorer(config, models, test, attacks, out, runtime, progress),
            redo=overwrite or not (out / "explorer.safetensors").is_file(),
            inputs={
                "models": digests,
                "size": config.explorer_size,
                "eps": config.eps_grid,
                "attacks": config.attacks,
                "targeted_eps": config.targeted_eps,
                "n": len(test),
                "seed": config.seed,
                "device": runtime.device.type,
            },
        )
    metrics = collect_metrics(out)
    write_json(out / "metrics.json", metrics)
    _log(f"measured in {time.perf_counter() - start:.0f} s: {out / 'metrics.json'}", progress)
    return metrics


def _explorer(
    config: StudyConfig, models: dict, test, attacks: list[AttackSpec], out: Path, runtime: Runtime, progress: bool
) -> dict:
    """The explorer's numbers (returned, for explorer.json) and images (explorer.safetensors)."""
    attack = strongest_pgd(attacks)
    numbers, tensors = explorer_numbers(
        models,
        test,
        attack=attack,
        eps_grid=list(config.eps_grid),
        targeted=targeted_attack(attack),
        targeted_eps=config.targeted_eps,
        targeted_model="standard",
        size=config.explorer_size,
        seed=config.seed,
        runtime=runtime,
        progress=progress,
    )
    save_tensors(out / "explorer.safetensors", tensors)
    return numbers


def _surrogate(config: StudyConfig, name: str) -> str:
    """The transfer attack's source for ``name``: the standard model, or for that one the first robust one."""
    return "standard" if name != "standard" else next(n for n in config.models if n != "standard")


def _gallery_inputs(out: Path) -> dict | None:
    path = out / "gallery.safetensors"
    if not path.is_file():
        return None
    try:
        return json.loads(load_tensors(path)[1]["gallery"]).get("inputs")
    except (AdvlabError, KeyError, ValueError):
        return None


def _check_numbers(
    config: StudyConfig,
    name: str,
    models: dict,
    test,
    attacks: list[AttackSpec],
    out: Path,
    progress: bool,
    runtime: Runtime,
) -> dict:
    """The extra measurements behind the gradient-masking checks at the training ε, beside the study's own
    figures for that model (``models/NAME/eval.json``, the ones the report shows).

    Each extra attack also counts towards the model's worst case there (``worst_case_all``, the headline):
    the gradient attacks of the study's suite (``standard``: APGD-CE and APGD-T) attack, chained, the
    examples the study's own attacks left robust, and what they leave is the baseline of the checks; then
    doubled PGD, APGD-DLR and Square attack what is left, uniform noise and the transfer attack every
    example, and an example is robust only if it survives them all.
    """
    _log(f"sanity-check measurements for {config.label(name)}", progress)
    eps = config.train_eps
    base = strongest_pgd(attacks)
    saved = read_checked(out / "models" / name / "eval.json", Evaluation)
    i = saved["eps"].index(eps)
    survivors = torch.tensor(saved["train_eps_survivors"], dtype=torch.long)
    surrogate = _surrogate(config, name)
    suite = [
        a for a in suite_attacks(config.suite, norm=base.norm, classes=len(test.info.classes)) if not a.kind.black_box
    ]  # the gradient-free attack is the check's own (check_square)
    numbers = measure_checks(
        models[name],
        models[surrogate],
        test,
        base=base,
        eps=eps,
        survivors=survivors,
        suite=suite,
        dlr=parse_attack(config.check_dlr, norm=base.norm),
        square=parse_attack(config.check_square, norm=base.norm),
        seed=config.seed,
        runtime=runtime,
        progress=progress,
    )
    robust = numbers.pop("robust_after_all")
    numbers["transfer"]["surrogate"] = surrogate
    return {
        **numbers,
        "pgd": {"label": base.label, "accuracy": saved["robust_accuracy"][base.label][i]},
        # The checks' baseline: the study's attacks, then the suite's on what they left.
        "worst_case": {
            "accuracy": numbers["suite"]["accuracy"] if suite else saved["worst_case_accuracy"][i],
            "attacks": [a.label for a in attacks] + [a.label for a in suite],
            "study_attacks_only": saved["worst_case_accuracy"][i],
        },
        "worst_case_all": {
            "accuracy": robust.float().mean().item(),
            "attacks": [a.label for a in attacks]
            + [a.label for a in suite]
            + [numbers[k]["label"] for k in ("pgd_doubled", "dlr", "square", "noise")]
            + [f"transfer {base.label} from {surrogate}"],
        },
    }


def _gallery(
    config: StudyConfig,
    metrics: dict,
    models: dict,
    test,
    attacks: list[AttackSpec],
    out: Path,
    inputs: dict,
    runtime: Runtime,
) -> None:
    """Adversarial examples for the standard and the most robust model on the same images, plus targeted ones."""
    x_all, y_all = test.tensors(runtime.device)
    standard = models["standard"]
    with torch.inference_mode():
        correct = (standard(x_all).argmax(1) == y_all).nonzero().squeeze(1)
    # One image per class where possible, all classified correctly by the standard model.
    chosen: list[int] = []
    for cls in range(len(test.info.classes)):
        hits = correct[y_all[correct] == cls]
        if len(hits) and len(chosen) < config.gallery_size:
            chosen.append(int(hits[0]))
    x, y = x_all[chosen], y_all[chosen]
    attack = strongest_pgd(attacks)
    eps = config.train_eps
    robust = metrics["best_robust_model"]
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
    targets = (y + len(test.info.classes) // 2) % len(test.info.classes)
    targeted = targeted_attack(attack)
    x_adv = targeted(
        standard,
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
                "targeted.logits_clean": standard(x),
                "targeted.logits_adv": standard(x_adv),
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


__all__ = ["run_study"]
