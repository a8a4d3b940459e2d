"""Fast adversarial training that does not collapse: the guard, N-FGSM, GradAlign, recipes (issue 12)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import advlab.train.loop as train_loop
from advlab.cli import main
from advlab.data import load_dataset
from advlab.runs import load_checkpoint
from advlab.runtime import Runtime
from advlab.train.guard import probe
from advlab.runs import read_json
from advlab.train import CatastrophicOverfittingWarning, TrainConfig, collapse_signature, find_recipe, train
from advlab.train.methods import NFGSM, GradAlign, PGDTraining, gradient_alignment
from conftest import have_fashion_mnist
from test_data import make_idx

needs_fashion = pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not found")
TINY = dict(train_size=1200, val_size=200, check_examples=100, check_steps=5, batch_size=50, epochs=3, steps=2,
            schedule="constant", lr=3e-3, eps=0.15, co_check_every=0)


# --------------------------------------------------------------------------- the guard


@needs_fashion
def test_provoked_collapse_is_caught_within_the_epoch(tmp_path):
    """FGSM from x with α = 2ε at ε = 0.3 collapses within the first epoch (measured: at step 60, FGSM
    accuracy 41% against PGD-10 10% on 256 validation images). The guard fires inside the epoch, the weights
    go back to the last check that passed, which become model.safetensors, and the record says so."""
    config = TrainConfig(method="fgsm", eps=0.3, alpha=0.6, random_start=False, eps_warmup_epochs=0, epochs=2,
                         train_size=10000,
                         val_size=500, check_examples=500, co_check_every=20, co_check_examples=256,
                         schedule="constant", lr=2e-3)
    with pytest.warns(CatastrophicOverfittingWarning, match=r"catastrophic overfitting at epoch 1, step \d+: on 256"):
        summary = train(config, tmp_path / "run", progress=False)
    assert summary["catastrophic_overfitting"] and summary["stopped_by_guard"] and summary["epochs_completed"] == 0
    (event,) = summary["collapses"]
    assert event["within_epoch"] and event["rule"] == "signature" and event["remedy"] == "stop"
    assert event["fgsm_acc"] - event["pgd_acc"] > config.co_gap and event["restored_epoch"] == 0
    assert read_json(tmp_path / "run" / "summary.json")["collapses"] == summary["collapses"]
    # The kept weights are those of the last check that passed: earlier in the epoch than the collapse.
    record = read_json(tmp_path / "run" / "model.json")
    assert record["partial_epoch"] and 0 < record["step"] < event["step"]
    assert summary["model_weights_from"] == f"epoch 1, step {record['step']}" == event["restored_to"]
    # ... and they pass the guard's test again, where the collapsed weights failed it.
    model, _ = load_checkpoint(tmp_path / "run" / "model.safetensors")
    probe_data = load_dataset("fashion-mnist", "val", val_size=500, download=False).subset(256)
    reading = probe(model, probe_data, eps=0.3, steps=10, seed=0, runtime=Runtime(device="cpu"))
    assert reading["fgsm"] - reading["pgd"] <= config.co_gap
    assert reading["pgd"] == pytest.approx(record["metrics"]["pgd"])


def test_signature_rule():
    assert collapse_signature(0.9, 0.05, 0.3) and not collapse_signature(0.785, 0.763, 0.3)
    assert not collapse_signature(0.5, 0.2, 0.3)  # exactly the gap is not more than it


def _collapse_at(monkeypatch, epochs: set[int]):
    """Make the signature fire at the end of the given epochs (counted in calls to the rule)."""
    calls = iter(range(1, 100))
    monkeypatch.setattr(train_loop, "collapse_signature", lambda fgsm, pgd, gap: next(calls) in epochs)


@needs_fashion
@pytest.mark.parametrize("remedy", ["smaller-step", "fallback"])
def test_remedies_go_on_from_the_last_good_weights(tmp_path, monkeypatch, remedy):
    _collapse_at(monkeypatch, {2})
    pgd_batches = []
    original = PGDTraining.loss
    monkeypatch.setattr(PGDTraining, "loss", lambda self, *a, **k: pgd_batches.append(self.name) or original(self, *a, **k))
    config = TrainConfig(method="fgsm", co_remedy=remedy, **TINY)
    with pytest.warns(CatastrophicOverfittingWarning, match="at the end of epoch 2"):
        summary = train(config, tmp_path / "run", progress=False)
    assert summary["epochs_completed"] == 3 and not summary["stopped_by_guard"] and summary["final_epoch"] == 3
    (event,) = summary["collapses"]
    assert event["remedy"] == remedy and event["restored_epoch"] == 1
    assert summary["alpha_scale"] == (0.5 if remedy == "smaller-step" else 1.0)
    assert summary["final_method"] == ("pgd" if remedy == "fallback" else "fgsm")
    # The fallback trains at its own step size (PGD's 2.5ε/steps), not FGSM's 1.25ε; smaller-step halves α.
    expected = 2.5 * 0.15 / 2 if remedy == "fallback" else 0.5 * 1.25 * 0.15
    assert event["alpha"] == pytest.approx(expected) and f"α = {expected:.4g}" in event["message"]
    # Epoch 2's weights were thrown away: epoch 3 started from epoch 1's, so the saved model is epoch 3's.
    assert read_json(tmp_path / "run" / "model.json")["epoch"] == 3
    batches = 1200 // 50
    assert pgd_batches.count("pgd") == (batches if remedy == "fallback" else 0)  # the third epoch is PGD's
    assert pgd_batches.count("fgsm") == (2 if remedy == "fallback" else 3) * batches


@needs_fashion
def test_the_signature_waits_for_the_end_of_the_eps_ramp(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "collapse_signature", lambda fgsm, pgd, gap: True)
    config = TrainConfig(method="nfgsm", eps_warmup_epochs=2.5, **TINY)
    with pytest.warns(CatastrophicOverfittingWarning):
        summary = train(config, tmp_path / "run", progress=False)
    assert [e["epoch"] for e in summary["collapses"]] == [3]  # epochs 1 and 2 trained below the full ε


@needs_fashion
def test_repeated_collapses_end_in_a_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "collapse_signature", lambda fgsm, pgd, gap: True)
    config = TrainConfig(method="fgsm", co_remedy="smaller-step", **{**TINY, "epochs": 6})
    with pytest.warns(CatastrophicOverfittingWarning):
        summary = train(config, tmp_path / "run", progress=False)
    assert [e["remedy"] for e in summary["collapses"]] == ["smaller-step"] * 3 + ["stop"]
    assert summary["stopped_by_guard"] and summary["epochs_completed"] == 4 and summary["alpha_scale"] == 0.125


@needs_fashion
def test_evaluate_says_a_collapsed_run_collapsed(tmp_path, monkeypatch, capsys):
    _collapse_at(monkeypatch, {2})
    with pytest.warns(CatastrophicOverfittingWarning):
        train(TrainConfig(method="fgsm", **TINY), tmp_path / "run", progress=False)
    assert main(["evaluate", str(tmp_path / "run"), "--attack", "fgsm", "--eps", "0.1", "--n", "50", "--quiet",
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert "warning: the guard caught catastrophic overfitting" in capsys.readouterr().out
    training = read_json(tmp_path / "eval.json")["training"]
    assert training["collapsed"] and "end of epoch 2" in training["message"]


# --------------------------------------------------------------------------- N-FGSM and GradAlign


def test_nfgsm_steps_from_noise_and_is_not_projected(tiny_cnn, batch):
    x, y = batch
    eps, alpha, k = 0.1, 0.1, 2.0
    method = NFGSM(TrainConfig(method="nfgsm", eps=eps, nfgsm_noise=k))
    x_adv = method.perturbation(tiny_cnn, x, y, eps=eps, alpha=alpha, generator=torch.Generator().manual_seed(3))
    # The same by hand: noise from the kε cube, clamp, one signed step from there, clamp.
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * (k * eps)
    start = (x + noise).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(tiny_cnn(start), y), start)
    assert torch.allclose(x_adv, (start.detach() + alpha * grad.sign()).clamp(0, 1))
    distance = (x_adv - x).abs().flatten(1).amax(1)
    assert (distance > eps + 1e-6).all() and (distance <= (k * eps + alpha) + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_grad_align_regularizer_is_one_minus_cosine_and_trains_through_the_gradient(tiny_cnn, batch):
    x, y = batch
    g = torch.Generator().manual_seed(0)
    cnn_start = x.clone().requires_grad_(True)
    (cnn_grad,) = torch.autograd.grad(F.cross_entropy(tiny_cnn(cnn_start), y), cnn_start)
    reg = gradient_alignment(tiny_cnn, x, y, cnn_grad, eps=0.3, generator=g)
    assert 0 < reg.item() <= 2
    (weight_grad,) = torch.autograd.grad(reg, next(tiny_cnn.parameters()))  # double backpropagation
    assert weight_grad.abs().sum() > 0
    same = gradient_alignment(tiny_cnn, x, y, cnn_grad, eps=0.0, generator=torch.Generator().manual_seed(0))
    assert same.item() == pytest.approx(0.0, abs=1e-5)  # at η = 0 both gradients are one


def test_grad_align_loss_is_fgsm_plus_lambda_times_the_regularizer(tiny_cnn, batch):
    x, y = batch
    eps = 0.1
    plain = GradAlign(TrainConfig(method="gradalign", eps=eps, grad_align_lambda=0.0))
    out = plain.loss(tiny_cnn, x, y, eps=eps, alpha=1.25 * eps, generator=torch.Generator().manual_seed(0))
    start = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(tiny_cnn(start), y), start)
    fgsm_point = (x + eps * grad.sign()).clamp(0, 1)  # α = 1.25ε clipped to the ball: a step of ε
    assert out.loss.item() == pytest.approx(F.cross_entropy(tiny_cnn(fgsm_point), y).item(), rel=1e-5)
    weighted = GradAlign(TrainConfig(method="gradalign", eps=eps, grad_align_lambda=2.0))
    out2 = weighted.loss(tiny_cnn, x, y, eps=eps, alpha=1.25 * eps, generator=torch.Generator().manual_seed(0))
    reg = gradient_alignment(tiny_cnn, x, y, grad, eps=eps, generator=torch.Generator().manual_seed(0))
    assert out2.loss.item() == pytest.approx(out.loss.item() + 2.0 * reg.item(), rel=1e-5)


# --------------------------------------------------------------------------- recipes


def test_recipes_fill_what_the_user_leaves_out():
    fashion = TrainConfig(method="fgsm")
    assert (fashion.recipe, fashion.model, fashion.lr, fashion.epochs, fashion.steps) == (
        "fashion-mnist", "small_cnn", 0.002, 10, 7)  # issue 3's measured defaults, unchanged
    wong = TrainConfig(dataset="mnist", method="fgsm", eps=0.3)
    assert (wong.recipe, wong.model, wong.optimizer, wong.lr, wong.batch_size, wong.epochs) == (
        "mnist-wong", "wong_mnist", "adam", 0.005, 100, 10)
    assert wong.step_size == pytest.approx(0.375)  # Wong et al.'s α at ε = 0.3
    madry = TrainConfig(dataset="mnist", method="pgd", eps=0.3)
    assert (madry.model, madry.steps, madry.batch_size, madry.lr) == ("madry_cnn", 40, 50, 1e-4)
    assert madry.alpha == pytest.approx(0.01)
    mine = TrainConfig(dataset="mnist", method="pgd", eps=0.3, steps=10)  # the user wins ...
    assert mine.steps == 10 and mine.step_size == pytest.approx(2.5 * 0.3 / 10)  # ... and Madry's ε/30 is for 40
    assert TrainConfig(dataset="cifar10", method="gradalign", eps=8 / 255).grad_align_lambda == pytest.approx(0.2)
    assert TrainConfig(dataset="cifar10", method="gradalign", eps=16 / 255).grad_align_lambda == pytest.approx(2.0)
    rice = TrainConfig(dataset="cifar10", method="pgd", eps=8 / 255)
    assert (rice.model, rice.schedule, rice.epochs, rice.steps) == ("preact_resnet18", "piecewise", 200, 10)
    assert find_recipe("cifar10", "nfgsm").name == "cifar10-nfgsm"
    # advlab's N-FGSM on Fashion-MNIST ramps a large ε, over at most half of a short run
    assert TrainConfig(method="nfgsm", eps=0.1).eps_warmup_epochs == 0.0
    assert TrainConfig(method="nfgsm", eps=0.3).eps_warmup_epochs == 3.0
    assert TrainConfig(method="nfgsm", eps=0.3, epochs=4).eps_warmup_epochs == 2.0
    assert TrainConfig(method="nfgsm", eps=0.3, eps_warmup_epochs=0).eps_warmup_epochs == 0.0


def test_a_resolved_config_round_trips():
    config = TrainConfig(dataset="mnist", method="nfgsm", eps=0.3)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("flags, message", [
    (["--co-remedy", "retry"], "unknown co remedy 'retry'"),
    (["--method", "gradalign", "--grad-align-lambda", "-0.5"], "grad_align_lambda"),
    (["--method", "nfgsm", "--nfgsm-noise", "0"], "nfgsm_noise"),
    (["--fallback-method", "magic"], "unknown fallback method"),
    (["--fallback-method", "standard"], "fallback_method must be an adversarial method"),
    (["--method", "free", "--co-remedy", "fallback"], "free adversarial training cannot"),
])
def test_bad_fast_training_settings_exit_2_with_one_line(tmp_path, capsys, flags, message):
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_mnist_trains_with_its_recipe_from_small_files(tmp_path, capsys):
    """The MNIST path end to end on idx files the test writes: the recipe picks Wong et al.'s network."""
    make_idx(tmp_path / "mnist", n_train=120, n_test=20)
    assert main(["train", "--dataset", "mnist", "--method", "nfgsm", "--eps", "0.3", "--epochs", "1",
                 "--val-size", "20", "--data-dir", str(tmp_path / "mnist"), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    assert "recipe: mnist-wong" in capsys.readouterr().out
    saved = read_json(tmp_path / "run" / "config.json")["config"]
    assert (saved["recipe"], saved["model"], saved["batch_size"], saved["lr"]) == ("mnist-wong", "wong_mnist", 100, 0.005)
    assert read_json(tmp_path / "run" / "summary.json")["recipe"] == "mnist-wong"
    assert read_json(tmp_path / "run" / "model.json")["model"] == "wong_mnist"


def test_list_recipes_names_every_source(capsys):
    assert main(["train", "--list-recipes"]) == 0
    text = capsys.readouterr().out
    for name in ("mnist-wong", "mnist-madry", "cifar10-rice", "cifar10-gradalign", "cifar10-nfgsm"):
        assert name in text
    assert "mnist_challenge" in text and "train_mnist.py" in text
