"""Fast adversarial training that does not collapse: the guard, N-FGSM, GradAlign, recipes (issue 12)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import have_fashion_mnist
from test_data import make_idx

from advlab.cli import main
from advlab.files import read_json
from advlab.train import TrainConfig, find_recipe
from advlab.train.methods import NFGSM, FastFGSM, GradAlign, gradient_alignment

needs_fashion = pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not found")
TINY = dict(
    train_size=1200,
    val_size=200,
    check_examples=100,
    check_steps=5,
    batch_size=50,
    epochs=3,
    steps=2,
    schedule="constant",
    lr=3e-3,
    eps=0.15,
    co_check_every=0,
)


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
        "fashion-mnist",
        "small_cnn",
        0.002,
        10,
        7,
    )  # issue 3's measured defaults, unchanged
    wong = TrainConfig(dataset="mnist", method="fgsm", eps=0.3)
    assert (wong.recipe, wong.model, wong.optimizer, wong.lr, wong.batch_size, wong.epochs) == (
        "mnist-wong",
        "wong_mnist",
        "adam",
        0.005,
        100,
        10,
    )
    assert wong.step_size == pytest.approx(0.375)  # Wong et al.'s α at ε = 0.3
    madry = TrainConfig(dataset="mnist", method="pgd", eps=0.3)
    assert (madry.model, madry.steps, madry.batch_size, madry.lr) == ("madry_cnn", 40, 50, 1e-4)
    assert madry.alpha == pytest.approx(0.01)
    mine = TrainConfig(dataset="mnist", method="pgd", eps=0.3, steps=10)  # the user wins ...
    assert mine.steps == 10 and mine.step_size == pytest.approx(2.5 * 0.3 / 10)  # ... and Madry's ε/30 is for 40
    assert TrainConfig(dataset="cifar10", method="gradalign", eps=8 / 255).option("grad_align_lambda") == pytest.approx(
        0.2
    )
    assert TrainConfig(dataset="cifar10", method="gradalign", eps=16 / 255).option(
        "grad_align_lambda"
    ) == pytest.approx(2.0)
    rice = TrainConfig(dataset="cifar10", method="pgd", eps=8 / 255)
    assert (rice.model, rice.schedule, rice.epochs, rice.steps) == ("preact_resnet18", "piecewise", 200, 10)
    assert find_recipe("cifar10", "nfgsm").name == "cifar10-nfgsm"
    # advlab's N-FGSM on Fashion-MNIST ramps a large ε, over at most half of a short run
    assert TrainConfig(method="nfgsm", eps=0.1).eps_warmup_epochs == 0.0
    assert TrainConfig(method="nfgsm", eps=0.3).eps_warmup_epochs == 3.0
    assert TrainConfig(method="nfgsm", eps=0.3, epochs=4).eps_warmup_epochs == 2.0
    assert TrainConfig(method="nfgsm", eps=0.3, eps_warmup_epochs=0).eps_warmup_epochs == 0.0


def test_every_method_has_a_recipe_on_every_data_set():
    """No method falls through to settings made for another data set: each pair names its recipe."""
    from advlab.data import DATASETS
    from advlab.train import METHODS

    for dataset in DATASETS:
        for method in METHODS:
            assert find_recipe(dataset, method, METHODS[method].family).name != "base", (dataset, method)


def test_each_fast_method_starts_as_its_papers_code():
    assert TrainConfig(dataset="mnist", method="fgsm", eps=0.3).clip_start is False  # Wong et al.'s MNIST code
    assert TrainConfig(dataset="cifar10", method="fgsm", eps=8 / 255).clip_start is True  # their CIFAR-10 code
    assert TrainConfig(dataset="cifar10", method="nfgsm", eps=8 / 255).clip_start is True  # de Jorge et al.'s code
    assert TrainConfig(dataset="mnist", method="pgd", eps=0.3).clip_start is True  # Madry et al.'s
    assert TrainConfig(dataset="mnist", method="fgsm", eps=0.3, clip_start=True).clip_start is True  # the user wins


def test_an_unclipped_start_takes_its_gradient_outside_the_image(tiny_cnn, batch):
    """Wong et al.'s MNIST FGSM: δ ~ U(−ε, ε) not clipped before the gradient (model(X + δ)), then one step of
    α clipped to the ε-ball and the image. The same by hand; and the clipped start differs."""
    x, y = batch
    x = x.clone()
    x[:, :, :4] = 0.0  # MNIST's background: the clip matters where pixels are 0
    eps, alpha = 0.3, 0.375
    method = FastFGSM(TrainConfig(method="fgsm", eps=eps, clip_start=False))
    out = method.loss(tiny_cnn, x, y, eps=eps, alpha=alpha, generator=torch.Generator().manual_seed(5))
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1) * eps
    start = (x + delta).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(tiny_cnn(start), y, reduction="none").sum(), start)
    expected = torch.minimum(torch.maximum(start.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(out.adv_logits, tiny_cnn(expected), atol=1e-5)
    clipped = FastFGSM(TrainConfig(method="fgsm", eps=eps, clip_start=True))
    other = clipped.loss(tiny_cnn, x, y, eps=eps, alpha=alpha, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(other.adv_logits, out.adv_logits)


def test_a_resolved_config_round_trips():
    config = TrainConfig(dataset="mnist", method="nfgsm", eps=0.3)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--co-remedy", "retry"], "unknown co remedy 'retry'"),
        (["--method", "gradalign", "--grad-align-lambda", "-0.5"], "grad_align_lambda"),
        (["--method", "nfgsm", "--nfgsm-noise", "0"], "nfgsm_noise"),
        (["--fallback-method", "magic"], "unknown fallback method"),
        (["--fallback-method", "standard"], "fallback_method must be an adversarial method"),
        (["--method", "free", "--co-remedy", "fallback"], "free adversarial training cannot"),
    ],
)
def test_bad_fast_training_settings_exit_2_with_one_line(tmp_path, capsys, flags, message):
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_mnist_trains_with_its_recipe_from_small_files(tmp_path, capsys):
    """The MNIST path end to end on idx files the test writes: the recipe picks Wong et al.'s network."""
    make_idx(tmp_path / "mnist", n_train=120, n_test=20)
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--method",
                "fgsm",
                "--eps",
                "0.3",
                "--epochs",
                "1",
                "--val-size",
                "20",
                "--data-dir",
                str(tmp_path / "mnist"),
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "recipe: mnist-wong" in capsys.readouterr().out
    saved = read_json(tmp_path / "run" / "config.json")["config"]
    assert (saved["recipe"], saved["model"], saved["batch_size"], saved["lr"]) == (
        "mnist-wong",
        "wong_mnist",
        100,
        0.005,
    )
    assert (
        saved["clip_start"] is False and saved["co_remedy"] == "fallback"
    )  # Wong et al.'s start; PGD-10 if it collapses
    assert read_json(tmp_path / "run" / "summary.json")["recipe"] == "mnist-wong"
    assert read_json(tmp_path / "run" / "model.json")["model"] == "wong_mnist"


def test_list_recipes_names_every_source(capsys):
    assert main(["train", "--list-recipes"]) == 0
    text = capsys.readouterr().out
    for name in (
        "mnist-wong",
        "mnist-nfgsm",
        "mnist-madry",
        "mnist-ibp",
        "cifar10-rice",
        "cifar10-gradalign",
        "cifar10-nfgsm",
        "cifar10-cohen",
        "cifar10-ibp",
    ):
        assert name in text
    assert "mnist_challenge" in text and "train_mnist.py" in text


def test_list_recipes_says_what_has_not_been_run(capsys):
    """Each recipe says what of it ran to the end here; the CIFAR-10 ones, never run, say "not run"."""
    from advlab.train.recipes import RAN, RECIPES

    assert set(RAN) <= {recipe.name for recipe in RECIPES}
    assert main(["train", "--list-recipes"]) == 0
    blocks = capsys.readouterr().out.split("\n")
    for recipe in RECIPES:
        start = next(i for i, line in enumerate(blocks) if line.startswith(f"{recipe.name}:"))
        verdict = blocks[start + 2]
        if recipe.dataset == "cifar10":
            assert verdict.strip().startswith("not run"), verdict
        else:
            assert verdict.strip().startswith("run here:"), verdict
    mnist_ibp = next(i for i, line in enumerate(blocks) if line.startswith("mnist-ibp:"))
    assert "ibp and crown-ibp at ε = 0.1 and 0.3" in blocks[mnist_ibp + 2]  # run end to end: BENCHMARKS.md
