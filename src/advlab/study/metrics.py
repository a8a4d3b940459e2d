"""``metrics.json`` of a study, assembled from its saved stage files alone (no live objects): what the
report draws from."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advlab import __version__
from advlab.data import get_info
from advlab.files import read_json
from advlab.masking import sanity_checks
from advlab.masking_attacks import strongest_pgd
from advlab.results import best_robust_model
from advlab.schema import ArmsRace, Certified, CheckMeasurements, Evaluation, RunSummary, read_checked
from advlab.study.certified import check_certified_below_empirical
from advlab.study.config import StudyConfig
from advlab.tensor_files import load_tensors


def collect_metrics(out: str | Path) -> dict:
    """Assemble ``metrics.json`` from the saved stage files alone (no live objects)."""
    out = Path(out)
    saved = read_json(out / "config.json")
    config = StudyConfig.from_dict(saved["study"])
    info, attacks = get_info(config.dataset), config.attack_specs()
    models: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    for name in config.models:
        folder = out / "models" / name
        if (folder / "eval.json").is_file():
            models[name] = _model_figures(config, name, folder, saved["train_configs"][name], checks)
    grid = list(config.eps_grid)
    metrics: dict[str, Any] = {
        "advlab_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "preset": config.preset,
        "dataset": info.name,
        "classes": list(info.classes),
        "train_eps": config.train_eps,
        "eps_grid": grid,
        "n_eval": next((m["n_eval"] for m in models.values()), config.n_eval),  # as evaluated (≤ the test set)
        "chance_accuracy": 1 / len(info.classes),
        "attacks": {a.label: a.to_dict() for a in attacks},
        "attack_hyperparameters": {a.label: [a.hyperparameters(e) for e in config.eps_grid] for a in attacks},
        "models": models,
        "best_robust_model": best_robust_model({"models": models, "eps_grid": grid, "train_eps": config.train_eps}),
        "headline_attack": strongest_pgd(attacks).label,  # the story's attack: the strongest PGD
        # The sanity checks' extra attacks at the training ε (and the gallery's targeted one, below).
        "check_attacks": {label: h for c in checks.values() for label, h in _check_attacks(c).items()},
        "sanity_checks": sanity_checks(
            {"eps_grid": grid, "chance_accuracy": 1 / len(info.classes), "models": {n: models[n] for n in checks}},
            checks,
        )
        if checks
        else [],
    }
    _add_stages(out, config, metrics)
    return metrics


def _model_figures(config: StudyConfig, name: str, folder: Path, train_config: dict, checks: dict) -> dict:
    """One model's figures from its folder's stage files; its sanity-check measurements go into ``checks``."""
    evaluation = read_checked(folder / "eval.json", Evaluation)
    done = read_checked(folder / "done.json", RunSummary) if (folder / "done.json").is_file() else {}
    if (folder / "checks.json").is_file():
        checks[name] = read_checked(folder / "checks.json", CheckMeasurements)
    model = {
        "method": train_config["method"],
        "label": config.label(name),
        "train_config": train_config,
        "train_seconds": done.get("seconds"),
        "epochs": _read_epochs(folder),
        "clean_accuracy": evaluation["clean_accuracy"],
        "robust_accuracy": evaluation["robust_accuracy"],
        "worst_case_accuracy": evaluation["worst_case_accuracy"],
        "eval_seconds": evaluation["seconds"],
        "n_eval": evaluation["n"],
        # The catastrophic-overfitting guard's last word on this model's training (None: it never fired).
        "collapse": done.get("catastrophic_overfitting_message"),
        # advlab.model_warnings: what may make this model's numbers overstate (empty: nothing found)
        "model_flags": evaluation.get("model_flags", []),
    }
    if name in checks:  # the worst case at the training ε over every attack run there, checks included
        model["worst_case_all_attacks"] = {"eps": checks[name]["eps"], **checks[name]["worst_case_all"]}
    if config.certify and (folder / "certified.json").is_file():
        certified = read_checked(folder / "certified.json", Certified)
        verified_images = certified.pop("verified_images", None)
        model["certified"] = certified
        i = list(config.eps_grid).index(config.train_eps)
        empirical = (model.get("worst_case_all_attacks") or {}).get("accuracy", evaluation["worst_case_accuracy"][i])
        check_certified_below_empirical(
            name,
            certified.get("verified_accuracy"),
            empirical,
            verified_images=verified_images,
            robust_images=(checks.get(name) or {}).get("robust_images"),
        )
    return model


def _add_stages(out: Path, config: StudyConfig, metrics: dict) -> None:
    """The study-wide stages' files: the arms race, the gallery's record, the explorer's numbers."""
    if config.defenses and (out / "arms_race.json").is_file():
        metrics["arms_race"] = read_checked(out / "arms_race.json", ArmsRace)
    if (out / "gallery.safetensors").is_file():
        _, meta = load_tensors(out / "gallery.safetensors")
        gallery = metrics["gallery"] = json.loads(meta["gallery"])
        if "targeted_hyperparameters" in gallery:
            metrics["check_attacks"][f"{gallery['targeted_attack']} (gallery)"] = gallery["targeted_hyperparameters"]
    if (out / "explorer.json").is_file():  # the report's explorer: its images are in explorer.safetensors
        metrics["explorer"] = {k: v for k, v in read_json(out / "explorer.json").items() if k != "inputs"}


def _check_attacks(checks: dict) -> dict[str, dict]:
    found = {}
    for label, hyperparameters in (checks.get("suite") or {}).get("hyperparameters", {}).items():
        found[f"{label} (suite, on what the study's attacks left)"] = hyperparameters
    for key, what in (
        ("pgd_doubled", "{} (sanity check)"),
        ("dlr", "{} (sanity check)"),
        ("square", "{} (sanity check)"),
        ("noise", "{} (sanity check)"),
        ("transfer", "{} transfer (sanity check)"),
    ):
        if "hyperparameters" in checks.get(key, {}):
            found[what.format(checks[key]["label"])] = checks[key]["hyperparameters"]
        if "reference_hyperparameters" in checks.get(key, {}):  # the like it is compared with
            found[what.format(checks[key]["reference"])] = checks[key]["reference_hyperparameters"]
    return found


def _read_epochs(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


__all__ = ["collect_metrics"]
