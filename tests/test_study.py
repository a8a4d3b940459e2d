"""The trade-off study end to end on a tiny budget: caching, determinism, refusal of a changed config."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_MODELS, tiny_config

from advlab.cli import main
from advlab.errors import AdvlabError
from advlab.study import collect_metrics, load_study_config, run_study


def _accuracies(metrics: dict) -> dict:
    return {
        name: (
            m["clean_accuracy"],
            m["robust_accuracy"],
            m["worst_case_accuracy"],
            [e.get("val_robust_acc") for e in m["epochs"]],
        )
        for name, m in metrics["models"].items()
    }


def test_study_writes_everything(tiny_study):
    out, metrics = tiny_study
    for name in ("metrics.json", "config.json", "report.html", "gallery.safetensors"):
        assert (out / name).is_file(), name
    assert set(metrics["models"]) == set(TINY_MODELS)
    assert metrics["eps_grid"] == [0.0, 0.1, 0.5]
    saved = json.loads((out / "metrics.json").read_text())
    assert _accuracies(saved) == _accuracies(metrics)
    # eight checks per model, each with a status and the numbers behind it
    assert len(metrics["sanity_checks"]) == 8 * len(TINY_MODELS)
    assert all(c["status"] in ("pass", "fail", "not applicable") and c["numbers"] for c in metrics["sanity_checks"])
    assert all(c["passed"] is {"pass": True, "fail": False}.get(c["status"]) for c in metrics["sanity_checks"])
    for model in metrics["models"].values():
        assert model["robust_accuracy"]["PGD-5 L∞"][0] == pytest.approx(model["clean_accuracy"])  # ε = 0
        assert model["worst_case_accuracy"][-1] <= model["clean_accuracy"]
        # The checks' extra attacks (doubled PGD, noise, transfer) only ever lower the worst case at ε = 0.1.
        assert model["worst_case_all_attacks"]["accuracy"] <= model["worst_case_accuracy"][1]
    # Every extra attack is stated with its hyperparameters; doubled PGD keeps the step size of PGD-5.
    extra = metrics["check_attacks"]
    assert {
        "PGD-10×2 L∞ (sanity check)",
        "APGD-DLR-20 L∞ (sanity check)",
        "APGD-CE-20 L∞ (sanity check)",
        "Square-300 L∞ (sanity check)",
        "noise L∞ (sanity check)",
        "PGD-5 L∞ transfer (sanity check)",
        "PGD-50 L∞ targeted (gallery)",
        "APGD-CE-50 L∞ (suite, on what the study's attacks left)",
        "APGD-T-50 L∞ top-3 (suite, on what the study's attacks left)",
    } == set(extra)
    assert extra["PGD-10×2 L∞ (sanity check)"]["alpha"] == pytest.approx(
        metrics["attack_hyperparameters"]["PGD-5 L∞"][1]["alpha"]
    )
    assert metrics["n_eval"] == 60


def test_the_arms_race_shows_naive_robustness_collapse_under_the_adaptive_attack(tiny_study):
    out, metrics = tiny_study
    race = metrics["arms_race"]
    assert race["n"] == 40 and race["eps"] == 0.1 and (out / "arms_race.json").is_file()
    best = metrics["best_robust_model"]
    rows = {(r["model"], (r["defense"] or {}).get("defense")): r for r in race["rows"]}
    assert set(rows) == {(m, d) for m in ("standard", best) for d in (None, "bits", "resize-pad")}
    bits, alone = rows[("standard", "bits")], rows[("standard", None)]
    # Rounding hides the gradient: the naive attack finds almost nothing, the checks say so, BPDA breaks it.
    assert "zero-gradients" in bits["flags"] and bits["naive_unreliable"]
    assert bits["naive"] >= bits["adaptive"] + 0.3 and bits["adaptive"] <= alone["undefended"] + 0.1
    assert bits["adaptive_attack"] == "PGD-10 L∞ BPDA" and not bits["resists"]
    assert bits["pixels_within_eps_of_threshold"] == 1.0  # 4-bit steps of 1/15: every pixel is ≤ 1/30 from one
    random = rows[("standard", "resize-pad")]
    assert random["adaptive_attack"] == "PGD-10 L∞ EOT-4" and random["verdict_draws"] == 20
    assert "randomized" in random["flags"]
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "7. The arms race" in text and "unreliable:" in text and "bits bits=4" in text
    assert "robust to a naive attack, but an adaptive one (PGD-10 L∞ BPDA) brings it to" in text


def test_the_certified_stage_proves_less_than_attacks_measure(tiny_study, tmp_path):
    import shutil

    from advlab.errors import Contradiction

    out, metrics = tiny_study
    for name, model in metrics["models"].items():
        certified = model["certified"]
        assert (out / "models" / name / "certified.json").is_file() and certified["n"] == 60
        assert 0 <= certified["verified_accuracy"] <= model["worst_case_all_attacks"]["accuracy"]
        # Example by example: what the bound proved, every attack left robust.
        proved = json.loads((out / "models" / name / "certified.json").read_text())["verified_images"]
        robust = json.loads((out / "models" / name / "checks.json").read_text())["robust_images"]
        assert len(proved) == round(60 * certified["verified_accuracy"]) and set(proved) <= set(robust)
        assert "verified_images" not in certified  # the indices stay in the stage's file
    # A bound that claimed an image the attacks broke: the study refuses its numbers (exit status 1).
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    broken = sorted(
        set(range(60)) - set(json.loads((copy / "models/standard/checks.json").read_text())["robust_images"])
    )
    path = copy / "models" / "standard" / "certified.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "verified_images": broken[:1]}))
    with pytest.raises(Contradiction, match="1 images its bound verified were broken"):
        collect_metrics(copy)
    smoothing = metrics["models"]["gauss"]["certified"]["smoothing"]
    assert smoothing["sigma"] == 0.25 and smoothing["images"] == 12 and smoothing["n"] == 300
    curve = list(smoothing["certified_accuracy"].values())
    assert curve == sorted(curve, reverse=True) and curve[0] > 0.3
    assert all("smoothing" not in m["certified"] for n, m in metrics["models"].items() if n != "gauss")
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "Certified robustness" in text and "verified (IBP) at ε = 0.1" in text
    assert (out / "figures" / "smoothing.png").is_file()


def test_a_verified_accuracy_above_the_empirical_one_is_an_error():
    from advlab.study.certified import check_certified_below_empirical

    check_certified_below_empirical("pgd", 0.30, 0.31)
    check_certified_below_empirical("pgd", None, 0.31)
    with pytest.raises(AdvlabError, match="above its empirical robust accuracy"):
        check_certified_below_empirical("pgd", 0.32, 0.31)


def test_same_seed_same_metrics_and_cached_resume(tiny_study, tmp_path):
    out, metrics = tiny_study
    again = run_study(tiny_config(), tmp_path / "again", progress=False)
    assert _accuracies(again) == _accuracies(metrics)
    # Re-running in the same folder reuses every cached stage: nothing is retrained.
    stamp = (out / "models" / "fgsm" / "model.safetensors").stat().st_mtime_ns
    resumed = run_study(tiny_config(), out, progress=False)
    assert (out / "models" / "fgsm" / "model.safetensors").stat().st_mtime_ns == stamp
    assert _accuracies(resumed) == _accuracies(metrics)


def test_interrupted_study_picks_up(tiny_study, tmp_path):
    out, metrics = tiny_study
    (out / "models" / "trades" / "eval.json").unlink()  # as if stopped before that stage
    assert _accuracies(run_study(tiny_config(), out, progress=False)) == _accuracies(metrics)


def test_a_stage_computed_from_other_inputs_is_redone(tiny_study):
    out, metrics = tiny_study
    path = out / "models" / "fgsm" / "eval.json"
    stale = json.loads(path.read_text())
    stale["inputs"]["model"] = "a model since retrained"
    stale["robust_accuracy"]["PGD-5 L∞"][1] = 0.99  # a figure the current model never earned
    path.write_text(json.dumps(stale))
    checks = (out / "models" / "fgsm" / "checks.json").stat().st_mtime_ns
    again = run_study(tiny_config(), out, progress=False)
    assert _accuracies(again) == _accuracies(metrics)  # recomputed, not read back
    assert (out / "models" / "fgsm" / "checks.json").stat().st_mtime_ns != checks  # it read that eval.json


def test_interrupted_overwrite_leaves_no_model_marked_done(tiny_study, monkeypatch):
    import advlab.study.run

    out, _ = tiny_study
    real_train, calls = advlab.study.run.train, []

    def train_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped while retraining the second model
        return real_train(*args, **kwargs)

    monkeypatch.setattr(advlab.study.run, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_study(tiny_config(), out, overwrite=True, progress=False)
    assert (out / "models" / "standard" / "done.json").is_file()
    assert not (out / "models" / "fgsm" / "done.json").exists()
    assert not (out / "models" / "trades" / "done.json").exists()
    monkeypatch.undo()
    run_study(tiny_config(), out, progress=False)  # and a plain resume finishes the job
    assert (out / "models" / "trades" / "done.json").is_file()


def test_changed_config_is_refused(tiny_study):
    out, _ = tiny_study
    with pytest.raises(AdvlabError, match="other settings"):
        run_study(tiny_config(n_eval=61), out, progress=False)


def test_report_command_rebuilds_from_files(tiny_study, capsys):
    out, metrics = tiny_study
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert _accuracies(collect_metrics(out)) == _accuracies(metrics)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(eps_grid=(0.2, 0.1)), "increasing"),
        (dict(eps_grid=(0.0, 0.2)), "train_eps"),
        (dict(eps_grid=(0.0, 0.1)), "beyond train_eps"),
        (dict(attacks=("fgsm", "pgd20-l2")), "one norm"),
        (dict(attacks=("pgd20",)), "fgsm"),
        (dict(attacks=("fgsm", "pgd20-targeted")), "untargeted"),
        (dict(models={"fgsm": {"method": "fgsm"}}), "standard"),
        (dict(train_eps=-0.1), "train_eps"),
        (dict(defenses=("jpeg:quality=0",)), "quality"),
        (dict(defenses=("blur",)), "unknown defense"),
        (dict(arms_race_attack="pgd20-bpda"), "without -bpda or -eot"),
        (dict(arms_race_attack="square100"), "gradient attack"),
        (dict(arms_race_eot=0), "arms_race_eot"),
        (dict(smoothing_n=10, smoothing_n0=20), r"smoothing_n \(10\) must be at least smoothing_n0 \(20\)"),
        (dict(smoothing_alpha=0.5), "smoothing_alpha must be in"),
    ],
)
def test_bad_study_configs(changes, match):
    with pytest.raises(AdvlabError, match=match):
        tiny_config(**changes)


def test_presets_load_and_resolve():
    for preset in ("quick", "full"):
        config = load_study_config(preset=preset)
        assert config.preset == preset
        for name in config.models:
            config.train_config(name)  # every model's training settings are valid
        methods = {config.train_config(n).method for n in config.models}
        assert {"standard", "fgsm", "pgd", "trades"} <= methods
    with pytest.raises(AdvlabError, match="unknown study preset 'huge'; choose one of: cifar10, full, quick"):
        load_study_config(preset="huge")


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\n")
    with pytest.raises(AdvlabError, match="not a valid TOML"):
        load_study_config(bad)
    odd = tmp_path / "odd.toml"
    odd.write_text("[study]\nfoo = 1\n")
    with pytest.raises(AdvlabError, match="unknown study settings"):
        load_study_config(odd)
    assert load_study_config() == load_study_config(preset="quick")  # no file: the quick preset


def test_full_preset_trains_the_full_recipe():
    # The full preset's PGD model is issue 3's full recipe, setting for setting (training is deterministic
    # on CPU), so its weights are the full recipe's and a finished runs/train-full can seed the study.
    from advlab.train import load_config

    study = load_study_config(preset="full").train_config("pgd").to_dict()
    recipe = load_config(preset="full").to_dict()
    assert study == recipe


def _check_inputs(fgsm=(0.9, 0.5, 0.05), pgd=(0.9, 0.4, 0.0), before=0.4, doubled=0.395, noise=0.8, transfer=0.7):
    from advlab.masking import sanity_checks

    worst = [min(a, b) for a, b in zip(fgsm, pgd)]
    metrics = {
        "eps_grid": [0.0, 0.1, 0.3],
        "chance_accuracy": 0.1,
        "models": {
            "m": {"robust_accuracy": {"FGSM L∞": list(fgsm), "PGD-20 L∞": list(pgd)}, "worst_case_accuracy": worst}
        },
    }
    checks = {
        "m": {
            "eps": 0.1,
            "n": 500,
            "pgd": {"label": "PGD-20 L∞", "accuracy": pgd[1]},
            "worst_case": {"accuracy": before},
            "pgd_doubled": {"label": "PGD-40×2 L∞", "accuracy": doubled},
            "noise": {"label": "noise L∞", "accuracy": noise},
            "transfer": {"surrogate": "standard", "label": "PGD-20 L∞", "accuracy": transfer},
        }
    }
    return {row["check"]: row for row in sanity_checks(metrics, checks)}


def test_sanity_check_verdicts():
    rows = _check_inputs()
    assert all(row["passed"] for row in rows.values()) and len(rows) == 6
    # Doubled PGD is judged against PGD itself: exactly three points (30 of 1,000 images) is not "less than
    # three points", whatever the float rounding; just under three is.
    assert not _check_inputs(pgd=(0.9, 0.57, 0.0), doubled=0.54)["more steps and restarts change little"]["passed"]
    assert _check_inputs(pgd=(0.9, 0.46, 0.0), doubled=0.431)["more steps and restarts change little"]["passed"]
    # The worst case over every attack is not the baseline: far below it, doubled PGD still changes little.
    assert _check_inputs(pgd=(0.9, 0.46, 0.0), before=0.2, doubled=0.45)["more steps and restarts change little"][
        "passed"
    ]
    # The same edge with float32 means, as the study's evaluation records them: 318 → 303 of 500 images.
    import torch

    def mean(k: int, n: int) -> float:
        return (torch.arange(n) < k).float().mean().item()

    edge = _check_inputs(pgd=(0.9, mean(318, 500), 0.0), before=mean(318, 500), doubled=mean(303, 500))
    assert mean(318, 500) - mean(303, 500) < 0.03 and not edge["more steps and restarts change little"]["passed"]
    # FGSM rising with ε fails the check even where the worst case (PGD's curve) keeps falling.
    row = _check_inputs(fgsm=(0.9, 0.5, 0.6), pgd=(0.9, 0.4, 0.0))["accuracy falls as ε grows"]
    assert not row["passed"] and row["detail"].startswith("FGSM L∞ rises from 50.0% at ε = 0.1 to 60.0%")
    assert row["numbers"]["FGSM L∞ at ε = 0.3"] == 0.6
    assert not _check_inputs(pgd=(0.9, 0.4, 0.2), fgsm=(0.9, 0.5, 0.3))["reaches zero at large ε"]["passed"]
    assert not _check_inputs(noise=0.3)["random noise hurts less than PGD"]["passed"]
    assert not _check_inputs(transfer=0.35)["transfer attack weaker than white-box"]["passed"]
    assert not _check_inputs(fgsm=(0.9, 0.35, 0.0))["iterative beats single-step"]["passed"]


def test_the_most_robust_model_is_chosen_by_the_worst_case_over_every_attack():
    """Not by clean accuracy, not by one attack's figure, and never the standard model."""
    from advlab.results import best_robust_model

    def model(clean, pgd, worst, everything=None):
        entry = {
            "clean_accuracy": clean,
            "robust_accuracy": {"PGD-20 L∞": [clean, pgd]},
            "worst_case_accuracy": [clean, worst],
        }
        return {**entry, "worst_case_all_attacks": {"accuracy": everything}} if everything is not None else entry

    metrics = {
        "eps_grid": [0.0, 0.1],
        "train_eps": 0.1,
        "models": {
            "standard": model(0.92, 0.9, 0.9, 0.9),  # an impossible standard model that "wins": still not chosen
            "a": model(0.90, 0.70, 0.60, 0.50),  # best PGD-20 and clean, but the checks' attacks break it
            "b": model(0.85, 0.65, 0.62, 0.58),  # the best worst case over every attack
            "c": model(0.80, 0.66, 0.55),
        },
    }  # no check attacks recorded: its study worst case counts
    assert best_robust_model(metrics) == "b"
    metrics["models"]["c"]["worst_case_accuracy"][1] = 0.61  # now above b's 0.58 over every attack
    assert best_robust_model(metrics) == "c"
    metrics["best_robust_model"] = "a"  # what metrics.json says wins
    assert best_robust_model(metrics) == "a"


def test_report_fixture_has_the_shape_of_a_real_study(tiny_study, tmp_path):
    """tests/report_fixture.py fabricates metrics for the report tests; it must keep the shape that
    collect_metrics really writes, or those tests test a report nobody gets."""
    from report_fixture import make_fake_run

    _, real = tiny_study
    fake = make_fake_run(tmp_path)

    real_model = next(iter(real["models"].values()))
    fake_model = fake["models"]["pgd"]  # one with every optional record (others leave some out on purpose)
    assert set(fake) == set(real), set(fake) ^ set(real)
    assert set(fake_model) == set(real_model), set(fake_model) ^ set(real_model)
    for key in ("clean_accuracy", "robust_accuracy", "worst_case_accuracy", "worst_case_all_attacks", "epochs"):
        assert type(fake_model[key]) is type(real_model[key]), key
    assert set(fake_model["worst_case_all_attacks"]) == set(real_model["worst_case_all_attacks"])
    assert set(fake["sanity_checks"][0]) == set(real["sanity_checks"][0])
    assert set(fake["gallery"]) == set(real["gallery"]), set(fake["gallery"]) ^ set(real["gallery"])
    assert set(fake["attacks"][next(iter(fake["attacks"]))]) == set(real["attacks"][next(iter(real["attacks"]))])
    assert set(fake_model["epochs"][0]) == set(real_model["epochs"][0])
    assert set(fake["arms_race"]) == set(real["arms_race"])
    for fake_row, real_row in ((fake["arms_race"]["rows"][i], real["arms_race"]["rows"][i]) for i in (0, 1)):
        assert set(fake_row) - {"pixels_within_eps_of_threshold"} == set(real_row) - {"pixels_within_eps_of_threshold"}
