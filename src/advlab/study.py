"""The trade-off study: train standard and adversarially trained models, attack them all, check the results.

One command runs the whole experiment into a run folder; each stage (training a model, evaluating it,
the sanity checks, the gallery) is cached there, so an interrupted study picks up where it stopped::

    advlab study --preset quick --out runs/quick        # ≈ 3 minutes on a 2-core CPU
    advlab study mine.toml --out runs/mine               # a config of your own (--show-preset quick to start)
    advlab report runs/quick                             # rebuild report.html from the saved files

Python: ``run_study(load_study_config(preset="quick"), "runs/quick")``, then
``advlab.report.build_report("runs/quick")`` for the page (the command line does both).

Layout of the run folder: ``config.json`` (resolved), ``models/NAME/`` (a training run folder each, plus
``eval.json`` and ``checks.json``), ``gallery.safetensors``, ``metrics.json``, ``figures/``, ``report.html``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from advlab import __version__
from advlab.attacks import AttackSpec, parse_attack, verify_adversarial
from advlab.checks import measure_checks, sanity_checks, strongest_pgd
from advlab.data import get_info, load_dataset
from advlab.errors import AdvlabError, check_known, check_range
from advlab.evaluate import evaluate
from advlab.presets import preset_text
from advlab.results import best_robust_model
from advlab.runs import load_checkpoint, load_tensors, prepare_run_dir, read_json, save_tensors, write_json
from advlab.runtime import Runtime
from advlab.train import TrainConfig, train


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study does; saved, resolved, as ``config.json`` in the run folder."""

    preset: str = "custom"  # a name for the report's heading
    dataset: str = "fashion-mnist"  # the offline data set every machine here has
    seed: int = 0  # one seed for training and attacks: the same seed gives the same metrics on CPU
    train_eps: float = 0.1  # the usual L∞ budget for Fashion-MNIST (Croce et al. 2019)
    # Up to 3× the training ε: far enough that every model falls to chance (a sanity check needs it).
    eps_grid: tuple[float, ...] = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
    attacks: tuple[str, ...] = ("fgsm", "pgd20")  # single-step against iterative, per model and ε
    n_eval: int = 1000  # test images per evaluation: ±1.5 points of binomial noise at 1,000
    gallery_size: int = 6  # rows in the gallery picture
    targeted_eps: float = 0.2  # targeted attacks need more room than untargeted ones on small images
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings shared by every model
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> TrainConfig overrides (+ label)
    data_dir: str | None = None  # where the data set lives, if not in the default places

    def __post_init__(self) -> None:
        check_range("train_eps", self.train_eps, 0.0, 1.0)
        check_range("targeted_eps", self.targeted_eps, 0.0, 1.0)
        for eps in self.eps_grid:
            check_range("eps_grid entry", eps, 0.0, 1.0)
        if list(self.eps_grid) != sorted(set(self.eps_grid)) or len(self.eps_grid) < 2:
            raise AdvlabError(f"eps_grid must hold at least two increasing values, got {list(self.eps_grid)}")
        if self.train_eps not in self.eps_grid:
            raise AdvlabError(f"eps_grid must contain train_eps = {self.train_eps}")
        if self.n_eval < 1 or self.gallery_size < 1:
            raise AdvlabError("n_eval and gallery_size must be at least 1")
        if self.eps_grid[-1] <= self.train_eps:
            raise AdvlabError(f"eps_grid must go beyond train_eps = {self.train_eps} (a sanity check needs accuracy "
                              "to reach chance at large ε)")
        specs = [parse_attack(a) for a in self.attacks]
        if not any(s.name == "fgsm" for s in specs) or not any(s.name == "pgd" for s in specs):
            raise AdvlabError("a study's attacks must include fgsm and a pgd attack (its sanity checks compare them)")
        if any(s.targeted for s in specs):
            raise AdvlabError("a study's attacks are untargeted (its checks and gallery use them on true labels); "
                              "evaluate targeted attacks with `advlab evaluate --attack NAME-targeted`")
        if len({s.norm for s in specs}) > 1:
            raise AdvlabError("a study's attacks must share one norm (the worst case over attacks is per ε); got "
                              + ", ".join(self.attacks))
        if "standard" not in self.models or len(self.models) < 2:
            raise AdvlabError("a study needs a model named 'standard' and at least one adversarially trained model")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyConfig:
        check_known("study settings", values, [f.name for f in dataclasses.fields(cls)])
        values = dict(values)
        for key in ("eps_grid", "attacks"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as err:
            raise AdvlabError(f"bad study settings: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def attack_specs(self) -> list[AttackSpec]:
        return [parse_attack(a) for a in self.attacks]

    def train_config(self, name: str) -> TrainConfig:
        """The resolved :class:`advlab.train.TrainConfig` of model ``name``."""
        overrides = {k: v for k, v in self.models[name].items() if k != "label"}
        values = {"dataset": self.dataset, "eps": self.train_eps, "seed": self.seed, "data_dir": self.data_dir,
                  **self.train, **overrides}
        return TrainConfig.from_dict(values)

    def label(self, name: str) -> str:
        return str(self.models[name].get("label", name))


def load_study_config(source: str | Path | None = None, *, preset: str | None = None) -> StudyConfig:
    """Read a study from a TOML file (``[study]``, ``[train]`` and ``[models.NAME]`` tables) or a shipped
    preset (``preset="quick"``, the default without a file)."""
    if source is not None and preset is not None:
        raise AdvlabError("give either a CONFIG.toml or --preset, not both")
    if source is None:
        preset = preset or "quick"
        text, where = preset_text("study", preset), f"preset {preset!r}"
    else:
        path = Path(source)
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise AdvlabError(f"study config {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise AdvlabError(f"cannot read {path}: {err}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AdvlabError(f"{where} is not a valid TOML file: {err}") from None
    unknown = sorted(set(raw) - {"study", "train", "models"})
    if unknown:
        raise AdvlabError(f"{where}: unknown tables {unknown}; use [study], [train] and [models.NAME]")
    values = dict(raw.get("study", {}))
    values.setdefault("preset", preset or Path(source).stem)
    return StudyConfig.from_dict({**values, "train": raw.get("train", {}), "models": raw.get("models", {})})


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"[study] {message}", file=sys.stderr, flush=True)


def _digest(path: Path) -> str:
    """A short content hash of a file: what a cached stage records of the files it was computed from."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _stage(path: Path, compute: Callable[[], dict], *, redo: bool, inputs: dict) -> dict:
    """Return the cached result at ``path`` if it was computed from these ``inputs`` (settings and the
    digests of the files it read), else compute it and save it there (atomically) with its inputs. So a
    retrained model, a changed surrogate or an interrupted ``--overwrite`` never leaves a stale stage."""
    inputs = json.loads(json.dumps(inputs))  # as saved: tuples become lists
    if path.is_file() and not redo:
        cached = read_json(path)
        if cached.get("inputs") == inputs:
            return cached
    result = {**compute(), "inputs": inputs}
    write_json(path, result)
    return result


def run_study(config: StudyConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
              runtime: Runtime | None = None) -> dict:
    """Run (or resume) the study ``config`` in the folder ``out``; write and return its ``metrics.json``.

    ``runtime`` says where every stage runs (default: CUDA when present, else CPU). The report is drawn
    from the saved files by :func:`advlab.report.build_report` (``advlab study`` calls it at the end).
    """
    runtime = runtime if runtime is not None else Runtime()
    if runtime.precision != "fp32":
        raise AdvlabError(f"the study trains and evaluates in fp32; precision {runtime.precision!r} is for "
                          "`advlab evaluate` and `advlab attack`")
    start = time.perf_counter()
    out = Path(out)
    saved = out / "config.json"
    resolved = {name: config.train_config(name).to_dict() for name in config.models}  # validates every model
    if saved.is_file() and not overwrite:
        previous = read_json(saved).get("study", {})
        current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise AdvlabError(f"{out} holds a study with other settings ({', '.join(changed)}); "
                              "choose another --out or pass --overwrite")
    prepare_run_dir(out, resume=saved.is_file(), overwrite=overwrite)
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
        if overwrite or not done.is_file():
            _log(f"training {config.label(name)}", progress)
            summary = train(config.train_config(name), folder, resume=folder.is_dir() and not overwrite,
                            overwrite=overwrite, progress=progress, runtime=runtime)
            write_json(done, summary)
        models[name], _ = load_checkpoint(folder / "model.safetensors", device=runtime.device)
    digests = {name: _digest(out / "models" / name / "model.safetensors") for name in models}
    for name, model in models.items():
        folder = out / "models" / name

        def evaluate_model(model=model, name=name) -> dict:
            _log(f"evaluating {config.label(name)} on {len(test)} test images", progress)
            result = evaluate(model, test, attacks=attacks, eps=list(config.eps_grid), seed=config.seed,
                              progress=progress, keep_per_example=True, runtime=runtime)
            # The examples no attack broke at the training ε: the sanity checks attack these further.
            survivors = torch.ones(result.n, dtype=torch.bool)
            for attack in attacks:
                survivors &= result.per_example[f"{attack.label}@{config.train_eps:g}"]
            return {**result.to_dict(), "train_eps_survivors": survivors.nonzero().squeeze(1).tolist()}

        _stage(folder / "eval.json", evaluate_model, redo=overwrite,
               inputs={"model": digests[name], "attacks": config.attacks, "eps": config.eps_grid, "n": len(test),
                       "seed": config.seed, "device": runtime.device.type})  # random starts differ by device
    for name in models:
        surrogate = _surrogate(config, name)
        _stage(out / "models" / name / "checks.json",
               lambda name=name: _check_numbers(config, name, models, test, attacks, out, progress, runtime),
               redo=overwrite,
               inputs={"model": digests[name], "surrogate": digests[surrogate],
                       "eval": _digest(out / "models" / name / "eval.json"), "device": runtime.device.type})
    metrics = collect_metrics(out)
    best = metrics["best_robust_model"]
    gallery_inputs = {"standard": digests["standard"], best: digests[best], "size": config.gallery_size,
                      "eps": config.train_eps, "targeted_eps": config.targeted_eps, "attacks": config.attacks,
                      "n": len(test), "seed": config.seed, "device": runtime.device.type}
    if overwrite or _gallery_inputs(out) != json.loads(json.dumps(gallery_inputs)):
        _log("drawing the gallery", progress)
        _gallery(config, metrics, models, test, attacks, out, gallery_inputs, runtime)
    metrics = collect_metrics(out)
    write_json(out / "metrics.json", metrics)
    _log(f"measured in {time.perf_counter() - start:.0f} s: {out / 'metrics.json'}", progress)
    return metrics


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


def _check_numbers(config: StudyConfig, name: str, models: dict, test, attacks: list[AttackSpec],
                   out: Path, progress: bool, runtime: Runtime) -> dict:
    """The extra measurements behind the gradient-masking checks at the training ε, beside the study's own
    figures for that model (``models/NAME/eval.json``, the ones the report shows).

    Each extra attack also counts towards the model's worst case there (``worst_case_all``): doubled PGD
    attacks the examples the study's own attacks left robust, uniform noise and the transfer attack every
    example, and an example is robust only if it survives them all.
    """
    _log(f"sanity-check measurements for {config.label(name)}", progress)
    eps = config.train_eps
    base = strongest_pgd(attacks)
    saved = read_json(out / "models" / name / "eval.json")
    i = saved["eps"].index(eps)
    survivors = torch.tensor(saved["train_eps_survivors"], dtype=torch.long)
    surrogate = _surrogate(config, name)
    numbers = measure_checks(models[name], models[surrogate], test, base=base, eps=eps, survivors=survivors,
                             seed=config.seed, runtime=runtime, progress=progress)
    robust = numbers.pop("robust_after_all")
    numbers["transfer"]["surrogate"] = surrogate
    return {**numbers,
            "pgd": {"label": base.label, "accuracy": saved["robust_accuracy"][base.label][i]},
            "worst_case": {"accuracy": saved["worst_case_accuracy"][i], "attacks": [a.label for a in attacks]},
            "worst_case_all": {"accuracy": robust.float().mean().item(),
                               "attacks": [a.label for a in attacks] + [numbers["pgd_doubled"]["label"],
                                                                        numbers["noise"]["label"],
                                                                        f"transfer {base.label} from {surrogate}"]}}


def _gallery(config: StudyConfig, metrics: dict, models: dict, test, attacks: list[AttackSpec], out: Path,
             inputs: dict, runtime: Runtime) -> None:
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
        x_adv = attack(models[name], x, y, eps=eps, generator=runtime.generator(config.seed),
                       channels_last=runtime.channels_last)
        verify_adversarial(x, x_adv, eps, attack.norm, what=f"gallery {attack.label}")
        with torch.inference_mode():
            tensors[f"{name}.x_adv"] = x_adv
            tensors[f"{name}.logits_clean"] = models[name](x)
            tensors[f"{name}.logits_adv"] = models[name](x_adv)
    targets = (y + len(test.info.classes) // 2) % len(test.info.classes)
    targeted = dataclasses.replace(attack, steps=max(attack.steps, 50), targeted=True)
    x_adv = targeted(standard, x, targets, eps=config.targeted_eps, generator=runtime.generator(config.seed),
                     channels_last=runtime.channels_last)
    verify_adversarial(x, x_adv, config.targeted_eps, targeted.norm, what=f"gallery {targeted.label}")
    with torch.inference_mode():
        tensors.update({"targeted.x_adv": x_adv, "targeted.logits_clean": standard(x),
                        "targeted.logits_adv": standard(x_adv), "targeted.targets": targets})
    info = {"file": "gallery.safetensors", "eps": eps, "attack": attack.label, "models": ["standard", robust],
            "targeted_model": "standard", "targeted_eps": config.targeted_eps, "targeted_attack": targeted.label,
            "targets": targets.tolist(), "targeted_hyperparameters": targeted.hyperparameters(config.targeted_eps),
            "inputs": inputs}
    save_tensors(out / "gallery.safetensors", tensors, metadata={"gallery": json.dumps(info)})


def collect_metrics(out: str | Path) -> dict:
    """Assemble ``metrics.json`` from the saved stage files alone (no live objects)."""
    out = Path(out)
    saved = read_json(out / "config.json")
    config = StudyConfig.from_dict(saved["study"])
    info = get_info(config.dataset)
    attacks = config.attack_specs()
    models: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    for name in config.models:
        folder = out / "models" / name
        if not (folder / "eval.json").is_file():
            continue
        evaluation = read_json(folder / "eval.json")
        done = read_json(folder / "done.json") if (folder / "done.json").is_file() else {}
        if (folder / "checks.json").is_file():
            checks[name] = read_json(folder / "checks.json")
        models[name] = {
            "method": saved["train_configs"][name]["method"], "label": config.label(name),
            "train_config": saved["train_configs"][name], "train_seconds": done.get("seconds"),
            "epochs": _read_epochs(folder), "clean_accuracy": evaluation["clean_accuracy"],
            "robust_accuracy": evaluation["robust_accuracy"], "worst_case_accuracy": evaluation["worst_case_accuracy"],
            "eval_seconds": evaluation["seconds"], "n_eval": evaluation["n"],
            # The catastrophic-overfitting guard's last word on this model's training (None: it never fired).
            "collapse": done.get("catastrophic_overfitting_message"),
        }
        if name in checks:  # the worst case at the training ε over every attack run there, checks included
            models[name]["worst_case_all_attacks"] = {"eps": checks[name]["eps"], **checks[name]["worst_case_all"]}
    metrics: dict[str, Any] = {
        "advlab_version": __version__, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "preset": config.preset, "dataset": info.name, "classes": list(info.classes),
        "train_eps": config.train_eps, "eps_grid": list(config.eps_grid),
        "n_eval": next((m["n_eval"] for m in models.values()), config.n_eval),  # as evaluated (≤ the test set)
        "chance_accuracy": 1 / len(info.classes),
        "attacks": {a.label: a.to_dict() for a in attacks},
        "attack_hyperparameters": {a.label: [a.hyperparameters(e) for e in config.eps_grid] for a in attacks},
        "models": models,
        "best_robust_model": best_robust_model({"models": models, "eps_grid": list(config.eps_grid),
                                                "train_eps": config.train_eps}),
        # The sanity checks' extra attacks at the training ε (and the gallery's targeted one, below).
        "check_attacks": {label: h for c in checks.values() for label, h in _check_attacks(c).items()},
        "sanity_checks": sanity_checks({"eps_grid": list(config.eps_grid), "chance_accuracy": 1 / len(info.classes),
                                        "models": {n: models[n] for n in checks}}, checks) if checks else [],
    }
    if (out / "gallery.safetensors").is_file():
        _, meta = load_tensors(out / "gallery.safetensors")
        metrics["gallery"] = json.loads(meta["gallery"])
        if "targeted_hyperparameters" in metrics["gallery"]:
            metrics["check_attacks"][f"{metrics['gallery']['targeted_attack']} (gallery)"] = \
                metrics["gallery"]["targeted_hyperparameters"]
    return metrics


def _check_attacks(checks: dict) -> dict[str, dict]:
    found = {}
    for key, what in (("pgd_doubled", "{} (sanity check)"), ("noise", "{} (sanity check)"),
                      ("transfer", "{} transfer (sanity check)")):
        if "hyperparameters" in checks.get(key, {}):
            found[what.format(checks[key]["label"])] = checks[key]["hyperparameters"]
    return found


def _read_epochs(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]
