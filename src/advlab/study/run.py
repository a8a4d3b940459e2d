"""Running a study: train each model, evaluate it, measure its sanity checks, certify it, race it against the
defenses, draw the gallery and the explorer; each stage cached in the run folder with the inputs it was
computed from, so an interrupted study resumes. :func:`run_study` tells the story with a :class:`Study`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from advlab.data import load_dataset
from advlab.distributed import on_main
from advlab.errors import AdvlabError
from advlab.evaluate import evaluate
from advlab.files import file_sha256, inside, read_json, run_lock, write_json
from advlab.masking_attacks import strongest_pgd
from advlab.runs import load_checkpoint, prepare_run_dir
from advlab.runtime import Runtime
from advlab.study.arms_race import measure_arms_race
from advlab.study.certified import certified_numbers
from advlab.study.config import StudyConfig
from advlab.study.explorer import explorer_numbers, targeted_attack
from advlab.study.gallery import draw_gallery
from advlab.study.metrics import collect_metrics
from advlab.study.sanity import check_numbers, surrogate_of
from advlab.tensor_files import load_tensors, save_tensors
from advlab.train import train
from advlab.train.methods import METHODS


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
    other ranks return None as soon as the shared stages are done (no collective waits on rank 0's hours).
    The report is drawn from the saved files by :func:`advlab.report.build_report` (``advlab study`` calls it
    at the end).
    """
    study = Study(
        config, Path(out), overwrite=overwrite, progress=progress, runtime=runtime if runtime is not None else Runtime()
    )
    with study.folder():  # checked against an earlier study there, locked: one writer
        study.train_models()
        study.evaluate_models()
        if not study.runtime.main:
            return None  # the shared stages are done: rank 0 measures the rest alone, for as long as it takes
        study.alone()
        study.sanity_checks()
        if config.certify:
            study.certify()
        metrics = collect_metrics(study.out)
        if config.defenses:
            study.arms_race(metrics["best_robust_model"])
        study.gallery(metrics)
        if config.explorer_size:
            study.explorer()
        return study.finish()


class Study:
    """One study's run: its config, folder, runtime, the test images, the study's attacks, the trained models
    and their weights' digests (what each cached stage records of them)."""

    def __init__(self, config: StudyConfig, out: Path, *, overwrite: bool, progress: bool, runtime: Runtime) -> None:
        if runtime.precision != "fp32":
            raise AdvlabError(
                f"the study trains and evaluates in fp32; precision {runtime.precision!r} is for "
                "`advlab evaluate` and `advlab attack`"
            )
        self.config, self.out, self.overwrite, self.runtime = config, out, overwrite, runtime
        self.progress, self.start = progress, time.perf_counter()
        self.resolved = {name: config.train_config(name).to_dict() for name in config.models}  # validates each
        self.attacks = config.attack_specs()
        self.models: dict[str, torch.nn.Module] = {}
        self.digests: dict[str, str] = {}

    def log(self, message: str) -> None:
        _log(message, self.progress and self.runtime.main)

    @contextlib.contextmanager
    def folder(self):
        """The run folder, refused when it holds a study with other settings (unless ``overwrite``), locked."""
        out, config, saved = self.out, self.config, self.out / "config.json"

        def open_folder() -> None:
            if saved.is_file() and not self.overwrite:
                previous = read_json(saved).get("study", {})
                current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
                if previous != current:
                    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
                    raise AdvlabError(
                        f"{out} holds a study with other settings ({', '.join(changed)}); choose "
                        "another --out or pass --overwrite"
                    )
            prepare_run_dir(out, resume=saved.is_file(), overwrite=self.overwrite)

        on_main(self.runtime.world, open_folder)
        with run_lock(out) if self.runtime.main else contextlib.nullcontext():
            if self.runtime.main:
                if self.overwrite:  # an interrupted --overwrite must not leave the old models marked as trained
                    for marker in (out / "models").glob("*/done.json"):
                        marker.unlink()
                write_json(saved, {"study": config.to_dict(), "train_configs": self.resolved})
            self.test = load_dataset(config.dataset, "test", data_dir=config.data_dir, progress=self.progress)
            self.test = self.test.subset(min(config.n_eval, len(self.test)))
            yield self

    def stage(self, path: Path, compute: Callable[[], dict], inputs: dict, *, shared: bool = False) -> dict:
        """A cached stage (:func:`_stage`), computed by every rank together when ``shared``."""
        return _stage(path, compute, redo=self.overwrite, inputs=inputs, world=self.runtime.world if shared else None)

    def train_models(self) -> None:
        """Every model trained (or resumed) into models/NAME, then loaded onto the device."""
        world = self.runtime.world
        for name in self.config.models:
            folder = inside(self.out, self.out / "models" / name)  # a name is checked; the write is too
            done = folder / "done.json"
            if on_main(world, lambda done=done: self.overwrite or not done.is_file()):
                self.log(f"training {self.config.label(name)}")
                summary = train(
                    self.config.train_config(name),
                    folder,
                    resume=folder.is_dir() and not self.overwrite,
                    overwrite=self.overwrite,
                    progress=self.progress,
                    runtime=self.runtime,
                )
                # On disk before any rank reads it.
                on_main(world, lambda done=done, summary=summary: str(write_json(done, summary)))
            self.models[name], _ = load_checkpoint(folder / "model.safetensors", device=self.runtime.device)
        self.digests = {name: _digest(self.out / "models" / name / "model.safetensors") for name in self.models}

    def evaluate_models(self) -> None:
        """Each model under the study's attacks over the ε grid (every rank its share under torchrun)."""
        config, world = self.config, self.runtime.world
        for name in self.models:
            inputs = {
                "model": self.digests[name],
                "attacks": config.attacks,
                "eps": config.eps_grid,
                "n": len(self.test),
                "seed": config.seed,
                "device": self.runtime.device.type,  # random starts differ by device
                **({"world_size": world.size} if world is not None else {}),
            }  # and by rank
            self.stage(
                self.out / "models" / name / "eval.json", lambda name=name: self._evaluate(name), inputs, shared=True
            )

    def _evaluate(self, name: str) -> dict:
        config = self.config
        self.log(f"evaluating {config.label(name)} on {len(self.test)} test images")
        result = evaluate(
            self.models[name],
            self.test,
            attacks=self.attacks,
            eps=list(config.eps_grid),
            seed=config.seed,
            progress=self.progress,
            keep_per_example=True,
            runtime=self.runtime,
        )
        # The examples no attack broke at the training ε: the sanity checks attack these further.
        survivors = torch.ones(result.n, dtype=torch.bool)
        for attack in self.attacks:
            survivors &= result.per_example[f"{attack.label}@{config.train_eps:g}"]
        return {**result.to_dict(), "train_eps_survivors": survivors.nonzero().squeeze(1).tolist()}

    def alone(self) -> None:
        """The rest runs on rank 0 alone: the runtime without its torchrun job."""
        self.runtime = dataclasses.replace(self.runtime, world=None)

    def sanity_checks(self) -> None:
        config = self.config
        for name in self.models:
            inputs = {
                "model": self.digests[name],
                "surrogate": self.digests[surrogate_of(config, name)],
                "eval": _digest(self.out / "models" / name / "eval.json"),
                "device": self.runtime.device.type,
                "dlr": config.check_dlr,
                "square": config.check_square,
                "suite": config.suite,
            }

            def compute(name=name) -> dict:
                self.log(f"sanity-check measurements for {config.label(name)}")
                return check_numbers(
                    config,
                    name,
                    self.models,
                    self.test,
                    attacks=self.attacks,
                    out=self.out,
                    runtime=self.runtime,
                    progress=self.progress,
                )

            self.stage(self.out / "models" / name / "checks.json", compute, inputs)

    def certify(self) -> None:
        """Each model's verified accuracy at the training ε, and smoothing's radii for one trained with noise."""
        config = self.config
        for name in self.models:
            trained = self.resolved[name]
            sigma = METHODS[trained["method"]](config.train_config(name)).smoothing_sigma()
            smoothing = (
                None
                if sigma is None
                else {
                    "sigma": sigma,
                    "n": config.smoothing_n,
                    "n0": config.smoothing_n0,
                    "alpha": config.smoothing_alpha,
                    "images": config.smoothing_images,
                }
            )
            inputs = {
                "model": self.digests[name],
                "eps": config.train_eps,
                "n": len(self.test),
                "smoothing": smoothing,
                "device": self.runtime.device.type,
                **({"verifier": config.verifier} if config.verifier != "ibp" else {}),
            }

            def compute(name=name, smoothing=smoothing) -> dict:
                return certified_numbers(
                    self.models[name],
                    self.test,
                    eps=config.train_eps,
                    label=config.label(name),
                    smoothing=smoothing,
                    runtime=self.runtime,
                    progress=self.progress,
                    verifier=config.verifier,
                )

            self.stage(self.out / "models" / name / "certified.json", compute, inputs)

    def arms_race(self, best: str) -> None:
        """The standard and the most robust model behind each defense (advlab.study.arms_race)."""
        config = self.config
        names = ["standard"] + ([best] if best != "standard" else [])
        inputs = {
            "models": {n: self.digests[n] for n in names},
            "defenses": config.defenses,
            "attack": config.arms_race_attack,
            "eot": config.arms_race_eot,
            "n": min(config.arms_race_n, len(self.test)),
            "eps": config.train_eps,
            "seed": config.seed,
            "device": self.runtime.device.type,
        }

        def compute() -> dict:
            return measure_arms_race(
                self.models,
                names,
                {n: config.label(n) for n in names},
                self.test,
                defenses=list(config.defenses),
                attack=config.arms_race_attack,
                eot=config.arms_race_eot,
                eps=config.train_eps,
                n=config.arms_race_n,
                seed=config.seed,
                runtime=self.runtime,
                progress=self.progress,
            )

        self.stage(self.out / "arms_race.json", compute, inputs)

    def gallery(self, metrics: dict) -> None:
        config, best = self.config, metrics["best_robust_model"]
        inputs = {
            "standard": self.digests["standard"],
            best: self.digests[best],
            "size": config.gallery_size,
            "eps": config.train_eps,
            "targeted_eps": config.targeted_eps,
            "attacks": config.attacks,
            "n": len(self.test),
            "seed": config.seed,
            "device": self.runtime.device.type,
        }
        if self.overwrite or _gallery_inputs(self.out) != json.loads(json.dumps(inputs)):
            self.log("drawing the gallery")
            draw_gallery(
                config,
                self.models,
                self.test,
                attacks=self.attacks,
                robust=best,
                out=self.out,
                inputs=inputs,
                runtime=self.runtime,
            )

    def explorer(self) -> None:
        """The explorer's numbers (explorer.json) and images (explorer.safetensors)."""
        config = self.config
        inputs = {
            "models": self.digests,
            "size": config.explorer_size,
            "eps": config.eps_grid,
            "attacks": config.attacks,
            "targeted_eps": config.targeted_eps,
            "n": len(self.test),
            "seed": config.seed,
            "device": self.runtime.device.type,
        }

        def compute() -> dict:
            attack = strongest_pgd(self.attacks)
            numbers, tensors = explorer_numbers(
                self.models,
                self.test,
                attack=attack,
                eps_grid=list(config.eps_grid),
                targeted=targeted_attack(attack),
                targeted_eps=config.targeted_eps,
                targeted_model="standard",
                size=config.explorer_size,
                seed=config.seed,
                runtime=self.runtime,
                progress=self.progress,
            )
            save_tensors(self.out / "explorer.safetensors", tensors)
            return numbers

        redo = self.overwrite or not (self.out / "explorer.safetensors").is_file()
        _stage(self.out / "explorer.json", compute, redo=redo, inputs=inputs)

    def finish(self) -> dict:
        metrics = collect_metrics(self.out)
        write_json(self.out / "metrics.json", metrics)
        self.log(f"measured in {time.perf_counter() - self.start:.0f} s: {self.out / 'metrics.json'}")
        return metrics


def _gallery_inputs(out: Path) -> dict | None:
    path = out / "gallery.safetensors"
    if not path.is_file():
        return None
    try:
        return json.loads(load_tensors(path)[1]["gallery"]).get("inputs")
    except (AdvlabError, KeyError, ValueError):
        return None


__all__ = ["Study", "run_study"]
