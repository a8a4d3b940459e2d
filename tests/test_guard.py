"""The catastrophic-overfitting guard: real collapses caught, runs on their way to robustness left alone,
and runs that end without robustness, or never learn, flagged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import have_fashion_mnist

import advlab.train.methods as methods
from advlab.cli import main
from advlab.data import load_dataset, locate_dataset
from advlab.files import read_json
from advlab.runs import load_checkpoint
from advlab.runtime import Runtime
from advlab.train import CatastrophicOverfittingWarning, Guard, TrainConfig, collapse_signature, train
from advlab.train.guard import end_of_run_warnings, falling_from, probe
from advlab.train.optim import SCHEDULES

needs_fashion = pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not found")
TRAJECTORIES = Path(__file__).with_name("guard_trajectories.json")

# FGSM from x with α = 2ε at ε = 0.3 on 5,000 Fashion-MNIST images: the single-step attack is defeated within
# the first epoch while PGD breaks the model (the signature from about step 60 on). A constant learning rate
# "falls" from half-way, so the guard may fire from epoch 2 on.
PROVOKED = dict(
    method="fgsm",
    eps=0.3,
    alpha=0.6,
    random_start=False,
    eps_warmup_epochs=0,
    epochs=2,
    train_size=5000,
    batch_size=64,
    val_size=300,
    check_examples=300,
    co_check_every=20,
    co_check_examples=200,
    schedule="constant",
    lr=2e-3,
)


def checks(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "guard.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------- the rules, on recorded real runs


def _replay(run: dict, **changes) -> list[tuple[int, int, str]]:
    config = TrainConfig(**{**run["settings"], **changes})
    guard = Guard(config, [], falling_step=run["falling_step"] if run["falling_step"] is not None else float("inf"))
    fired = []
    for check in run["checks"]:
        rule = guard.assess(
            {k: check[k] for k in ("clean", "fgsm", "pgd")},
            epoch=check["epoch"],
            step=check["step"],
            within=check["within_epoch"],
            examples=check["examples"],
        )
        if rule:
            fired.append((check["epoch"], check["step"], rule))
    return fired


def _ends_collapsed(run: dict) -> bool:
    """The run's own end, whatever any rule says: its last check shows the signature, or PGD below chance."""
    last = run["checks"][-1]
    return collapse_signature(last["fgsm"], last["pgd"], 0.3) or last["pgd"] < 0.1


RUNS = json.loads(TRAJECTORIES.read_text())["runs"]


@pytest.mark.parametrize("run", RUNS, ids=[r["name"] for r in RUNS])
def test_the_guard_fires_exactly_on_the_runs_that_collapse(run):
    """Recorded by benchmarks/bench_guard.py (the guard watching, never acting): MNIST at ε = 0.3 with Wong et
    al.'s start ends robust or collapses depending on the seed, with the clipped start it collapses, and
    Fashion-MNIST's fast FGSM holds at ε = 0.1 and 0.2 and collapses at 0.3. The guard fires on a run iff it
    ends collapsed, and before its last quarter."""
    fired = _replay(run)
    assert bool(fired) == _ends_collapsed(run), fired
    if fired:
        last_step = run["checks"][-1]["step"]
        assert fired[0][1] <= 0.8 * last_step


def test_a_single_bad_check_is_not_a_collapse():
    """What the rules guard against: the runs on their way to robustness show the signature, or a fall, at
    some single check (so a guard that fired at once would stop them), and no run is flagged by chance."""
    healthy = [r for r in RUNS if not _ends_collapsed(r)]
    assert healthy and any(_replay(r, co_patience=1) for r in healthy)


def test_the_learning_rate_falls_after_its_peak():
    assert falling_from(SCHEDULES["onecycle"]) == pytest.approx(0.4)
    assert falling_from(SCHEDULES["triangle"]) == pytest.approx(0.5)
    assert falling_from(SCHEDULES["piecewise"]) == pytest.approx(0.5)
    assert falling_from(SCHEDULES["constant"]) == 0.5  # never falls: half-way


def test_the_rules_on_their_own():
    config = TrainConfig(method="fgsm", co_patience=2)
    reading = lambda fgsm, pgd: {"clean": 0.9, "fgsm": fgsm, "pgd": pgd}  # noqa: E731
    guard = Guard(config, [], falling_step=100)
    # The signature before the learning rate falls: recorded, never fired on.
    assert [guard.assess(reading(0.8, 0.1), epoch=1, step=s, within=True, examples=256) for s in (20, 40, 60)] == [
        None
    ] * 3
    assert not guard.good
    # After it, two in a row fire; a good check in between starts the count again.
    assert guard.assess(reading(0.8, 0.1), epoch=1, step=100, within=False, examples=1000) is None
    assert guard.assess(reading(0.5, 0.45), epoch=2, step=120, within=True, examples=256) is None and guard.good
    assert guard.assess(reading(0.8, 0.1), epoch=2, step=140, within=True, examples=256) is None
    assert guard.assess(reading(0.8, 0.1), epoch=2, step=160, within=True, examples=256) == "signature"
    # A fall from the best end-of-epoch reading fires at any time, after two checks in a row.
    guard = Guard(config, [], falling_step=10**9)
    assert guard.assess(reading(0.6, 0.5), epoch=1, step=100, within=False, examples=1000) is None
    assert guard.assess(reading(0.45, 0.35), epoch=2, step=120, within=True, examples=256) is None
    assert guard.assess(reading(0.45, 0.35), epoch=2, step=140, within=True, examples=256) == "fall"
    assert guard.checks[-1]["best"] == 0.5


def test_the_end_of_a_run_is_judged():
    config = TrainConfig(method="fgsm", eps=0.3)
    assert (
        end_of_run_warnings(config, {"clean": 0.9, "fgsm": 0.7, "pgd": 0.6}, classes=10, robust=True, where="x") == []
    )
    (line,) = end_of_run_warnings(config, {"clean": 0.9, "fgsm": 0.9, "pgd": 0.05}, classes=10, robust=True, where="x")
    assert line.startswith("the run ends without robustness")
    # Near zero without the signature (FGSM low too): still no robustness.
    (line,) = end_of_run_warnings(config, {"clean": 0.9, "fgsm": 0.2, "pgd": 0.06}, classes=10, robust=True, where="x")
    assert line.startswith("the run ends without robustness") and "6.0%" in line
    (line,) = end_of_run_warnings(config, {"clean": 0.11, "fgsm": 0.1, "pgd": 0.1}, classes=10, robust=True, where="x")
    assert "at chance" in line
    # Standard training aims at no robustness: only "at chance" concerns it.
    assert (
        end_of_run_warnings(config, {"clean": 0.9, "fgsm": 0.1, "pgd": 0.0}, classes=10, robust=False, where="x") == []
    )


# ------------------------------------------------------------------------------- real training runs


@pytest.fixture(scope="module")
def provoked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("provoked") / "run"
    with pytest.warns(CatastrophicOverfittingWarning, match=r"catastrophic overfitting at epoch 2, step \d+"):
        summary = train(TrainConfig(**PROVOKED, co_remedy="stop"), folder, progress=False)
    return folder, summary


@needs_fashion
def test_a_provoked_collapse_is_caught_once_the_learning_rate_falls(provoked):
    folder, summary = provoked
    assert summary["catastrophic_overfitting"] and summary["stopped_by_guard"] and summary["epochs_completed"] == 1
    (event,) = summary["collapses"]
    assert event["within_epoch"] and event["rule"] == "signature" and event["remedy"] == "stop"
    history = checks(folder)
    # Nothing fired while the learning rate had not passed its "peak" (half-way through a constant schedule).
    assert any(not c["falling_lr"] for c in history) and all(c["fired"] is None for c in history[:-1])
    # It fired on the third signature in a row after the peak.
    assert [c["signature"] or c["fall"] for c in history[-3:]] == [True] * 3 and history[-1]["fired"] == "signature"
    assert all(c["falling_lr"] for c in history[-3:])
    # The kept weights are those of the last good check, before the collapse; model.safetensors holds them ...
    record = read_json(folder / "model.json")
    good = [c for c in history if not (c["signature"] or c["fall"]) and c["step"] < event["step"]]
    assert summary["model_weights_from"] == event["restored_to"]
    if record.get("partial_epoch"):
        assert record["step"] == good[-1]["step"]
    # ... and they pass the guard's test again, where the collapsed weights failed it.
    model, _ = load_checkpoint(folder / "model.safetensors")
    data = load_dataset("fashion-mnist", "val", val_size=300, download=False)
    reading = probe(
        model,
        data.subset(200 if record.get("partial_epoch") else 300),
        eps=0.3,
        steps=10,
        seed=0,
        runtime=Runtime(device="cpu"),
    )
    assert not collapse_signature(reading["fgsm"], reading["pgd"], 0.3)


@needs_fashion
def test_evaluate_says_a_collapsed_run_collapsed(provoked, tmp_path, capsys):
    folder, _ = provoked
    assert (
        main(
            [
                "evaluate",
                str(folder),
                "--attack",
                "fgsm",
                "--eps",
                "0.1",
                "--n",
                "50",
                "--quiet",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert "warning: the guard caught catastrophic overfitting" in capsys.readouterr().out
    training = read_json(tmp_path / "eval.json")["training"]
    assert training["collapsed"] and "at epoch 2, step" in training["message"]


@needs_fashion
@pytest.mark.parametrize("remedy", ["fallback", "smaller-step"])
def test_remedies_go_on_from_the_last_good_weights(tmp_path, monkeypatch, remedy):
    """fallback is the Fashion-MNIST recipe's own remedy at ε = 0.3 (left to the recipe here)."""
    batches = []
    original = methods.PGDTraining.loss
    monkeypatch.setattr(
        methods.PGDTraining, "loss", lambda self, *a, **k: batches.append(self.name) or original(self, *a, **k)
    )
    config = TrainConfig(**PROVOKED, **({} if remedy == "fallback" else {"co_remedy": remedy}))
    assert config.co_remedy == remedy
    with pytest.warns(CatastrophicOverfittingWarning, match="at epoch 2, step"):
        summary = train(config, tmp_path / "run", progress=False)
    assert summary["epochs_completed"] == 2 and not summary["stopped_by_guard"]
    event = summary["collapses"][0]
    assert event["remedy"] == remedy
    assert summary["final_method"] == ("pgd" if remedy == "fallback" else "fgsm")
    # The fallback trains PGD-10 at its own step size (2.5ε/10; the recipe's 10 steps at ε ≥ 0.25); smaller-step
    # halves α.
    expected = 2.5 * 0.3 / 10 if remedy == "fallback" else 0.5 * 0.6
    assert event["alpha"] == pytest.approx(expected) and f"α = {expected:.4g}" in event["message"]
    steps_before = event["step"]
    per_epoch = -(-5000 // 64)
    if remedy == "fallback":
        assert batches.count("pgd") == 2 * per_epoch - steps_before and "fgsm" in batches
    else:
        assert "pgd" not in batches


@needs_fashion
def test_no_check_while_eps_ramps_up(tmp_path):
    config = TrainConfig(**{**PROVOKED, "eps_warmup_epochs": 1.0, "co_remedy": "stop", "co_patience": 10**6})
    train(config, tmp_path / "run", progress=False)
    per_epoch = -(-5000 // 64)
    history = checks(tmp_path / "run")
    assert history and min(c["step"] for c in history) >= per_epoch  # ε reached its full value at step 79


@needs_fashion
def test_a_run_that_ends_without_robustness_is_flagged(tmp_path, capsys):
    """The guard watching only (a patience no run reaches): the run collapses and is flagged at its end."""
    config = TrainConfig(**{**PROVOKED, "co_patience": 10**6})
    summary = train(config, tmp_path / "run", progress=False)
    assert not summary["catastrophic_overfitting"] and summary["ends_without_robustness"]
    assert any(w.startswith("the run ends without robustness") for w in summary["warnings"])
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--attack",
                "fgsm",
                "--eps",
                "0.3",
                "--n",
                "50",
                "--quiet",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert "warning: this model's training says: the run ends without robustness" in capsys.readouterr().out
    assert read_json(tmp_path / "eval.json")["training"]["ends_without_robustness"]


@needs_fashion
def test_a_model_at_chance_after_its_first_epoch_says_so(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--method",
                "fgsm",
                "--eps",
                "0.1",
                "--lr",
                "1e-9",
                "--train-size",
                "500",
                "--epochs",
                "1",
                "--val-size",
                "200",
                "--check-examples",
                "100",
                "--quiet",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "still at chance on clean validation images" in out.err + out.out
    summary = read_json(tmp_path / "run" / "summary.json")
    assert any("at chance" in w for w in summary["warnings"])


@needs_fashion
def test_standard_training_has_no_guard(tmp_path):
    summary = train(
        TrainConfig(method="standard", train_size=500, epochs=1, val_size=100, check_examples=50),
        tmp_path / "run",
        progress=False,
    )
    assert not (tmp_path / "run" / "guard.jsonl").exists() and not summary["catastrophic_overfitting"]


# -------------------------------------------------------------- MNIST as the papers know it (slow)


def _have_mnist() -> bool:
    return locate_dataset("mnist")[0] is not None


@pytest.mark.slow
@pytest.mark.skipif(not _have_mnist(), reason="MNIST not found (benchmarks/mnist_setup.py, then ADVLAB_DATA)")
@pytest.mark.parametrize("clip_start", [False, True])
def test_mnist_collapses_with_the_clipped_start_and_the_guard_catches_it(tmp_path, clip_start):
    """Wong et al.'s MNIST recipe at ε = 0.3, seed 0: with their unclipped start it ends robust and the guard
    never fires; with the start clipped to the image it collapses and the guard fires once the learning rate
    falls. About two minutes each on two cores."""
    config = TrainConfig(dataset="mnist", method="fgsm", eps=0.3, clip_start=clip_start, co_remedy="stop")
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["catastrophic_overfitting"] == clip_start
    if not clip_start:
        assert summary["val_robust_accuracy"] > 0.8 and not summary["ends_without_robustness"]
    else:
        assert summary["collapses"][0]["rule"] == "signature"


def test_bad_guard_settings_exit_2_with_one_line(tmp_path, capsys):
    from test_cli import _fails_cleanly

    _fails_cleanly(capsys, ["train", "--co-patience", "0", "--out", str(tmp_path / "run")], match="--co-patience")
    _fails_cleanly(capsys, ["train", "--clip-start", "maybe", "--out", str(tmp_path / "run")], match="--clip-start")
    assert not (tmp_path / "run").exists() and os.path.exists(tmp_path)
