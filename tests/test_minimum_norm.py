"""The minimum-norm attacks (FAB, FAB-T, FMN, C&W, DeepFool): exact on linear models, honest results, their use
at one ε, their strength against PGD on a trained CNN, and their names and parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import (
    ATTACKS,
    AttackSpec,
    MinimalPerturbation,
    curve,
    parse_attack,
    pgd,
    robust_at,
    verify_adversarial,
    within_eps,
)
from advlab.attacks.fab import to_hyperplane
from advlab.errors import AdvlabError

MINIMAL = sorted(name for name, kind in ATTACKS.items() if kind.minimum_norm)


def _block_model(classes: int = 4, side: int = 4, seed: int = 0):
    """A linear model whose classes own disjoint, equally large blocks of ±1 weights (scaled so the minimal
    perturbations stay well inside [0, 1]): every pair of classes is equally far apart, so the nearest boundary
    is the most likely wrong class's, and the exact minimal norms are known."""
    generator = torch.Generator().manual_seed(seed)
    block = side * side
    weight = torch.zeros(classes, classes * block, dtype=torch.float64)
    for c in range(classes):
        weight[c, c * block : (c + 1) * block] = torch.randint(0, 2, (block,), generator=generator) * 2.0 - 1
    return _linear(weight * 0.25, (1, classes * side, side), generator)


def _dense_model(classes: int = 5, seed: int = 1):
    """A linear model with Gaussian weights: the nearest boundary is often not the most likely wrong class's."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, 36, generator=generator, dtype=torch.float64) * 0.5
    return _linear(weight, (1, 6, 6), generator)


def _linear(weight: torch.Tensor, shape: tuple, generator: torch.Generator):
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0])).double()
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.zero_()
    x = 0.4 + 0.2 * torch.rand(12, *shape, generator=generator, dtype=torch.float64)  # the box never binds
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _exact(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """min_j (f_y − f_j) / ‖w_y − w_j‖_dual: the smallest perturbation that flips a linear model unboxed."""
    weight = model[1].weight.detach()
    with torch.no_grad():
        logits = model(x)
    gaps = logits.gather(1, y[:, None]) - logits  # (N, K)
    diffs = weight[y][:, None, :] - weight[None, :, :]  # (N, K, D)
    dual = diffs.abs().sum(-1) if norm == "linf" else diffs.norm(dim=-1)
    return (gaps / dual).masked_fill(nn.functional.one_hot(y, weight.shape[0]).bool(), float("inf")).amin(dim=1)


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _check_exact(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, slack: float = 0.01) -> None:
    result = spec.minimal(model, x, y, generator=torch.Generator().manual_seed(0))
    exact = _exact(model, x, y, spec.norm)
    with torch.no_grad():
        assert (model(result.x_adv).argmax(dim=1) != y).all(), spec.label
    assert torch.allclose(result.norms.double(), _size(result.x_adv - x, spec.norm), rtol=1e-5), spec.label
    ratio = result.norms.double() / exact
    assert ratio.min() >= 1 - 1e-5, (spec.label, ratio)  # no point beats the exact minimum beyond rounding
    assert ratio.max() <= 1 + slack, (spec.label, ratio)


# DeepFool overshoots by design (2 % by default): the exactness check takes a small overshoot. C&W's default
# learning rate (0.05, to move saturated pixels within 100 steps) oscillates about 2 % around the boundary:
# the check takes the authors' 0.01.
EXACT_NAMES = ["fab", "fab-t", "fmn", "fmn-t", "cw:lr=0.01", "deepfool:overshoot=0.001"]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", EXACT_NAMES)
def test_exact_minimum_on_a_linear_model(name, norm):
    if name.startswith("cw") and norm == "linf":
        pytest.skip("C&W is L2 only")
    base, _, params = name.partition(":")
    spec = parse_attack(f"{base}-{norm}" + (f":{params}" if params else ""))
    _check_exact(spec, *_block_model())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["fab", "fab-t", "deepfool:overshoot=0.001"])
def test_attacks_that_linearize_find_the_nearest_of_many_boundaries(name, norm):
    """FAB and DeepFool pick the boundary nearest by the linearization, exact on a linear model; FAB-T tries
    every wrong class in turn (5 classes: all 4)."""
    base, _, params = name.partition(":")
    _check_exact(parse_attack(f"{base}-{norm}" + (f":{params}" if params else "")), *_dense_model())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_t_finds_the_nearest_boundary_among_its_targets(norm):
    """FMN-T on all 4 wrong classes is exact where the nearest boundary is often not the most likely wrong
    class's; aimed only at the most likely one, it must miss some (so the targets are really followed)."""
    model, x, y = _dense_model()
    _check_exact(parse_attack(f"fmn-t200-top4-{norm}"), model, x, y)
    one = parse_attack(f"fmn-t200-top1-{norm}").minimal(model, x, y)
    assert (one.norms.double() / _exact(model, x, y, norm) > 1.05).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deepfool_overshoots_by_the_papers_two_percent(norm):
    model, x, y = _block_model()
    result = parse_attack(f"deepfool-{norm}").minimal(model, x, y)
    ratio = result.norms.double() / _exact(model, x, y, norm)
    assert ((ratio > 1.019) & (ratio < 1.03)).all(), ratio


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_to_hyperplane_is_the_smallest_step_in_the_box(norm):
    """Against a bisection on the multiplier: points near the box's faces, where it binds."""
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(20, 50, generator=generator, dtype=torch.float64) ** 3  # many near 0
    w = torch.randn(20, 50, generator=generator, dtype=torch.float64)
    level = (w * points).sum(1) + torch.randn(20, generator=generator, dtype=torch.float64)
    step = to_hyperplane(points, w, level, norm)
    assert ((points + step) >= -1e-12).all() and ((points + step) <= 1 + 1e-12).all()
    reachable = torch.where(w * (level - (w * points).sum(1))[:, None] > 0, 1 - points, -points)  # full pushes
    can_reach = (w * reachable).sum(1).abs() >= (level - (w * points).sum(1)).abs()
    assert torch.allclose((w * (points + step)).sum(1)[can_reach], level[can_reach])
    low, high = torch.zeros(20, dtype=torch.float64), torch.full((20,), 1e3, dtype=torch.float64)
    need = level - (w * points).sum(1)
    for _ in range(200):  # the same optimum, found independently: d = clip(λ·v) with v = w (L2) or sign(w) (L∞)
        mid = (low + high) / 2
        v = w if norm == "l2" else w.sign()
        d = torch.minimum(torch.maximum(mid[:, None] * v * need.sign()[:, None], -points), 1 - points)
        short = (w * d).sum(1).abs() < need.abs()
        low, high = torch.where(short, mid, low), torch.where(short, high, mid)
    v = w if norm == "l2" else w.sign()
    expected = torch.minimum(torch.maximum(high[:, None] * v * need.sign()[:, None], -points), 1 - points)
    assert torch.allclose(step[can_reach], expected[can_reach], atol=1e-8)


SMALL = {  # small budgets: the invariants do not need strength
    "fab": "fab5",
    "fab-t": "fab-t5-top3",
    "fmn": "fmn30",
    "fmn-t": "fmn-t30-top2",
    "cw": "cw10:searches=2",
    "deepfool": "deepfool5",
}


@pytest.mark.parametrize("name", MINIMAL)
def test_results_are_honest(name, tiny_cnn, batch):
    """Every finite norm is the true distance to a misclassified point in [0, 1]; inf means x itself; an
    example misclassified already has norm 0."""
    x, y = batch
    with torch.no_grad():
        predicted = tiny_cnn(x).argmax(dim=1)
    y = torch.where(torch.arange(len(y)) < 4, (predicted + 1) % 10, predicted)  # 4 wrong already, 12 right
    spec = parse_attack(SMALL[name], norm=ATTACKS[name].norms[-1])
    result = spec.minimal(tiny_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, MinimalPerturbation) and result.x_adv.shape == x.shape
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.norms[:4] == 0).all() and torch.equal(result.x_adv[:4], x[:4])
    found = result.norms.isfinite()
    assert found[4:].any(), "a random CNN is fooled by small perturbations"
    assert torch.allclose(result.norms[found].double(), _size(result.x_adv - x, spec.norm)[found], atol=1e-6)
    assert torch.equal(result.x_adv[~found], x[~found])
    with torch.no_grad():
        assert (tiny_cnn(result.x_adv[found]).argmax(dim=1) != y[found]).all()


@pytest.mark.parametrize("name", MINIMAL)
def test_at_one_eps_only_what_was_found_within_eps(name, tiny_cnn, batch):
    """At ε (AttackSpec.__call__): the ε-ball check holds, and an example is fooled exactly where the minimal
    norm is at most ε; elsewhere x itself comes back."""
    x, y = batch
    spec = parse_attack(SMALL[name], norm=ATTACKS[name].norms[-1])
    result = spec.minimal(tiny_cnn, x, y, generator=torch.Generator().manual_seed(0))
    eps = float(result.norms[result.norms.isfinite()].median())  # some found within ε, some not
    x_adv = spec(tiny_cnn, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    verify_adversarial(x, x_adv, eps, spec.norm)
    robust = result.robust_at(eps)
    assert robust.any() and not robust.all()
    assert torch.equal(x_adv, within_eps(result, x, eps))  # one run, no random draw: the same points
    assert torch.equal(x_adv[robust], x[robust])
    with torch.no_grad():
        assert (tiny_cnn(x_adv[~robust]).argmax(dim=1) != y[~robust]).all()


def test_fab_restarts_never_weaken(tiny_cnn, batch):
    """The first run starts at x in both; each example keeps its smallest adversarial over all runs."""
    x, y = batch
    one = parse_attack("fab5").minimal(tiny_cnn, x, y, generator=torch.Generator().manual_seed(0))
    more = parse_attack("fab5x3").minimal(tiny_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert (more.norms <= one.norms).all() and more.norms.isfinite().all()


def test_within_eps_never_leaves_the_ball():
    x = torch.full((3, 1, 2, 2), 0.5)
    x_adv = x + torch.tensor([0.1, 0.3, 0.0]).view(3, 1, 1, 1)
    result = MinimalPerturbation(x_adv, torch.tensor([0.1, 0.3, float("inf")]), "linf")
    assert torch.equal(within_eps(result, x, 0.2), torch.stack([x_adv[0], x[1], x[2]]))
    assert robust_at(result.norms, 0.1).tolist() == [False, True, True]
    assert robust_at(torch.tensor([0.1 + 5e-7]), 0.1).tolist() == [False]  # the ε-ball check's 1e-6 slack
    assert curve(result.norms, [0.0, 0.2, 1.0]).tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])


@pytest.mark.parametrize("norm, eps_grid", [("linf", (0.05, 0.1)), ("l2", (1.0, 2.0))])
def test_curves_are_as_strong_as_pgd_on_a_trained_cnn(norm, eps_grid, trained_model, fashion_test):
    """FMN's and FAB-T's curves, one run each, against PGD-20×2 at each ε on 32 images: at most one image
    (3 points) above, or they are not doing their job. Budgets cut for the test's time: FMN 200 steps,
    FAB-T against the 3 most likely wrong classes."""
    x, y = fashion_test.subset(32).tensors()
    attacks = ("fmn200", "fab-t-top3")
    curves = {name: parse_attack(f"{name}-{norm}").minimal(trained_model, x, y).curve(eps_grid) for name in attacks}
    for i, eps in enumerate(eps_grid):
        generator = torch.Generator().manual_seed(0)
        x_adv = pgd(trained_model, x, y, eps=eps, norm=norm, restarts=2, early_stop=True, generator=generator)
        with torch.no_grad():
            pgd_robust = (trained_model(x_adv).argmax(dim=1) == y).double().mean()
        for name, robust in curves.items():
            assert robust[i] <= pgd_robust + 1 / 32 + 1e-9, (name, eps, robust[i].item(), pgd_robust.item())


@pytest.mark.parametrize("name", ["fab-t30-top3", "fmn-t60-top2"])
def test_targeted_at_eps_is_as_strong_as_its_minimal_run(name, trained_model, fashion_test):
    """FAB-T and FMN-T at ε with early exit (each target and step only on what is left) reach the verdict of
    the full minimum-norm run at that ε, image for image."""
    (x, y), eps = fashion_test.subset(32).tensors(), 0.05
    spec = parse_attack(name)
    x_adv = spec(trained_model, x, y, eps=eps, early_stop=True)
    verify_adversarial(x, x_adv, eps, "linf")
    with torch.no_grad():
        fooled = trained_model(x_adv).argmax(dim=1) != y
    minimal = spec.minimal(trained_model, x, y)
    assert torch.equal(fooled, ~minimal.robust_at(eps))
    assert fooled.any() and not fooled.all()


def test_fmn_first_step_depends_on_the_norm(tiny_cnn, batch):
    """FMN's first step is 10 in L∞ and 1 in L2 (the reference's): what runs, and what metrics record."""
    x, y = batch
    assert parse_attack("fmn").hyperparameters(0.1)["alpha"] == 10.0
    assert parse_attack("fmn-l2").hyperparameters(0.5)["alpha"] == 1.0
    assert parse_attack("fmn:alpha=10") == parse_attack("fmn") and parse_attack("fmn:alpha=1").params
    default, ten, one = (
        parse_attack(name).minimal(tiny_cnn, x, y).norms for name in ("fmn30", "fmn30:alpha=10", "fmn30:alpha=1")
    )
    assert torch.equal(default, ten) and not torch.equal(default, one)


def test_fmn_t_refuses_more_targets_than_wrong_classes(tiny_cnn, batch):
    x, y = batch
    with pytest.raises(AdvlabError, match="FMN-T cannot aim at 12 classes"):
        parse_attack("fmn-t5-top12").minimal(tiny_cnn, x, y)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fab-t", AttackSpec("fab-t")),
        ("fab-t-top3-l2", AttackSpec("fab-t", norm="l2", targets=3)),
        ("fab100x5", AttackSpec("fab", steps=100, restarts=5)),
        ("fmn-l2", AttackSpec("fmn", norm="l2")),
        ("cw:c=0.1", AttackSpec("cw", norm="l2", params={"c": 0.1})),
        ("cw50-l2:kappa=5, c=1", AttackSpec("cw", steps=50, params={"kappa": 5.0})),  # c=1 is the default
        ("deepfool-linf", AttackSpec("deepfool", norm="linf")),
        (
            "deepfool:overshoot=0.05,candidates=3",
            AttackSpec("deepfool", params=(("candidates", 3), ("overshoot", 0.05))),
        ),
    ],
)
def test_names_parse(text, expected):
    assert parse_attack(text) == expected


def test_labels_and_hyperparameters_record_the_parameters():
    spec = parse_attack("cw:c=0.1,kappa=2")
    assert spec.label == "C&W-100 L2 c=0.1,kappa=2"
    assert parse_attack("fab-t").label == "FAB-T-100 L∞" and parse_attack("fmn-l2").label == "FMN-1000 L2"
    hyper = spec.hyperparameters(0.5)
    assert (hyper["c"], hyper["kappa"], hyper["searches"], hyper["minimum_norm"]) == (0.1, 2.0, 9, True)
    fab_t = parse_attack("fab-t").hyperparameters(0.03)
    assert (fab_t["targets"], fab_t["eta"], fab_t["beta"], fab_t["alpha_max"]) == (9, 1.05, 0.9, 0.1)
    assert spec.to_dict()["params"] == {"c": 0.1, "kappa": 2.0}
    assert "params" not in parse_attack("pgd").to_dict()  # other attacks are written as before
    assert ATTACKS["fab-t"].fallback == "fab" and ATTACKS["fab-t"].picks_targets == 9


@pytest.mark.parametrize(
    "text, message",
    [
        ("cw:c=-1", "c must be > 0"),
        ("cw:kappa=-0.5", "kappa must be ≥ 0"),
        ("cw:foo=1", "no parameter 'foo'"),
        ("cw:c", "key=value"),
        ("cw:c=abc", "must be a number"),
        ("cw:c=1,c=2", "twice"),
        ("cw:searches=2.5", "must be an integer"),
        ("cw-linf", "L2 only"),
        ("deepfool:overshoot=-0.1", "overshoot must be ≥ 0"),
        ("fmn:gamma=1.5", "gamma must be in"),
        ("fab-t-top0", "top0"),
        ("fab-targeted", "takes no target classes"),
        ("pgd:c=1", "no parameter"),
    ],
)
def test_bad_names_are_one_clear_error(text, message):
    with pytest.raises(AdvlabError, match=message) as error:
        parse_attack(text)
    assert "\n" not in str(error.value)


def test_bad_calls_are_clear_errors(tiny_cnn, batch):
    x, y = batch
    with pytest.raises(AdvlabError, match="not a minimum-norm attack"):
        parse_attack("pgd").minimal(tiny_cnn, x, y)
    with pytest.raises(AdvlabError, match="12 classes"):
        parse_attack("fab-t5-top12").minimal(tiny_cnn, x, y)  # 10 classes: 9 wrong ones
    with pytest.raises(AdvlabError, match="works in L2 only"):
        AttackSpec("cw", norm="linf")
    with pytest.raises(AdvlabError, match="targeted=False"):
        ATTACKS["fmn"].function(tiny_cnn, x, y, eps=0.1, targeted=True)


# ------------------------------------------------------------------------ in an evaluation, the CLI and the study


def test_one_run_gives_the_whole_curve_and_matches_the_per_eps_verdicts(trained_checkpoint, tmp_path, capsys):
    """`advlab evaluate RUN --attack fmn`: no --eps needed, one run gives robust accuracy at every ε, the
    per-image norms are those of verified misclassified points, and the curve at given ε is the per-ε figure."""
    import json

    from advlab.cli import main

    out, plot = tmp_path / "fmn.json", tmp_path / "curve.png"
    argv = ["evaluate", str(trained_checkpoint), "--attack", "fmn100", "--n", "40", "--quiet"]
    assert main([*argv, "--out", str(out), "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    (label,) = result["minimum_norm"]
    found = result["minimum_norm"][label]
    accuracy = found["robust_accuracy"]
    assert accuracy[0] == pytest.approx(result["clean_accuracy"]) and accuracy == sorted(accuracy, reverse=True)
    assert accuracy[-1] == 0.0 and len(found["norms"]) == 40  # at the largest norm found, nothing is left
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{label}: robust accuracy at every ε from one run" in capsys.readouterr().out
    # With --eps beside a per-ε attack: its curve at those ε is its per-ε figure, and the worst case takes it.
    again = tmp_path / "both.json"
    assert main([*argv[:-1], "--attack", "pgd10", "--eps", "0.02,0.05", "--quiet", "--out", str(again)]) == 0
    both = json.loads(again.read_text())
    assert both["minimum_norm"][label]["robust_accuracy"] == pytest.approx(both["robust_accuracy"][label])
    norms = [n if n is not None else float("inf") for n in found["norms"]]
    assert both["robust_accuracy"][label][1] == pytest.approx(sum(n > 0.05 + 1e-6 for n in norms) / 40)
    assert all(
        w <= min(v[i] for v in both["robust_accuracy"].values()) for i, w in enumerate(both["worst_case_accuracy"])
    )


def test_a_per_eps_attack_still_needs_eps(trained_checkpoint, capsys):
    from test_cli import _fails_cleanly

    _fails_cleanly(capsys, ["evaluate", str(trained_checkpoint), "--attack", "pgd10", "--quiet"], match="give --eps")


def test_a_minimum_norm_curve_above_the_per_eps_attacks_is_flagged():
    from advlab.masking import sanity_checks

    grid = [0.0, 0.05, 0.1]
    hyper = {"FMN-100 L∞": [{"minimum_norm": True}] * 3, "PGD-20 L∞": [{}] * 3, "FGSM L∞": [{}] * 3}
    numbers = {
        "eps": 0.05,
        "n": 200,
        "pgd": {"label": "PGD-20 L∞", "accuracy": 0.5},
        "worst_case": {"accuracy": 0.5},
        "noise": {"label": "noise L∞", "accuracy": 0.8},
        "transfer": {"accuracy": 0.7, "surrogate": "s"},
    }

    def rows(fmn):
        curves = {"FMN-100 L∞": fmn, "PGD-20 L∞": [0.9, 0.5, 0.2], "FGSM L∞": [0.9, 0.6, 0.4]}
        metrics = {
            "eps_grid": grid,
            "attack_hyperparameters": hyper,
            "models": {
                "m": {"robust_accuracy": curves, "worst_case_accuracy": [min(v) for v in zip(*curves.values())]}
            },
        }
        return {r["check"]: r for r in sanity_checks(metrics, {"m": numbers})}

    check = "minimum-norm curve not above the per-ε attacks"
    assert rows([0.9, 0.5, 0.19])[check]["status"] == "pass"
    assert rows([0.9, 0.505, 0.2])[check]["status"] == "pass"  # half a point: sampling at one ε
    failed = rows([0.9, 0.52, 0.2])[check]
    assert failed["status"] == "fail" and "ε = 0.05" in failed["detail"]
