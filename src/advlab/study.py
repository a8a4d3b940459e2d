"""The trade-off study: train standard and adversarially trained models, attack them all, write a report.

One command runs the whole experiment into a run folder; each stage (training a model, evaluating it,
the sanity checks, the gallery) is cached there, so an interrupted study picks up where it stopped::

    advlab study --preset quick --out runs/quick        # ≈ 3.5 minutes on a 2-core CPU
    advlab study configs/full.toml --out runs/full
    advlab report runs/quick                             # rebuild report.html from the saved files

Python: ``run_study(load_study_config("configs/quick.toml"), "runs/quick")``.

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
        if self.eps_grid[-1] <= self.train_eps:
            raise AdvlabError(f"eps_grid must go beyond train_eps = {self.train_eps} (a sanity check needs accuracy "
                              "to reach chance at large ε)")
        specs = [parse_attack(a) for a in self.attacks]
        if not any(s.name == "fgsm" for s in specs) or not any(s.name == "pgd" for s in specs):
            raise AdvlabError("a study's attacks must include fgsm and a pgd attack (its sanity checks compare them)")
        if len({s.norm for s in specs}) > 1:
            raise AdvlabError("a study's attacks must share one norm (the worst case over attacks is per ε); got "
                              + ", ".join(self.attacks))
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
                            overwrite=overwrite, progress=progress)
            write_json(done, summary)
        models[name], _ = load_checkpoint(folder / "model.safetensors")
    digests = {name: _digest(out / "models" / name / "model.safetensors") for name in models}
    for name, model in models.items():
        folder = out / "models" / name

        def evaluate_model(model=model, name=name) -> dict:
            from advlab.evaluate import evaluate

            _log(f"evaluating {config.label(name)} on {len(test)} test images", progress)
            result = evaluate(model, test, attacks=attacks, eps=list(config.eps_grid), seed=config.seed,
                              progress=progress, keep_per_example=True)
            # The examples no attack broke at the training ε: the sanity checks attack these further.
            survivors = torch.ones(result.n, dtype=torch.bool)
            for attack in attacks:
                survivors &= result.per_example[f"{attack.label}@{config.train_eps:g}"]
            return {**result.to_dict(), "train_eps_survivors": survivors.nonzero().squeeze(1).tolist()}

        _stage(folder / "eval.json", evaluate_model, redo=overwrite,
               inputs={"model": digests[name], "attacks": config.attacks, "eps": config.eps_grid, "n": len(test),
                       "seed": config.seed})
    for name in models:
        surrogate = _surrogate(config, name)
        _stage(out / "models" / name / "checks.json",
               lambda name=name: _check_numbers(config, name, models, test, attacks, out, progress), redo=overwrite,
               inputs={"model": digests[name], "surrogate": digests[surrogate],
                       "eval": _digest(out / "models" / name / "eval.json")})
    metrics = collect_metrics(out)
    best = metrics["best_robust_model"]
    gallery_inputs = {"standard": digests["standard"], best: digests[best], "size": config.gallery_size,
                      "eps": config.train_eps, "targeted_eps": config.targeted_eps, "attacks": config.attacks,
                      "n": len(test), "seed": config.seed}
    if overwrite or _gallery_inputs(out) != json.loads(json.dumps(gallery_inputs)):
        _log("drawing the gallery", progress)
        _gallery(config, metrics, models, test, attacks, out, gallery_inputs)
    metrics = collect_metrics(out)
    write_json(out / "metrics.json", metrics)
    build_report(out)
    _log(f"done in {time.perf_counter() - start:.0f} s: {out / 'report.html'}", progress)
    return metrics


def _strongest_pgd(attacks: list[AttackSpec]) -> AttackSpec:
    return max((a for a in attacks if a.name == "pgd"), key=lambda a: a.steps * a.restarts)


def _surrogate(config: StudyConfig, name: str) -> str:
    """The source model of the transfer attack on ``name``: the standard model for the robust models, and
    for the standard model the first adversarially trained one."""
    return "standard" if name != "standard" else next(n for n in config.models if n != "standard")


def _gallery_inputs(out: Path) -> dict | None:
    from advlab.runs import load_tensors

    path = out / "gallery.safetensors"
    if not path.is_file():
        return None
    try:
        return json.loads(load_tensors(path)[1]["gallery"]).get("inputs")
    except (AdvlabError, KeyError, ValueError):
        return None


def _check_numbers(config: StudyConfig, name: str, models: dict, test, attacks: list[AttackSpec],
                   out: Path, progress: bool) -> dict:
    """The extra measurements behind the gradient-masking checks, at the training ε.

    Each extra attack also counts towards the model's worst case there (``worst_case_all``): doubled PGD
    attacks the examples the study's own attacks left robust, uniform noise and the transfer attack every
    example, and an example is robust only if it survives them all.
    """
    from advlab.evaluate import evaluate, transfer_flags

    _log(f"sanity-check measurements for {config.label(name)}", progress)
    eps = config.train_eps
    base = _strongest_pgd(attacks)
    # Twice the steps and restarts at the same step size α: more search, not a finer one.
    doubled = dataclasses.replace(base, steps=2 * base.steps, restarts=2 * base.restarts,
                                  step_ratio=base.alpha(eps) / eps if eps > 0 else base.step_ratio)
    noise = AttackSpec("noise", norm=base.norm)
    # The study's own figures (models/NAME/eval.json), the ones the report shows.
    saved = read_json(out / "models" / name / "eval.json")
    i = saved["eps"].index(eps)
    base_accuracy = saved["robust_accuracy"][base.label][i]
    n = saved["n"]
    survivors = torch.tensor(saved["train_eps_survivors"], dtype=torch.long)
    x_all, y_all = test.tensors()
    robust = torch.zeros(n, dtype=torch.bool)
    if len(survivors):
        result = evaluate(models[name], (x_all[survivors], y_all[survivors]), attacks=[doubled], eps=[eps],
                          seed=config.seed + 1, progress=progress, keep_per_example=True)
        robust[survivors] = result.per_example[f"{doubled.label}@{eps:g}"]
    after_doubled = robust.float().mean().item()
    result = evaluate(models[name], test, attacks=[noise], eps=[eps], seed=config.seed + 1, progress=progress,
                      keep_per_example=True)
    noise_flags = result.per_example[f"{noise.label}@{eps:g}"]
    surrogate = _surrogate(config, name)
    transfer = transfer_flags(models[name], models[surrogate], test, attack=base, eps=eps, seed=config.seed)
    robust &= noise_flags & transfer
    return {"eps": eps, "n": n,
            "pgd": {"label": base.label, "accuracy": base_accuracy},
            "worst_case": {"accuracy": saved["worst_case_accuracy"][i], "attacks": [a.label for a in attacks]},
            "pgd_doubled": {"label": doubled.label, "accuracy": after_doubled,
                            "hyperparameters": doubled.hyperparameters(eps)},
            "noise": {"label": noise.label, "accuracy": noise_flags.float().mean().item(),
                      "hyperparameters": noise.hyperparameters(eps)},
            "transfer": {"surrogate": surrogate, "label": base.label, "accuracy": transfer.float().mean().item(),
                         "hyperparameters": base.hyperparameters(eps)},
            "worst_case_all": {"accuracy": robust.float().mean().item(),
                               "attacks": [a.label for a in attacks] + [doubled.label, noise.label,
                                                                        f"transfer {base.label} from {surrogate}"]}}


def sanity_checks(metrics: dict, checks: dict[str, dict]) -> list[dict]:
    """Carlini et al. 2019 (arXiv:1902.06705) checks against gradient masking, each pass/fail with numbers."""
    from advlab.figures import points

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
        # Doubled PGD attacks what the study's attacks left robust: how far does the worst case still fall?
        doubled, before = numbers["pgd_doubled"], numbers["worst_case"]["accuracy"]
        n = numbers.get("n")
        # Compared in images, not in float32 fractions: a drop of exactly 1 point is not "less than a point".
        lost = (round(before * n) - round(doubled["accuracy"] * n)) / n if n else before - doubled["accuracy"]
        add("more steps and restarts change little", lost < 0.01 - 1e-9,
            f"adding {doubled['label']} takes the worst case from {pct(before)} to {pct(doubled['accuracy'])}: "
            f"{points(before, doubled['accuracy'])} points (< 1 needed)",
            {"worst case": before, f"+ {doubled['label']}": doubled["accuracy"]})
        # Every attack's curve and the worst case: a single-step attack whose accuracy rises with ε (its
        # step overshooting into a region where the loss is flat) is itself a sign of masked gradients.
        worst = model["worst_case_accuracy"]
        curves = {**model["robust_accuracy"], "worst case": worst}
        rises = [(what, j) for what, curve in curves.items() for j in range(len(curve) - 1)
                 if curve[j + 1] > curve[j] + 1e-9]
        detail = "no attack's accuracy and not the worst case rises along the ε grid"
        values = {f"worst case at ε = {e:g}": w for e, w in zip(grid, worst)}
        if rises:
            what, j = rises[0]
            detail = (f"{what} rises from {pct(curves[what][j])} at ε = {grid[j]:g} to {pct(curves[what][j + 1])} "
                      f"at ε = {grid[j + 1]:g}" + (f" (and {len(rises) - 1} more rises)" if len(rises) > 1 else ""))
            values.update({f"{what} at ε = {grid[k]:g}": curves[what][k] for k in (j, j + 1)})
        add("accuracy falls as ε grows", not rises, detail, values)
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


def _gallery(config: StudyConfig, metrics: dict, models: dict, test, attacks: list[AttackSpec], out: Path,
             inputs: dict) -> None:
    """Adversarial examples for the standard and the most robust model on the same images, plus targeted ones."""
    from advlab.evaluate import verify_adversarial

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
        verify_adversarial(x, x_adv, eps, attack.norm, what=f"gallery {attack.label}")
        with torch.inference_mode():
            tensors[f"{name}.x_adv"] = x_adv
            tensors[f"{name}.logits_clean"] = models[name](x)
            tensors[f"{name}.logits_adv"] = models[name](x_adv)
    targets = (y + len(test.info.classes) // 2) % len(test.info.classes)
    targeted = dataclasses.replace(attack, steps=max(attack.steps, 50), targeted=True)
    x_adv = targeted(standard, x, targets, eps=config.targeted_eps, generator=torch.Generator().manual_seed(config.seed))
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
    from advlab import __version__
    from advlab.data import get_info
    from advlab.figures import headline_worst_case
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
        if (folder / "checks.json").is_file():
            checks[name] = read_json(folder / "checks.json")
        models[name] = {
            "method": saved["train_configs"][name]["method"], "label": config.label(name),
            "train_config": saved["train_configs"][name], "train_seconds": done.get("seconds"),
            "epochs": _read_epochs(folder), "clean_accuracy": evaluation["clean_accuracy"],
            "robust_accuracy": evaluation["robust_accuracy"], "worst_case_accuracy": evaluation["worst_case_accuracy"],
            "eval_seconds": evaluation["seconds"], "n_eval": evaluation["n"],
        }
        if name in checks:  # the worst case at the training ε over every attack run there, checks included
            models[name]["worst_case_all_attacks"] = {"eps": checks[name]["eps"], **checks[name]["worst_case_all"]}
    adversarial = [n for n in models if n != "standard"]
    metrics: dict[str, Any] = {
        "advlab_version": __version__, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "preset": config.preset, "dataset": info.name, "classes": list(info.classes),
        "train_eps": config.train_eps, "eps_grid": list(config.eps_grid),
        "n_eval": next((m["n_eval"] for m in models.values()), config.n_eval),  # as evaluated (≤ the test set)
        "chance_accuracy": 1 / len(info.classes),
        "attacks": {a.label: a.to_dict() for a in attacks},
        "attack_hyperparameters": {a.label: [a.hyperparameters(e) for e in config.eps_grid] for a in attacks},
        "models": models,
        "best_robust_model": max(adversarial, key=lambda n: headline_worst_case(
            {"models": models, "eps_grid": list(config.eps_grid), "train_eps": config.train_eps}, n))
        if adversarial else None,
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
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
