"""Model checks and sanity checks that can fail: deliberately masked models must fail the right ones, and a
check a model leaves nothing to test says "not applicable", never "pass"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import parse_attack
from advlab.evaluate import evaluate
from advlab.masking import sanity_checks
from advlab.masking_attacks import measure_masking_checks
from advlab.model_warnings import model_warnings


class Quantized(nn.Module):
    """A quantizing first layer (4 grey levels) in front of a model: its gradient is zero almost everywhere."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 3) / 3)


class Scaled(nn.Module):
    """Logits times a huge constant: the softmax saturates and the cross-entropy's gradient underflows to 0."""

    def __init__(self, inner: nn.Module, scale: float = 1e5):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale


class Noisy(nn.Module):
    """Dropout that stays on in eval mode: a randomized model."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(nn.functional.dropout(x, 0.3, training=True))


def _names(flags):
    return {f["flag"] for f in flags}


def test_a_healthy_model_raises_no_flag(trained_model, fashion_test):
    x, y = fashion_test.tensors()
    assert model_warnings(trained_model, x, y, training=False) == []


@pytest.mark.parametrize(
    "wrap, flag",
    [
        (lambda m: Quantized(m), "zero-gradients"),
        (lambda m: Scaled(m), "zero-gradients"),
        (lambda m: nn.Sequential(m, nn.Softmax(dim=1)), "probabilities"),
        (lambda m: Noisy(m), "randomized"),
    ],
)
def test_model_checks_flag_what_masks_gradients(trained_model, fashion_test, wrap, flag):
    x, y = fashion_test.tensors()
    flags = model_warnings(wrap(trained_model).eval(), x, y, training=False)
    assert flag in _names(flags)
    found = next(f for f in flags if f["flag"] == flag)
    assert found["message"] and isinstance(found["numbers"], dict)


def test_train_mode_and_few_classes_are_flagged_and_the_mode_comes_back(fashion_test):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3), nn.BatchNorm1d(3))
    x, y = fashion_test.tensors()
    y = y % 3
    model.train()
    result = evaluate(model, (x[:64], y[:64]), attacks=[parse_attack("fgsm")], eps=[0.05], progress=False)
    assert {"train-mode", "few-classes"} <= _names(result.model_warnings)
    assert model.training  # evaluated in eval mode, handed back in train mode
    assert "model_flags" in result.to_dict()


def test_black_box_beating_white_box_is_flagged(trained_model, fashion_test):
    model = Quantized(trained_model).eval()
    data = fashion_test.subset(100)
    result = evaluate(
        model, data, attacks=[parse_attack("pgd20"), parse_attack("square500")], eps=[0.1], progress=False
    )
    flag = next(f for f in result.model_warnings if f["flag"] == "black-box-beats-white-box")
    assert flag["numbers"]["images"] > 10
    healthy = evaluate(
        trained_model, data, attacks=[parse_attack("pgd20"), parse_attack("square500")], eps=[0.1], progress=False
    )
    assert "black-box-beats-white-box" not in _names(healthy.model_warnings)


GRID = [0.0, 0.05, 0.1, 0.2, 0.3]


def _study_checks(model: nn.Module, surrogate: nn.Module, data, eps: float = 0.1) -> dict[str, dict]:
    """The sanity checks of one model as a study runs them, at ``eps`` on ``data``."""
    attacks = [parse_attack("fgsm"), parse_attack("pgd20")]
    result = evaluate(model, data, attacks=attacks, eps=GRID, progress=False, keep_per_example=True)
    i = GRID.index(eps)
    survivors = (result.per_example[f"PGD-20 L∞@{eps:g}"] & result.per_example[f"FGSM L∞@{eps:g}"]).nonzero().squeeze(1)
    numbers = measure_masking_checks(
        model,
        surrogate,
        data,
        base=attacks[1],
        eps=eps,
        survivors=survivors,
        dlr=parse_attack("apgd-dlr50"),
        square=parse_attack("square500"),
    )
    numbers.pop("robust_after_all")
    numbers["transfer"]["surrogate"] = "surrogate"
    numbers["eps"] = eps
    numbers["pgd"] = {"label": "PGD-20 L∞", "accuracy": result.robust["PGD-20 L∞"][i]}
    numbers["worst_case"] = {"accuracy": result.worst_case[i]}
    metrics = {
        "eps_grid": GRID,
        "chance_accuracy": 0.1,
        "models": {"m": {"robust_accuracy": result.robust, "worst_case_accuracy": result.worst_case}},
    }
    return {row["check"]: row for row in sanity_checks(metrics, {"m": numbers})}


@pytest.fixture(scope="module")
def check_data(fashion_test):
    return fashion_test.subset(100)


def test_a_quantizing_layer_fails_the_checks_it_should(trained_model, check_data):
    rows = _study_checks(Quantized(trained_model).eval(), trained_model, check_data)
    assert rows["the gradient-free attack finds little more"]["status"] == "fail"
    assert rows["reaches zero at large ε"]["status"] == "fail"


def test_saturated_logits_fail_the_other_loss_check(trained_model, check_data):
    rows = _study_checks(Scaled(trained_model).eval(), trained_model, check_data)
    assert rows["another loss (DLR) finds little more"]["status"] == "fail"


@pytest.fixture(scope="module")
def pgd_model():
    """A small CNN PGD-trained at ε = 0.1 (PGD-3, one epoch on 12,000 Fashion-MNIST images): robust, and with
    gradients that attacks can use (a few tens of seconds)."""
    from advlab.attacks.loop import LOSSES, perturb
    from advlab.data import load_dataset
    from advlab.models import create_model

    data = load_dataset("fashion-mnist", "train", download=False, progress=False).subset(12_000)
    torch.manual_seed(0)
    model = create_model("small_cnn", dataset="fashion-mnist")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for x, y in data.batches(128, shuffle=True, generator=g):
        model.eval()
        x_adv = perturb(model, x, y, eps=0.1, alpha=2.5 * 0.1 / 3, steps=3, objective=LOSSES["ce"], generator=g)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x_adv), y).backward()
        optimizer.step()
    return model.eval()


def test_a_healthy_robust_model_passes_every_check(pgd_model, trained_model, fashion_test):
    """No false alarm: a PGD-trained model, whose robustness is real, passes every check that applies."""
    rows = _study_checks(pgd_model, trained_model, fashion_test.subset(200))
    assert rows["iterative beats single-step"]["status"] == "pass"
    failed = {check: row["detail"] for check, row in rows.items() if row["status"] == "fail"}
    assert not failed, failed
    assert rows["more steps and restarts change little"]["status"] == "pass"  # robust images were left to test
    assert rows["another loss (DLR) finds little more"]["status"] == "pass"


def test_a_check_with_nothing_to_test_is_not_applicable(trained_model, check_data):
    """A standard model at ε = 0.2: PGD leaves no image, so the stronger attacks have nothing left to find:
    "not applicable", not "pass"."""
    rows = _study_checks(trained_model, trained_model, check_data, eps=0.2)
    assert rows["the gradient-free attack finds little more"]["status"] == "not applicable"
    assert rows["more steps and restarts change little"]["status"] == "not applicable"
    assert rows["more steps and restarts change little"]["passed"] is None
    assert rows["reaches zero at large ε"]["status"] == "pass"


def _metrics(fgsm, pgd, worst):
    return {
        "eps_grid": GRID,
        "chance_accuracy": 0.1,
        "models": {"m": {"robust_accuracy": {"FGSM L∞": fgsm, "PGD-20 L∞": pgd}, "worst_case_accuracy": worst}},
    }


def _numbers(pgd, worst, n=100):
    return {
        "eps": 0.1,
        "n": n,
        "pgd": {"label": "PGD-20 L∞", "accuracy": pgd},
        "worst_case": {"accuracy": worst},
        "pgd_doubled": {"label": "PGD-40×2 L∞", "accuracy": worst},
        "noise": {"label": "noise L∞", "accuracy": 0.8},
        "transfer": {"accuracy": 0.7, "surrogate": "s"},
    }


def test_a_tie_between_pgd_and_fgsm_fails():
    flat = [0.8, 0.5, 0.4, 0.4, 0.4]
    rows = {r["check"]: r for r in sanity_checks(_metrics(flat, flat, flat), {"m": _numbers(0.4, 0.4)})}
    assert rows["iterative beats single-step"]["status"] == "fail"


def test_a_flat_curve_does_not_fall():
    curve = [0.8, 0.7, 0.6, 0.6, 0.6]  # never rises, but keeps most of its value: no real fall
    rows = {
        r["check"]: r
        for r in sanity_checks(_metrics([0.8, 0.75, 0.7, 0.65, 0.6], curve, curve), {"m": _numbers(0.6, 0.6)})
    }
    assert rows["accuracy falls as ε grows"]["status"] == "fail"
    assert rows["reaches zero at large ε"]["status"] == "fail"  # 60% at the largest ε
    falling = [0.8, 0.5, 0.3, 0.05, 0.0]
    rows = {
        r["check"]: r
        for r in sanity_checks(_metrics([0.8, 0.6, 0.5, 0.2, 0.1], falling, falling), {"m": _numbers(0.3, 0.3)})
    }
    assert rows["accuracy falls as ε grows"]["status"] == "pass"
    assert rows["reaches zero at large ε"]["status"] == "pass"
    assert rows["iterative beats single-step"]["status"] == "pass"
