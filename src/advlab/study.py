"""The trade-off study: train standard and adversarially trained models, attack them all, write a report.

One command runs the whole experiment into a run folder; each stage (training a model, evaluating it,
the sanity checks, the gallery) is cached there, so an interrupted study picks up where it stopped::

    advlab study --preset quick --out runs/quick        # ≈ 3 minutes on a 2-core CPU
    advlab study configs/full.toml --out runs/full
    advlab report runs/quick                             # rebuild report.html from the saved files

Python: ``run_study(load_study_config("configs/quick.toml"), "runs/quick")``.

Layout of the run folder: ``config.json`` (resolved), ``models/NAME/`` (a training run folder each, plus
``eval.json`` and ``checks.json``), ``gallery.safetensors``, ``metrics.json``, ``figures/``, ``report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from advlab.attacks import AttackSpec, parse_attack
from advlab.errors import AdvlabError, check_range
from advlab.runs import load_checkpoint, prepare_run_dir, read_json, save_tensors, write_json

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the repository's configs/ (editable install)


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
        specs = [parse_attack(a) for a in self.attacks]
        if not any(s.name == "fgsm" for s in specs) or not any(s.name == "pgd" for s in specs):
            raise AdvlabError("a study's attacks must include fgsm and a pgd attack (its sanity checks compare them)")
        if "standard" not in self.models or len(self.models) < 2:
            raise AdvlabError("a study needs a model named 'standard' and at least one adversarially trained model")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise AdvlabError(f"unknown study settings: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
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

    def train_config(self, name: str):
        """The resolved :class:`advlab.train.TrainConfig` of model ``name``."""
        from advlab.train import TrainConfig

        overrides = {k: v for k, v in self.models[name].items() if k != "label"}
        values = {"dataset": self.dataset, "eps": self.train_eps, "seed": self.seed, "data_dir": self.data_dir,
                  **self.train, **overrides}
        return TrainConfig.from_dict(values)

    def label(self, name: str) -> str:
        return str(self.models[name].get("label", name))


def load_study_config(source: str | Path | None = None, *, preset: str | None = None) -> StudyConfig:
    """Read a study from a TOML file (``[study]``, ``[train]`` and ``[models.NAME]`` tables) or a preset name."""
    if source is None and preset is None:
        preset = "quick"
    if preset is not None:
        if source is not None:
            raise AdvlabError("give either a CONFIG.toml or --preset, not both")
        source = CONFIG_DIR / f"{preset}.toml"
        if not source.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise AdvlabError(f"unknown preset {preset!r}; choose one of: {', '.join(known) or 'none found'}")
    path = Path(source)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdvlabError(f"study config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise AdvlabError(f"{path} is not a valid TOML file: {err}") from None
    unknown = sorted(set(raw) - {"study", "train", "models"})
    if unknown:
        raise AdvlabError(f"{path}: unknown tables {unknown}; use [study], [train] and [models.NAME]")
    values = dict(raw.get("study", {}))
    values.setdefault("preset", preset or path.stem)
    return StudyConfig.from_dict({**values, "train": raw.get("train", {}), "models": raw.get("models", {})})


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"[study] {message}", file=sys.stderr, flush=True)


def _stage(path: Path, compute: Callable[[], dict], *, redo: bool) -> dict:
    """Return the cached result at ``path``, or compute it and save it there (atomically)."""
    if path.is_file() and not redo:
        return read_json(path)
    result = compute()
    write_json(path, result)
    return result


def run_study(config: StudyConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the study ``config`` in the folder ``out`` and write its report. Returns metrics."""
    from advlab.data import load_dataset
    from advlab.report import build_report
    from advlab.train import train

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
                            overwrite=overwrite, progress=progress)
            write_json(done, summary)
        models[name], _ = load_checkpoint(folder / "model.safetensors")
    for name, model in models.items():
        folder = out / "models" / name

        def evaluate_model(model=model, name=name) -> dict:
            from advlab.evaluate import evaluate

            _log(f"evaluating {config.label(name)} on {len(test)} test images", progress)
            return evaluate(model, test, attacks=attacks, eps=list(config.eps_grid), seed=config.seed,
                            progress=progress).to_dict()

        _stage(folder / "eval.json", evaluate_model, redo=overwrite)
    for name in models:
        _stage(out / "models" / name / "checks.json",
               lambda name=name: _check_numbers(config, name, models, test, attacks, out, progress), redo=overwrite)
    metrics = collect_metrics(out)
    if overwrite or not (out / "gallery.safetensors").is_file():
        _log("drawing the gallery", progress)
        _gallery(config, metrics, models, test, attacks, out)
    metrics = collect_metrics(out)
    write_json(out / "metrics.json", metrics)
    build_report(out)
    _log(f"done in {time.perf_counter() - start:.0f} s: {out / 'report.html'}", progress)
    return metrics


def _strongest_pgd(attacks: list[AttackSpec]) -> AttackSpec:
    return max((a for a in attacks if a.name == "pgd"), key=lambda a: a.steps * a.restarts)


def _check_numbers(config: StudyConfig, name: str, models: dict, test, attacks: list[AttackSpec],
                   out: Path, progress: bool) -> dict:
    """The extra measurements behind the gradient-masking checks, at the training ε."""
    from advlab.evaluate import evaluate, transfer_accuracy

    _log(f"sanity-check measurements for {config.label(name)}", progress)
    eps = config.train_eps
    base = _strongest_pgd(attacks)
    doubled = dataclasses.replace(base, steps=2 * base.steps, restarts=2 * base.restarts)
    noise = AttackSpec("noise", norm=base.norm)
    # The base PGD figure is the study's own (models/NAME/eval.json), the one the report shows.
    saved = read_json(out / "models" / name / "eval.json")
    base_accuracy = saved["robust_accuracy"][base.label][saved["eps"].index(eps)]
    result = evaluate(models[name], test, attacks=[doubled, noise], eps=[eps], seed=config.seed + 1,
                      progress=progress)
    # The surrogate for a transfer attack: the standard model for robust models, and for the standard
    # model the first adversarially trained one.
    surrogate = "standard" if name != "standard" else next(n for n in config.models if n != "standard")
    transfer = transfer_accuracy(models[name], models[surrogate], test, attack=base, eps=eps, seed=config.seed)
    return {"eps": eps, "pgd": {"label": base.label, "accuracy": base_accuracy},
            "pgd_doubled": {"label": doubled.label, "accuracy": result.robust[doubled.label][0]},
            "noise": {"label": noise.label, "accuracy": result.robust[noise.label][0]},
            "transfer": {"surrogate": surrogate, "label": base.label, "accuracy": transfer}}


def sanity_checks(metrics: dict, checks: dict[str, dict]) -> list[dict]:
    """Carlini et al. 2019 (arXiv:1902.06705) checks against gradient masking, each pass/fail with numbers."""
    rows = []
    grid = metrics["eps_grid"]
    chance = metrics["chance_accuracy"]

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    for name, model in metrics["models"].items():
        numbers = checks[name]
        eps = numbers["eps"]
        i = grid.index(eps)
        labels = list(model["robust_accuracy"])
        fgsm = next(label for label in labels if label.startswith("FGSM"))
        pgd = numbers["pgd"]["label"]
        fgsm_acc, pgd_acc = model["robust_accuracy"][fgsm][i], numbers["pgd"]["accuracy"]

        def add(check: str, passed: bool, detail: str, values: dict) -> None:
            rows.append({"model": name, "check": check, "passed": bool(passed), "detail": detail, "numbers": values})

        add("iterative beats single-step", pgd_acc <= fgsm_acc,
            f"{pgd} {pct(pgd_acc)} ≤ {fgsm} {pct(fgsm_acc)} at ε = {eps:g}", {pgd: pgd_acc, fgsm: fgsm_acc})
        doubled = numbers["pgd_doubled"]
        change = abs(doubled["accuracy"] - pgd_acc)
        add("more steps and restarts change little", change < 0.01,
            f"{doubled['label']} {pct(doubled['accuracy'])} vs {pgd} {pct(pgd_acc)}: "
            f"{100 * change:.1f} points (< 1 needed)", {doubled["label"]: doubled["accuracy"], pgd: pgd_acc})
        worst = model["worst_case_accuracy"]
        rises = [(grid[j], grid[j + 1]) for j in range(len(worst) - 1) if worst[j + 1] > worst[j] + 1e-9]
        add("accuracy falls as ε grows", not rises,
            "worst case never rises along the ε grid" if not rises else f"rises between ε = {rises[0][0]:g} and "
            f"{rises[0][1]:g}", {f"{e:g}": w for e, w in zip(grid, worst)})
        add("reaches chance at large ε", worst[-1] <= chance,
            f"{pct(worst[-1])} at ε = {grid[-1]:g} (chance {pct(chance)})", {"accuracy": worst[-1], "chance": chance})
        noise = numbers["noise"]
        add("random noise hurts less than PGD", noise["accuracy"] >= pgd_acc,
            f"{noise['label']} {pct(noise['accuracy'])} ≥ {pgd} {pct(pgd_acc)} at ε = {eps:g}",
            {noise["label"]: noise["accuracy"], pgd: pgd_acc})
        transfer = numbers["transfer"]
        add("transfer attack weaker than white-box", transfer["accuracy"] >= pgd_acc,
            f"{pgd} from {transfer['surrogate']} {pct(transfer['accuracy'])} ≥ white-box {pct(pgd_acc)}",
            {"transfer": transfer["accuracy"], "white-box": pgd_acc})
    return rows


def _gallery(config: StudyConfig, metrics: dict, models: dict, test, attacks: list[AttackSpec], out: Path) -> None:
    """Adversarial examples for the standard and the most robust model on the same images, plus targeted ones."""
    x_all, y_all = test.tensors()
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
    attack = _strongest_pgd(attacks)
    eps = config.train_eps
    robust = metrics["best_robust_model"]
    tensors = {"x": x, "labels": y}
    for name in ("standard", robust):
        x_adv = attack(models[name], x, y, eps=eps, generator=torch.Generator().manual_seed(config.seed))
        with torch.inference_mode():
            tensors[f"{name}.x_adv"] = x_adv
            tensors[f"{name}.logits_clean"] = models[name](x)
            tensors[f"{name}.logits_adv"] = models[name](x_adv)
    targets = (y + len(test.info.classes) // 2) % len(test.info.classes)
    targeted = dataclasses.replace(attack, steps=max(attack.steps, 50), targeted=True)
    x_adv = targeted(standard, x, targets, eps=config.targeted_eps, generator=torch.Generator().manual_seed(config.seed))
    with torch.inference_mode():
        tensors.update({"targeted.x_adv": x_adv, "targeted.logits_clean": standard(x),
                        "targeted.logits_adv": standard(x_adv), "targeted.targets": targets})
    info = {"file": "gallery.safetensors", "eps": eps, "attack": attack.label, "models": ["standard", robust],
            "targeted_model": "standard", "targeted_eps": config.targeted_eps, "targeted_attack": targeted.label,
            "targets": targets.tolist()}
    save_tensors(out / "gallery.safetensors", tensors, metadata={"gallery": json.dumps(info)})


def collect_metrics(out: str | Path) -> dict:
    """Assemble ``metrics.json`` from the saved stage files alone (no live objects)."""
    from advlab import __version__
    from advlab.data import get_info
    from advlab.runs import load_tensors

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
        models[name] = {
            "method": saved["train_configs"][name]["method"], "label": config.label(name),
            "train_config": saved["train_configs"][name], "train_seconds": done.get("seconds"),
            "epochs": _read_epochs(folder), "clean_accuracy": evaluation["clean_accuracy"],
            "robust_accuracy": evaluation["robust_accuracy"], "worst_case_accuracy": evaluation["worst_case_accuracy"],
            "eval_seconds": evaluation["seconds"], "n_eval": evaluation["n"],
        }
        if (folder / "checks.json").is_file():
            checks[name] = read_json(folder / "checks.json")
    i = config.eps_grid.index(config.train_eps)
    adversarial = [n for n in models if n != "standard"]
    metrics: dict[str, Any] = {
        "advlab_version": __version__, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "preset": config.preset, "dataset": info.name, "classes": list(info.classes),
        "train_eps": config.train_eps, "eps_grid": list(config.eps_grid), "n_eval": config.n_eval,
        "chance_accuracy": 1 / len(info.classes),
        "attacks": {a.label: a.to_dict() for a in attacks},
        "attack_hyperparameters": {a.label: [a.hyperparameters(e) for e in config.eps_grid] for a in attacks},
        "models": models,
        "best_robust_model": max(adversarial, key=lambda n: models[n]["worst_case_accuracy"][i]) if adversarial else None,
        "sanity_checks": sanity_checks({"eps_grid": list(config.eps_grid), "chance_accuracy": 1 / len(info.classes),
                                        "models": {n: models[n] for n in checks}}, checks) if checks else [],
    }
    if (out / "gallery.safetensors").is_file():
        _, meta = load_tensors(out / "gallery.safetensors")
        metrics["gallery"] = json.loads(meta["gallery"])
    return metrics


def _read_epochs(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
