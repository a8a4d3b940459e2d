"""Certified robustness (issue 16): interval bounds are sound on random networks of every supported layer,
exact where they must be, and refuse what they cannot bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advlab.certify import UnsupportedLayer, interval_bounds, margin_bounds, mixed_margin_bounds, verified
from advlab.errors import AdvlabError
from advlab.models import Normalize, create_model


def _random_net(seed: int, pooling: bool) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    width = int(torch.randint(2, 5, (1,), generator=g))
    batchnorm = nn.BatchNorm2d(width)
    layers = [Normalize([0.4], [0.3]), nn.Conv2d(1, width, 3, padding=1), batchnorm, nn.ReLU()]
    layers += [nn.MaxPool2d(2), nn.ReLU()] if pooling else [nn.Conv2d(width, width, 2, stride=2), nn.ReLU()]
    layers += [nn.AvgPool2d(2)] if pooling else []
    side = 2 if pooling else 4
    layers += [nn.Flatten(), nn.Linear(width * side * side, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 4)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        batchnorm.running_mean.copy_(torch.randn(width, generator=g))
        batchnorm.running_var.copy_(torch.rand(width, generator=g) + 0.5)
    return net.eval()


def _samples(x: torch.Tensor, eps: float, k: int, g: torch.Generator) -> torch.Tensor:
    """k points of the ball ∩ [0, 1] around each image: half uniform inside, half at its corners."""
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    shape = (k, *x.shape[1:])
    inside = torch.rand((k // 2, *x.shape[1:]), generator=g)
    corners = torch.randint(0, 2, (k - k // 2, *x.shape[1:]), generator=g).float()
    t = torch.cat([inside, corners])
    assert t.shape == shape
    return lower + t * (upper - lower)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3), pooling=st.booleans())
def test_bounds_hold_at_thousands_of_points_of_the_ball(seed, eps, pooling):
    net = _random_net(seed, pooling)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(3, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (3,), generator=g)
    lower, upper = interval_bounds(net, x, eps)
    margins = {"ibp": margin_bounds(net, x, y, eps)}
    if not pooling:
        # CROWN's own bound, not the maximum with IBP that margin_bounds returns: each must be sound alone.
        margins["crown"] = mixed_margin_bounds(net, x, y, eps, crown_weight=1.0).detach()
        margins["crown-ibp"] = margin_bounds(net, x, y, eps, method="crown-ibp")
    for i in range(3):
        points = _samples(x[i : i + 1], eps, 2000, g)
        with torch.no_grad():
            logits = net(points)
        tol = 1e-4 * (1 + logits.abs().max())
        assert (logits >= lower[i] - tol).all() and (logits <= upper[i] + tol).all()
        true_margins = logits[:, y[i] : y[i] + 1] - logits
        for name, bound in margins.items():
            assert (true_margins >= bound[i] - tol).all(), name


def test_a_linear_classifier_gets_exact_margins():
    torch.manual_seed(0)
    model = create_model("linear", in_channels=1, num_classes=5, height=6, width=6).eval()
    x, y, eps = torch.rand(8, 1, 6, 6), torch.randint(0, 5, (8,)), 0.2
    bound = margin_bounds(model, x, y, eps)
    w = model[1].linear.weight
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for i in range(8):
        for j in range(5):
            if j == y[i]:
                continue
            # The minimizing corner: each pixel at the end that lowers w_y − w_j.
            corner = torch.where((w[y[i]] - w[j]).view(1, 6, 6) > 0, lower[i], upper[i])
            with torch.no_grad():
                z = model(corner[None])[0]
            assert float(z[y[i]] - z[j]) == pytest.approx(float(bound[i, j].detach()), abs=1e-5)


def test_provably_stable_relus_give_exact_bounds_with_crown_ibp():
    torch.manual_seed(1)
    first, second = nn.Linear(12, 6), nn.Linear(6, 3)
    with torch.no_grad():
        first.weight.mul_(0.1)
        first.bias.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0, 5.0, 5.0]))  # active or inactive on the whole box
    net = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).eval()
    x, y, eps = torch.rand(4, 1, 3, 4), torch.tensor([0, 1, 2, 0]), 0.1
    bound = margin_bounds(net, x, y, eps, method="crown-ibp")
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for i in range(4):
        for j in range(3):
            if j == y[i]:
                continue
            probe = x[i : i + 1].clone().requires_grad_(True)
            z = net(probe)
            (grad,) = torch.autograd.grad(z[0, y[i]] - z[0, j], probe)  # the margin is affine on the box
            corner = torch.where(grad > 0, lower[i : i + 1], upper[i : i + 1])
            with torch.no_grad():
                z = net(corner)[0]
            assert float(z[y[i]] - z[j]) == pytest.approx(float(bound[i, j].detach()), abs=1e-5)
    ibp = margin_bounds(net, x, y, eps)
    assert (ibp < bound - 1e-3).any()  # IBP alone is strictly looser here: CROWN's pass gave the exact values


def test_at_eps_zero_verified_is_correct_and_it_never_exceeds_it():
    torch.manual_seed(2)
    model = create_model("small_cnn", in_channels=1, num_classes=10).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert torch.equal(verified(model, x, y, 0.0), correct)
    assert not (verified(model, x, y, 0.05) & ~correct).any()


def test_layers_that_cannot_be_bounded_are_named():
    resnet = create_model("preact_resnet18", in_channels=3, num_classes=10).eval()
    with pytest.raises(UnsupportedLayer, match=r"model\.1 \(PreActResNet18\)"):
        margin_bounds(resnet, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 0.1)
    cnn = create_model("small_cnn", in_channels=1, num_classes=10)  # train mode is fine without BatchNorm
    with pytest.raises(UnsupportedLayer, match="pooling"):
        margin_bounds(cnn.eval(), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), 0.1, method="crown-ibp")
    bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(UnsupportedLayer, match=r"model\.2 \(BatchNorm1d\) is in train mode"):
        interval_bounds(bn, torch.rand(2, 1, 2, 2), 0.1)


# ----------------------------------------------------------------------------------------- randomized smoothing


def test_the_clopper_pearson_bound_is_the_binomial_tail_at_alpha():
    from scipy.stats import binom

    from advlab.certify.smoothing import lower_confidence_bound

    for k, n, alpha in [(990, 1000, 0.001), (9_000, 10_000, 0.001), (51, 100, 0.05), (100_000, 100_000, 1e-3)]:
        p = lower_confidence_bound(k, n, alpha)
        assert abs(binom.sf(k - 1, n, p) - alpha) < 1e-9  # P(X ≥ k | p̲) = α: the one-sided exact bound
    assert lower_confidence_bound(0, 100, 0.001) == 0.0


def _binary_linear(w: torch.Tensor, b: float) -> nn.Sequential:
    """Logits (0, w·x + b): class 1 on one side of the hyperplane, class 0 on the other."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[1] = w
        layer.bias.copy_(torch.tensor([0.0, b]))
    return nn.Sequential(nn.Flatten(), layer).eval()


def test_smoothing_certifies_at_most_the_distance_to_the_boundary_and_close_to_it():
    from advlab.certify.smoothing import certify

    torch.manual_seed(3)
    w = torch.randn(16)
    model = _binary_linear(w, 0.0)
    x0 = torch.rand(16)
    x0 = x0 - (w @ x0) / (w @ w) * w  # on the boundary
    for distance in (0.2, 0.5):
        x = (x0 + distance * w / w.norm()).view(1, 4, 4)  # class 1, this far from the boundary
        label, radius = certify(
            model, x, 0.5, 100, 100_000, 0.001, classes=2, batch_size=20_000, generator=torch.Generator().manual_seed(0)
        )
        # The smoothed classifier's true radius is the distance itself: σ·Φ⁻¹(Φ(d/σ)) = d.
        assert label == 1 and 0.9 * distance <= radius <= distance


def test_smoothing_abstains_on_a_tie():
    from advlab.certify.smoothing import ABSTAIN, certify, predict

    w = torch.ones(4)
    model = _binary_linear(w, -2.0)
    x = torch.full((1, 2, 2), 0.5)  # w·x + b = 0: each class wins half the noise draws
    assert certify(model, x, 0.25, 100, 10_000, 0.001, classes=2, generator=torch.Generator().manual_seed(0)) == (
        ABSTAIN,
        0.0,
    )
    assert predict(model, x, 0.25, 10_000, 0.001, classes=2, generator=torch.Generator().manual_seed(0)) == ABSTAIN


@pytest.mark.parametrize(
    "sigma, n, n0, alpha, match",
    [
        (0.0, 1000, 100, 0.001, "--sigma must be above 0"),
        (0.25, 50, 100, 0.001, r"--n \(50\) must be at least --n0 \(100\)"),
        (0.25, 5, 1, 0.001, "no radius can be certified"),
        (0.25, 1000, 100, 0.5, r"--alpha must be in \(0, 0.5\)"),
    ],
)
def test_bad_smoothing_settings_are_one_line(sigma, n, n0, alpha, match):
    from advlab.certify.smoothing import check_settings

    with pytest.raises(AdvlabError, match=match):
        check_settings(sigma, n, n0, alpha)


# ------------------------------------------------------------------------------------------- training and CLI


# ------------------------------------------------------------------------------------------- training and CLI

IBP_TRAIN = [
    "train",
    "--method",
    "ibp",
    "--eps",
    "0.1",
    "--epochs",
    "3",
    "--clean-epochs",
    "0.25",
    "--eps-warmup-epochs",
    "1",
    "--train-size",
    "6000",
    "--val-size",
    "300",
    "--check-examples",
    "200",
    "--threads",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def ibp_run(tmp_path_factory):
    from conftest import _require_fashion_mnist

    from advlab.cli import main

    _require_fashion_mnist()
    out = tmp_path_factory.mktemp("ibp") / "run"
    assert main([*IBP_TRAIN, "--out", str(out)]) == 0
    return out


def test_ibp_training_logs_and_earns_verified_accuracy(ibp_run, trained_checkpoint, capsys, tmp_path):
    import json

    from advlab.cli import main

    rows = [json.loads(line) for line in (ibp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_verified_acc" in r for r in rows)
    assert rows[0]["eps"] == pytest.approx(0.075, abs=0.01)  # a quarter clean epoch, then the ramp
    assert "val_verified_acc" in (ibp_run / "metrics.csv").read_text().splitlines()[0]
    capsys.readouterr()
    assert (
        main(
            [
                "certify",
                str(ibp_run),
                "--eps",
                "0.1",
                "--images",
                "300",
                "--cross-check",
                "--quiet",
                "--out",
                str(tmp_path / "ibp.json"),
            ]
        )
        == 0
    )
    ibp = json.loads((tmp_path / "ibp.json").read_text())
    # Every verified image was attacked, and none broken; the indices stay out of the JSON.
    assert ibp["cross_check"]["verified"] == round(ibp["verified_accuracy"] * 300) > 0
    assert ibp["cross_check"]["broken"] == 0 and "verified_images" not in ibp
    assert (
        main(
            [
                "certify",
                str(trained_checkpoint),
                "--method",
                "crown-ibp",
                "--eps",
                "0.1",
                "--images",
                "300",
                "--quiet",
                "--out",
                str(tmp_path / "standard.json"),
            ]
        )
        == 2
    )  # small_cnn pools: crown-ibp refuses
    assert (
        main(
            [
                "certify",
                str(trained_checkpoint),
                "--eps",
                "0.1",
                "--images",
                "300",
                "--quiet",
                "--out",
                str(tmp_path / "standard.json"),
            ]
        )
        == 0
    )
    standard = json.loads((tmp_path / "standard.json").read_text())
    # Certified training earns what standard training never has: proofs at ε = 0.1.
    assert ibp["verified_accuracy"] >= 0.08 and standard["verified_accuracy"] <= 0.02
    assert ibp["verified_accuracy"] <= ibp["clean_accuracy"]
    # Certified below empirical: PGD on the same images leaves at least as many standing.
    assert (
        main(
            [
                "evaluate",
                str(ibp_run),
                "--attack",
                "pgd20",
                "--eps",
                "0.1",
                "--n",
                "300",
                "--quiet",
                "--out",
                str(tmp_path / "pgd.json"),
            ]
        )
        == 0
    )
    pgd = json.loads((tmp_path / "pgd.json").read_text())
    assert ibp["verified_accuracy"] <= pgd["worst_case_accuracy"][0]
    out = capsys.readouterr().out
    assert "ibp at eps = 0.1 on 300 images" in out
    assert f"broke none of the {ibp['cross_check']['verified']} verified images" in out


def test_an_unsound_bound_fails_the_cross_check(trained_model, fashion_test, trained_checkpoint, capsys, monkeypatch):
    """A bound that claimed every correct image of a standard model at ε = 0.1 would be unsound: PGD breaks
    most of them, and the cross-check says so (exit status 1, one line), in the job and in the study."""
    import advlab.certify.ibp as ibp_module
    from advlab.cli import main
    from advlab.errors import Contradiction
    from advlab.evaluate import cross_check_verified
    from advlab.study.certified import check_certified_below_empirical

    x, y = fashion_test.subset(40).tensors()
    correct = (trained_model(x).argmax(1) == y).nonzero().squeeze(1).tolist()
    with pytest.raises(Contradiction, match=r"cross-check failed: PGD-50×5 L∞ broke \d+ of the"):
        cross_check_verified(trained_model, x, y, correct, eps=0.1, what="a fake bound")
    assert cross_check_verified(trained_model, x, y, correct, eps=0.0, what="ibp")["broken"] == 0

    def unsound(model, data, eps, *, method="ibp", batch_size=500, device=None):
        xs, ys = data
        return (model(xs).argmax(1) == ys).cpu()  # "verified": every correct image

    monkeypatch.setattr(ibp_module, "verified_flags", unsound)
    capsys.readouterr()
    argv = ["certify", str(trained_checkpoint), "--eps", "0.1", "--images", "40", "--cross-check", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cross-check failed" in err[0]
    with pytest.raises(Contradiction, match="2 images its bound verified were broken"):
        check_certified_below_empirical("m", 0.2, 0.5, verified_images=[1, 2, 3], robust_images=[1, 4, 5])
    check_certified_below_empirical("m", 0.2, 0.5, verified_images=[1, 4], robust_images=[1, 4, 5])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--method", "dp"], "unknown certify method 'dp'"),
        (["--method", "ibp"], "needs --eps"),
        (["--eps", "1.5"], "--eps must be"),
        (["--method", "smoothing", "--sigma", "0"], "--sigma must be above 0"),
        (["--method", "smoothing", "--sigma", "0.25", "--n", "50"], "must be at least --n0"),
        (["--method", "smoothing", "--sigma", "0.25", "--alpha", "0.7"], "--alpha must be in (0, 0.5)"),
        (["--method", "smoothing"], "was not trained with --method gaussian"),
        (["--method", "smoothing", "--sigma", "0.25", "--cross-check"], "--cross-check attacks the examples"),
    ],
)
def test_bad_certify_input_is_one_line(trained_checkpoint, capsys, argv, match):
    from test_cli import _fails_cleanly

    _fails_cleanly(capsys, ["certify", str(trained_checkpoint), "--quiet", *argv], match=match)


def test_ibp_training_refuses_a_network_it_cannot_bound(capsys, tmp_path):
    from test_cli import _fails_cleanly

    _fails_cleanly(
        capsys,
        [
            "train",
            "--method",
            "ibp",
            "--dataset",
            "cifar10",
            "--model",
            "preact_resnet18",
            "--out",
            str(tmp_path / "r"),
        ],
        match="--method ibp cannot train preact_resnet18",
    )
    assert not (tmp_path / "r").exists()


def test_gaussian_training_and_smoothing_certify_from_the_cli(tmp_path, capsys):
    import json

    from conftest import _require_fashion_mnist

    from advlab.cli import main

    _require_fashion_mnist()
    out = tmp_path / "gauss"
    assert (
        main(
            [
                "train",
                "--method",
                "gaussian",
                "--sigma",
                "0.25",
                "--epochs",
                "1",
                "--train-size",
                "3000",
                "--val-size",
                "100",
                "--check-examples",
                "50",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "certify",
                str(out),
                "--method",
                "smoothing",
                "--n",
                "500",
                "--n0",
                "50",
                "--alpha",
                "0.01",
                "--images",
                "20",
                "--quiet",
                "--out",
                str(tmp_path / "smooth.json"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "smooth.json").read_text())
    assert result["sigma"] == 0.25 and result["images"] == 20 and len(result["radii"]) == 20
    accuracies = list(result["certified_accuracy"].values())
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] >= 0.5
    assert 0 < result["average_certified_radius"] < 0.25 * 3  # σ·Φ⁻¹(p̲) with p̲ < 1 at n = 500
    assert "certified accuracy" in capsys.readouterr().out
