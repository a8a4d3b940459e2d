"""APGD (Croce & Hein 2020): exact answers on linear models, the step-size schedule, the DLR losses, the
attack names, and the number of forward-backward passes."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

import advlab.attacks.apgd  # noqa: F401 - registers apgd-ce, apgd-dlr and apgd-t
from advlab.attacks import AttackSpec, parse_attack, pgd, verify_adversarial
from advlab.attacks.apgd import apgd_ce, apgd_dlr, apgd_t, count_passes
from advlab.attacks.apgd_steps import OBJECTIVES, apgd_run, apgd_start, checkpoints, halve_step, targeted_dlr_loss
from advlab.attacks.loop import cross_entropy, dlr_loss, objective_and_gradient
from advlab.errors import AdvlabError


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- exact answers on linear classifiers -----------------------------------------------------------------------


def _linear(classes: int, norm: str, dim: int = 20, n: int = 200) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = _seed(0)
    model = nn.Linear(dim, classes)
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, dim, generator=g))
        model.bias.copy_(0.1 * torch.randn(classes, generator=g))
    x = torch.rand(n, dim, generator=g)
    if norm == "l2":
        x = 0.3 + 0.4 * x  # every L2 ball of radius ≤ 0.3 lies inside the cube: the optimum has a closed form
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _best_margin(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """max over t ≠ y and the threat set of z_t − z_y, exactly: positive iff the example can be broken."""
    with torch.no_grad():
        v = model.weight[None] - model.weight[y][:, None]  # (n, C, d): w_t − w_y
        offset = model.bias[None] - model.bias[y][:, None]
        if norm == "linf":  # a linear function on the box [max(0, x−ε), min(1, x+ε)] peaks at a corner
            low, high = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
            best = torch.maximum(v * low[:, None], v * high[:, None]).sum(2) + offset
        else:  # on the L2 ball (inside the cube): v·x + ε‖v‖
            best = (v * x[:, None]).sum(2) + eps * v.norm(dim=2) + offset
    return best.scatter(1, y[:, None], float("-inf")).amax(1)


@pytest.mark.parametrize(
    "attack, classes, norm, eps",
    [
        (apgd_ce, 2, "linf", 0.08),  # two classes: cross-entropy is monotone in the margin, so APGD-CE is exact
        (apgd_ce, 2, "l2", 0.3),
        (apgd_t, 10, "linf", 0.05),  # the targeted DLR loss of each target is the margin to it, up to a positive factor
        (apgd_t, 10, "l2", 0.1),
    ],
)
def test_breaks_exactly_the_breakable_examples_of_a_linear_model(attack, classes, norm, eps):
    model, x, y = _linear(classes, norm)
    margin = _best_margin(model, x, y, eps, norm)
    breakable, clear = margin > 0, margin.abs() > 1e-4  # within 1e-4 of 0 float rounding decides
    assert 0.3 <= breakable.float().mean() <= 0.7
    for early_stop in (True, False):
        x_adv = attack(model, x, y, eps=eps, norm=norm, generator=_seed(), early_stop=early_stop)
        verify_adversarial(x, x_adv, eps, norm)
        with torch.no_grad():
            broken = model(x_adv).argmax(1) != y
        assert torch.equal(broken[clear], breakable[clear])


def test_apgd_ce_on_ten_classes_finds_nearly_all_breakable_examples():
    """With many classes cross-entropy is not the margin (it can rise without any class overtaking y), so
    APGD-CE may miss a few: the reason AutoAttack adds APGD-T. It never claims an impossible success."""
    model, x, y = _linear(10, "linf")
    breakable = _best_margin(model, x, y, 0.05, "linf") > 0
    with torch.no_grad():
        broken = model(apgd_ce(model, x, y, eps=0.05, generator=_seed())).argmax(1) != y
    assert not (broken & ~breakable).any()
    assert broken.sum() >= 0.9 * breakable.sum()


# --- step size -------------------------------------------------------------------------------------------------


def test_checkpoints_follow_the_paper():
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    expected = [-(-q.numerator * 100 // q.denominator) for q in p[1:]]  # ⌈p_j·100⌉
    assert checkpoints(100) == expected == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [2 * w for w in expected]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]  # ⌈2.2⌉, ⌈4.1⌉, ⌈5.7⌉, 7, 8, ⌈8.7⌉, ⌈9.3⌉ and ⌈9.9⌉ = 10


def test_halve_step_conditions():
    increases = torch.tensor([10, 17, 17, 17])
    best = torch.tensor([1.0, 1.0, 2.0, 1.0])
    before = torch.tensor([1.0, 1.0, 1.0, 1.0])
    halved = torch.tensor([False, False, False, True])
    # 10 of 22 steps raised the loss (< 16.5): oscillating; 17 of 22 without a new best and not halved
    # last time: stalled; a new best; stalled but halved last time: kept.
    assert halve_step(increases, 22, best, before, halved).tolist() == [True, True, False, False]


class _Bowl(nn.Module):
    """Two logits, [0, −1 − ‖x − c‖²]: never misclassified as class 1, cross-entropy of class 0 peaks at c."""

    def __init__(self, centre: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = -1 - (x - self.centre).flatten(1).pow(2).sum(1)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_halving_steps_home_in_on_an_interior_maximum():
    """Steps of 2ε overshoot a maximum at 0.3ε from x; only the halved steps (restarting from the best
    point) bring APGD close. A stub that returns x, or never halves, stays about 0.3ε to ε away."""
    eps, g = 0.1, _seed(2)
    x = 0.2 + 0.6 * torch.rand(8, 16, generator=g)
    centre = x + 0.3 * eps * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)
    model, y = _Bowl(centre), torch.zeros(8, dtype=torch.long)
    x_adv = apgd_ce(model, x, y, eps=eps, generator=_seed())
    assert (x_adv - centre).abs().max() < 0.05 * eps
    with torch.enable_grad():
        *_, step = apgd_run(
            model,
            x,
            y,
            y,
            apgd_start(x, eps, "linf", _seed()),
            eps=eps,
            norm="linf",
            steps=100,
            objective=lambda logits, labels, goals: cross_entropy(logits, labels),
            early_stop=False,
        )
    assert (step < 2 * eps).all()


def test_iterates_follow_the_momentum_update_and_restart_from_the_best_point():
    """x1 = P(x0 + η·sign g0); x_{k+1} = P(x_k + 0.75(z − x_k) + 0.25(x_k − x_{k−1})), z = P(x_k + η·sign g_k);
    at the first checkpoint (22) the loss has not risen since x0, its best point, so η halves and x23 steps
    from x0 with the last iterate x21 as momentum."""
    eps = 0.1
    x = torch.full((1, 4), 0.5)
    sign = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    centre = x + 0.01 * eps * sign  # the maximum sits next to x0: every later iterate is worse
    seen = []
    bowl = _Bowl(centre)
    bowl.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().clone()))
    y = torch.zeros(1, dtype=torch.long)
    with torch.enable_grad():
        apgd_run(
            bowl,
            x,
            y,
            y,
            x,
            eps=eps,
            norm="linf",
            steps=100,
            early_stop=False,
            objective=lambda logits, labels, goals: cross_entropy(logits, labels),
        )

    def project(point):
        return torch.minimum(torch.maximum(point, x - eps), x + eps).clamp(0, 1)

    def update(current, previous, eta):
        z = project(current + eta * torch.sign(centre - current))  # the bowl's gradient has the sign of c − x
        return project(current + 0.75 * (z - current) + 0.25 * (current - previous))

    assert torch.allclose(seen[1], project(x + 2 * eps * sign))
    for k in range(1, 22):
        assert torch.allclose(seen[k + 1], update(seen[k], seen[k - 1], 2 * eps)), k
    assert torch.allclose(seen[23], update(x, seen[21], eps))
    assert not torch.allclose(seen[23], update(seen[22], seen[21], eps))


def test_a_loss_that_never_rises_halves_at_every_checkpoint():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()  # constant logits: no step moves x, the loss never rises (condition 1)
    x, y = torch.full((5, 4), 0.5), torch.zeros(5, dtype=torch.long)
    with torch.enable_grad():
        *_, step = apgd_run(
            model,
            x,
            y,
            y,
            x,
            eps=0.1,
            norm="linf",
            steps=100,
            objective=lambda logits, labels, goals: cross_entropy(logits, labels),
            early_stop=False,
        )
    assert torch.allclose(step, torch.full((5,), 0.2 / 2**8))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_lies_on_the_balls_edge_as_the_reference_draws_it(norm):
    x = 0.3 + 0.4 * torch.rand(6, 1, 4, 4, generator=_seed())
    delta = (apgd_start(x, 0.1, norm, _seed(1)) - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.allclose(size, torch.full((6,), 0.1), atol=1e-6)


# --- the DLR losses --------------------------------------------------------------------------------------------


def test_dlr_values_on_hand_computed_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # π: 3, 2, 1, 0. y = 0: −(3 − 2)/(3 − 1); y = 1: −(1 − 3)/(3 − 1).
    assert torch.allclose(dlr_loss(logits, torch.tensor([0, 1])), torch.tensor([-0.5, 1.0]))
    # Targeted: −(z_y − z_t)/(3 − (1 + 0)/2): y = 0, t = 3 gives −3/2.5; y = 0, t = 2 gives −1/2.5.
    value = targeted_dlr_loss(logits, torch.tensor([0, 0]), torch.tensor([3, 2]))
    assert torch.allclose(value, torch.tensor([-1.2, -0.4]))
    # Shifting and scaling the logits changes neither.
    assert torch.allclose(dlr_loss(2 * logits + 5, torch.tensor([0, 1])), torch.tensor([-0.5, 1.0]))


def test_dlr_needs_enough_classes():
    with pytest.raises(AdvlabError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(AdvlabError, match="at least 4 classes"):
        targeted_dlr_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.long)
    with pytest.raises(AdvlabError, match="at least 3 classes"):
        apgd_dlr(nn.Linear(6, 2), x, y, eps=0.1)
    with pytest.raises(AdvlabError, match="at least 4 classes"):
        apgd_t(nn.Linear(6, 3), x, y, eps=0.1)


# --- a small trained model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_mlp():
    """An MLP trained in about a second on ten noisy prototypes of 1×4×4 images, and 64 test images."""
    g = _seed(0)
    prototypes = torch.rand(10, 1, 4, 4, generator=g) * 0.6 + 0.2

    def sample(n):
        y = torch.randint(0, 10, (n,), generator=g)
        return (prototypes[y] + (torch.rand(n, 1, 4, 4, generator=g) - 0.5) * 0.3).clamp(0, 1), y

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        xb, yb = sample(128)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    return model.eval(), *sample(64)


def _robust(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize("norm, eps", [("linf", 0.08), ("l2", 0.3)])
def test_apgd_ce_at_least_as_strong_as_pgd_and_early_exit_changes_nothing(trained_mlp, norm, eps):
    model, x, y = trained_mlp
    pgd_robust = _robust(model, pgd(model, x, y, eps=eps, norm=norm, steps=50, generator=_seed()), y)
    assert 0.3 < pgd_robust.float().mean() < 0.95  # a partly robust model: a stub returning x would fail below
    runs = {}
    for early_stop in (True, False):
        x_adv = apgd_ce(model, x, y, eps=eps, norm=norm, generator=_seed(), early_stop=early_stop)
        verify_adversarial(x, x_adv, eps, norm)
        runs[early_stop] = _robust(model, x_adv, y)
    assert runs[True].sum() <= pgd_robust.sum()
    assert torch.equal(runs[True], runs[False])


def test_restarts_and_targets_only_strengthen(trained_mlp):
    model, x, y = trained_mlp
    one = _robust(model, apgd_ce(model, x, y, eps=0.08, steps=20, generator=_seed(), early_stop=True), y)
    three = _robust(model, apgd_ce(model, x, y, eps=0.08, steps=20, restarts=3, generator=_seed(), early_stop=True), y)
    assert not (three & ~one).any()  # the first run is the same; later ones only add successes
    targeted = apgd_t(model, x, y, eps=0.08, steps=20, targets=3, generator=_seed(), early_stop=True)
    verify_adversarial(x, targeted, 0.08, "linf")
    assert _robust(model, targeted, y).float().mean() < 1


def test_same_seed_same_result_and_modes_restored(trained_mlp):
    model, x, y = trained_mlp
    model.train()
    try:
        a = apgd_dlr(model, x, y, eps=0.08, steps=10, restarts=2, generator=_seed(3))
        assert model.training
        assert torch.equal(a, apgd_dlr(model, x, y, eps=0.08, steps=10, restarts=2, generator=_seed(3)))
    finally:
        model.eval()


@pytest.mark.parametrize("attack", [apgd_ce, apgd_dlr, apgd_t])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_stays_in_ball_and_range_at_the_edges(attack, norm):
    g = _seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(5, 1, 4, 4, generator=g).round(decimals=1)  # pixels at 0 and 1, where clipping bites
    y = torch.randint(0, 4, (5,), generator=g)
    for eps in (0.0, 0.03, 1.0 if norm == "linf" else 4.0):
        for early_stop in (True, False):
            x_adv = attack(model, x, y, eps=eps, norm=norm, steps=5, restarts=2, generator=g, early_stop=early_stop)
            verify_adversarial(x, x_adv, eps, norm)
            assert x_adv.is_contiguous()


def test_bad_arguments_raise_clear_errors(trained_mlp):
    model, x, y = trained_mlp
    with pytest.raises(AdvlabError, match="chooses its own loss"):
        apgd_ce(model, x, y, eps=0.1, targeted=True)
    with pytest.raises(AdvlabError, match="chooses its own loss"):
        apgd_t(model, x, y, eps=0.1, loss="margin")
    with pytest.raises(AdvlabError, match="steps must be an integer"):
        apgd_ce(model, x, y, eps=0.1, steps=0)
    with pytest.raises(AdvlabError, match="eps"):
        apgd_ce(model, x, y, eps=2.0)


# --- names -----------------------------------------------------------------------------------------------------


def test_attack_names():
    assert parse_attack("apgd-ce100x2") == AttackSpec("apgd-ce", steps=100, restarts=2)
    assert parse_attack("apgd-t") == AttackSpec("apgd-t", steps=100, restarts=1)
    assert parse_attack("apgd-t100x2").restarts == 2
    spec = parse_attack("apgd-dlr50-l2")
    assert (spec.name, spec.steps, spec.restarts, spec.norm) == ("apgd-dlr", 50, 1, "l2")
    assert spec.label == "APGD-DLR-50 L2"
    assert parse_attack("apgd-ce100-l2").label == "APGD-CE-100 L2"
    assert parse_attack("apgd-ce100x5").label == "APGD-CE-100×5 L∞"
    assert parse_attack("apgd-t").label == "APGD-T-100 L∞"
    assert parse_attack("apgd-ce").hyperparameters(0.1)["alpha"] is None  # parameter-free: no step size
    with pytest.raises(AdvlabError, match="takes no target classes"):
        parse_attack("apgd-t-targeted")
    with pytest.raises(AdvlabError, match="takes no choice of loss"):
        parse_attack("apgd-ce-margin")


def test_spec_runs_the_attack(trained_mlp):
    model, x, y = trained_mlp
    x_adv = parse_attack("apgd-t10-l2")(model, x, y, eps=0.3, generator=_seed(), early_stop=True)
    verify_adversarial(x, x_adv, 0.3, "l2")
    assert _robust(model, x_adv, y).float().mean() < 0.95


# --- cost ------------------------------------------------------------------------------------------------------


def test_count_passes_counts_forward_backward_passes(trained_mlp):
    model, x, y = trained_mlp
    n = len(y)
    with count_passes(model) as seen, torch.no_grad():
        model(x)
    assert (seen.forwards, seen.gradients) == (n, 0)
    with count_passes(model) as apgd_cost:  # clean pass, 100 gradient passes, and the last iterate's forward
        apgd_ce(model, x, y, eps=0.08, early_stop=False)
    assert (apgd_cost.forwards, apgd_cost.gradients) == (102 * n, 100 * n)
    with count_passes(model) as pgd_cost:
        pgd(model, x, y, eps=0.08, steps=50, restarts=10, early_stop=False)
    assert pgd_cost.gradients >= 500 * n >= 5 * apgd_cost.gradients
    with count_passes(model) as early:  # at a large ε most examples leave early (in buckets of 32 rows)
        apgd_ce(model, x, y, eps=0.2, early_stop=True)
    assert early.gradients < apgd_cost.gradients / 2


def test_count_passes_sees_the_channels_last_twin(tiny_cnn, batch):
    x, y = batch
    with count_passes(tiny_cnn) as seen:
        apgd_ce(tiny_cnn, x[:4], y[:4], eps=0.05, steps=3)
    assert seen.gradients == 3 * 4


class _RandomSign(nn.Module):
    """A randomized model: each pass adds a large term whose sign is drawn afresh, so one pass's gradient
    is mostly noise while the average over many passes is the underlying model's (E[sign] = 0)."""

    def __init__(self, inner: nn.Module, dim: int, scale: float = 30.0):
        super().__init__()
        self.inner, self.scale = inner, scale
        self.direction = nn.Parameter(torch.randn(dim, generator=_seed(3)), requires_grad=False)

    def forward(self, x):
        sign = torch.randint(0, 2, (x.shape[0], 1)).float() * 2 - 1
        noise = self.scale * sign * (x.flatten(1) @ self.direction)[:, None]
        return self.inner(x) + noise * torch.linspace(-1, 1, self.inner(x).shape[1])


def test_eot_averages_passes_and_is_named(trained_mlp):
    model, x, y = trained_mlp
    n = len(y)
    with count_passes(model) as one:
        apgd_ce(model, x, y, eps=0.08, steps=10, early_stop=False)
    with count_passes(model) as four:
        apgd_ce(model, x, y, eps=0.08, steps=10, early_stop=False, eot=4)
    assert four.gradients == 4 * one.gradients == 4 * 10 * n
    spec = parse_attack("apgd-dlr100-eot20")
    assert (spec.eot, spec.label) == (20, "APGD-DLR-100 L∞ EOT-20") and spec.hyperparameters(0.1)["eot"] == 20
    with pytest.raises(AdvlabError, match="EOT"):
        parse_attack("square100-eot5")  # no gradients to average
    assert parse_attack("pgd20-eot5").eot == 5  # PGD and FGSM average theirs too (issue 15)


def test_eot_gradient_is_the_mean_over_passes(trained_mlp):
    """With ``eot`` = K, each step's loss, gradient and logits are the mean of K passes of a randomized model:
    the same as K single passes replayed from the same random state and averaged by hand."""
    model, x, y = trained_mlp
    noisy = _RandomSign(model, x[0].numel(), scale=3.0).eval()
    torch.manual_seed(5)
    loss, grad, logits = objective_and_gradient(noisy, x, y, cross_entropy, eot=8)
    torch.manual_seed(5)
    singles = [objective_and_gradient(noisy, x, y, cross_entropy) for _ in range(8)]
    assert torch.allclose(loss, sum(s.value for s in singles) / 8, atol=1e-5)
    assert torch.allclose(grad, sum(s.grad for s in singles) / 8, atol=1e-6)
    assert torch.allclose(logits, sum(s.logits for s in singles) / 8, atol=1e-5)
    assert not torch.allclose(grad, singles[0].grad, atol=1e-3)  # one pass alone differs: the model is random
    assert not torch.allclose(logits, singles[-1].logits, atol=1e-3)  # nor are the last pass's logits the mean


class _Alternating(nn.Module):
    """A randomized model with a known schedule: its passes with autograd alternate between two offsets of
    the logits, ``first`` and ``second``; a pass without autograd (a verdict, or the clean pass) gives their
    mean. A small tilt in x gives the attack a gradient to follow, too small to change any verdict."""

    def __init__(self, first: list[float], second: list[float]) -> None:
        super().__init__()
        self.first, self.second, self.calls = torch.tensor(first), torch.tensor(second), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tilt = 0.01 * x.flatten(1).sum(1, keepdim=True) * torch.tensor([1.0, -1.0])
        if not torch.is_grad_enabled():
            return tilt + (self.first + self.second) / 2
        self.calls += 1
        return tilt + (self.first if self.calls % 2 else self.second)


@pytest.mark.parametrize(
    "first, second, fooled",
    [
        ([4.0, 0.0], [0.0, 1.0], False),  # the mean (2, 0.5) is right; the last of each pair of passes is wrong
        ([0.0, 4.0], [1.0, 0.0], True),  # the mean (0.5, 2) is wrong; the last of each pair is right
    ],
)
def test_apgd_judges_success_by_the_mean_logits_over_eot_passes(first, second, fooled):
    """Under EOT an example is misclassified when the logits averaged over the passes say so, as in PGD's
    loop, never by the last pass alone (one lucky draw)."""
    model, x, y = _Alternating(first, second), torch.full((3, 4), 0.5), torch.zeros(3, dtype=torch.long)
    for early_stop in (True, False):
        with torch.enable_grad():
            _, found, *_ = apgd_run(
                model,
                x,
                y,
                y,
                x,
                eps=0.1,
                norm="linf",
                steps=5,
                objective=OBJECTIVES["ce"],
                early_stop=early_stop,
                eot=2,
            )
        assert found.tolist() == [fooled] * 3


@pytest.mark.parametrize("attack", [apgd_ce, pgd])
def test_eot_early_exit_waits_for_the_mean_logits(attack):
    """With early exit, an example the mean logits classify correctly runs every step of APGD and PGD alike;
    had its last pass decided, each example would have left after its first gradient evaluation."""
    model, x, y = _Alternating([4.0, 0.0], [0.0, 1.0]), torch.full((3, 4), 0.5), torch.zeros(3, dtype=torch.long)
    with count_passes(model) as seen:
        x_adv = attack(model, x, y, eps=0.1, steps=5, eot=2, early_stop=True, generator=_seed())
    assert seen.gradients == 2 * 5 * 3  # eot × steps × examples
    verify_adversarial(x, x_adv, 0.1, "linf")


def test_fp16_apgd_gradient_does_not_underflow():
    """As in PGD's loop (tests/test_runtime.py): a confidently classified example's input gradient is ~1e-9,
    below fp16's smallest number; APGD takes the same scaled gradient, so it still steps under fp16 autocast
    instead of leaving the example where it is."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 5.0, 5.0, 5.0], [-5.0, -5.0, -5.0, -5.0]]))
        model.bias.zero_()
    x, y = torch.full((1, 4), 0.52), torch.tensor([0])  # logit margin 20.8: p(wrong) ≈ 9e-10
    with torch.autocast("cpu", dtype=torch.float16):
        x_adv = apgd_ce(model, x, y, eps=0.3, steps=3, random_start=False)
        point = x.clone().requires_grad_(True)
        (raw,) = torch.autograd.grad(cross_entropy(model(point), y).sum(), point)
    assert torch.count_nonzero(raw) == 0  # what an unscaled fp16 gradient gives
    # A step of 2ε down every pixel, projected to ε: at 0.22 the margin is 8.8 and the loss, 0 in float32 at
    # x, has risen (so ε is large here: where fp16 gradients underflow, float32 cross-entropy is flat).
    assert torch.allclose(x_adv, torch.full((1, 4), 0.22))


def test_apgd_t_top_k_tries_only_the_k_most_likely_targets():
    from advlab.attacks import count_passes, parse_attack

    spec = parse_attack("apgd-t10-top3")
    assert (spec.targets, spec.targeted, spec.label) == (3, False, "APGD-T-10 L∞ top-3")
    assert spec.hyperparameters(0.1)["targets"] == 3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6)
    passes = {}
    for name in ("apgd-t10-top3", "apgd-t10"):
        with count_passes(model) as counted:
            parse_attack(name)(model, x, y, eps=1e-4, generator=torch.Generator().manual_seed(0))
        passes[name] = counted.gradients
    # ε so small nothing is fooled: every target runs all its iterations on every example
    assert passes["apgd-t10-top3"] * 3 == passes["apgd-t10"]
    with pytest.raises(AdvlabError, match="-top3 is for an attack that picks its own targets"):
        parse_attack("pgd20-top3")
