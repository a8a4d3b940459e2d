"""Square Attack (advlab.attacks.square): the analytic optimum of a linear model, the L2 ball, the p schedule,
the shape of one query (and that its window equals the whole-image formula), determinism, errors, the
registry, restarts and per-example early exit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advlab.attacks.square  # noqa: F401  (registers "square")
from advlab.attacks import AttackSpec, parse_attack, random_noise, verify_adversarial
from advlab.attacks.square import P_INIT, l2_side, linf_side, p_schedule, square
from advlab.errors import AdvlabError
from advlab.models import LinearClassifier


def _linear(seed: int, channels: int = 1, size: int = 8, classes: int = 10) -> LinearClassifier:
    generator = torch.Generator().manual_seed(seed)
    model = LinearClassifier(channels, classes, size, size)
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(classes, channels * size * size, generator=generator))
        model.linear.bias.copy_(torch.randn(classes, generator=generator))
    return model.eval()


def _images(n: int, channels: int, size: int, seed: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, channels, size, size, generator=generator)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _linf_optimum(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor, eps: float):
    """Per example, max over wrong classes t and the box [max(0, x−ε), min(1, x+ε)] of z_t − z_y (each pixel
    at its upper bound where (w_t − w_y)_i > 0, else at its lower one), and the point that attains it."""
    weight, bias = model.linear.weight.detach(), model.linear.bias.detach()
    low, high = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    diff = weight[None] - weight[y][:, None]  # (N, classes, D)
    value = torch.where(diff > 0, diff * high[:, None], diff * low[:, None]).sum(-1) + (bias[None] - bias[y][:, None])
    value = value.scatter(1, y[:, None], float("-inf"))
    best, target = value.max(dim=1)
    point = torch.where(diff[torch.arange(len(y)), target] > 0, high, low).view_as(x)
    return best, point


@pytest.mark.parametrize("channels", [1, 3])
def test_linf_breaks_what_the_linear_optimum_says_is_breakable(channels):
    eps = 0.02
    model = _linear(channels, channels)
    x = _images(128, channels, 8, seed=10 + channels)
    y = _predict(model, x)
    optimum, point = _linf_optimum(model, x, y, eps)
    breakable, unbreakable = optimum > 1e-4, optimum < -1e-4
    assert (_predict(model, point)[breakable] != y[breakable]).all()  # the optimum is right
    assert 0.2 * len(y) < breakable.sum() < 0.8 * len(y)  # both kinds are there in numbers
    x_adv = square(model, x, y, eps=eps, steps=1000, generator=torch.Generator().manual_seed(0))
    verify_adversarial(x, x_adv, eps, "linf")
    fooled = _predict(model, x_adv) != y
    assert fooled[breakable].float().mean() >= 0.9
    assert not fooled[unbreakable].any()


@pytest.fixture(scope="module")
def tiny_trained():
    """A standard (not robust) small CNN, 100% accurate on 10 smooth random templates plus noise (10×10)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    templates = F.interpolate(torch.rand(10, 1, 3, 3, generator=generator), size=(10, 10), mode="bilinear")

    def sample(n):
        y = torch.randint(0, 10, (n,), generator=generator)
        return (templates[y] + 0.15 * torch.randn(n, 1, 10, 10, generator=generator)).clamp(0, 1), y

    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(200, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x, y = sample(128)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    x, y = sample(64)
    model.eval()
    assert (_predict(model, x) == y).float().mean() > 0.95
    return model, x, y


def test_l2_stays_in_ball_and_fools_a_standard_model(tiny_trained):
    model, x, y = tiny_trained
    eps = 1.5
    x_adv = square(model, x, y, eps=eps, norm="l2", steps=300, generator=torch.Generator().manual_seed(0))
    verify_adversarial(x, x_adv, eps, "l2")
    noise = random_noise(model, x, y, eps=eps, norm="l2", generator=torch.Generator().manual_seed(0))
    fooled, fooled_by_noise = (_predict(model, x_adv) != y).float().mean(), (_predict(model, noise) != y).float().mean()
    assert fooled >= 0.5 and fooled > fooled_by_noise + 0.4


class _Spy(nn.Module):
    """Never fooled (constant logits, class 0 ahead by 5) and records every batch it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.tensor([5.0, 0.0]).expand(x.shape[0], 2) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_every_l2_query_lies_on_the_ball_in_range():
    spy, x = _Spy(), _images(6, 3, 10, seed=3)
    eps = 1.0
    square(
        spy,
        x,
        torch.zeros(6, dtype=torch.long),
        eps=eps,
        norm="l2",
        steps=30,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(spy.seen) == 2 + 30  # the clean pass, the start, one query per step
    for query in spy.seen[1:]:
        verify_adversarial(x, query, eps, "l2")
        assert ((query - x).flatten(1).norm(dim=1) > 0.8 * eps).all()  # on the sphere, less what [0, 1] clips


def _square_fits(change: torch.Tensor, perturbation: torch.Tensor, side: int, eps: float) -> torch.Tensor:
    """(N, positions) booleans: the change from the start lies in that side × side window, where the
    perturbation is ±ε with one sign per channel."""
    h, w = perturbation.shape[-2:]
    fits = []
    for top in range(h - side + 1):
        for left in range(w - side + 1):
            window = torch.zeros(h, w, dtype=torch.bool)
            window[top : top + side, left : left + side] = True
            inside = perturbation[:, :, window]  # (N, C, side²)
            constant = (inside - inside[:, :, :1]).abs().amax(dim=(1, 2)) < 1e-6
            full = ((inside.abs() - eps).abs() < 1e-6).flatten(1).all(dim=1)
            outside = change[:, :, ~window].abs().flatten(1).amax(dim=1) < 1e-6
            fits.append(constant & full & outside)
    return torch.stack(fits, dim=1)


def test_every_linf_query_is_one_new_square_per_example():
    spy, eps, steps = _Spy(), 0.1, 40
    x = _images(16, 3, 10, seed=4, low=0.2, high=0.8)  # away from 0 and 1: nothing is clipped
    square(spy, x, torch.zeros(16, dtype=torch.long), eps=eps, steps=steps, generator=torch.Generator().manual_seed(0))
    start = spy.seen[1] - x
    assert torch.allclose(start.abs(), torch.full_like(x, eps))
    assert (start.sign() == start[:, :, :1, :].sign()).all()  # vertical stripes: one sign per column and channel
    shared_everywhere, signs_differ_across_channels = True, False
    for i, query in enumerate(spy.seen[2:]):
        side = linf_side(p_schedule(i, steps), 10, 10)
        change = query - spy.seen[1]  # nothing is accepted, so each query changes the start
        assert (change.flatten(1).abs().amax(dim=1) > 0).all()  # a draw that changes nothing is drawn again
        fits = _square_fits(change, query - x, side, eps)
        assert fits.any(dim=1).all(), f"query {i}: not one square of side {side} at ±ε per channel"
        shared_everywhere &= bool(fits.all(dim=0).any())  # one window would explain every example
        signs = (query - x).sign()
        signs_differ_across_channels |= bool(((signs != signs[:, :1]).any(dim=1) & (change.abs().amax(1) > 0)).any())
    assert not shared_everywhere  # each example draws its own place
    assert signs_differ_across_channels  # a sign per channel, not one for the whole square


def _whole_image_candidate(x, best, eps, side, generator):
    """The L∞ query written over the whole image (a mask of each example's square), drawing its random
    numbers in the attack's order: what the windowed candidate must equal to the bit."""
    from advlab.attacks.square import CHANGE_TOLERANCE, MAX_REDRAWS

    n, c, h, w = x.shape
    rows = torch.randint(0, h - side + 1, (n,), generator=generator)
    cols = torch.randint(0, w - side + 1, (n,), generator=generator)
    r, k = torch.arange(h), torch.arange(w)
    inside = (((r >= rows[:, None]) & (r < rows[:, None] + side))[:, :, None]
              & ((k >= cols[:, None]) & (k < cols[:, None] + side))[:, None, :])[:, None]  # fmt: skip

    def draw():
        return torch.randint(0, 2, (n, c, 1, 1), generator=generator).to(x.dtype) * 2 - 1

    signs = draw()
    for _ in range(MAX_REDRAWS):
        candidate = torch.where(inside, (x + eps * signs).clamp(0.0, 1.0), best)
        unchanged = ~((candidate - best).abs() >= CHANGE_TOLERANCE).flatten(1).any(1)
        if not bool(unchanged.any()):
            break
        signs = torch.where(unchanged[:, None, None, None], draw(), signs)
    return torch.where(inside, (x + eps * signs).clamp(0.0, 1.0), best)


@pytest.mark.parametrize("channels, size, eps", [(1, 28, 0.3), (3, 8, 0.1), (1, 7, 8 / 255)])
def test_linf_query_touches_only_its_window_and_equals_the_whole_image_formula(channels, size, eps):
    from advlab.attacks.square import _linf_candidate

    for trial in range(30):
        x = _images(1 + trial, channels, size, seed=trial)
        if trial % 2 == 0:
            x = (x > 0.7).float()  # mostly 0 and 1, as MNIST: many draws change nothing and are drawn again
        sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(trial)) * 2 - 1
        best = (x + eps * sign).clamp(0.0, 1.0)
        side = 1 + trial % size
        ours = _linf_candidate(x, best, eps, side, torch.Generator().manual_seed(trial))
        theirs = _whole_image_candidate(x, best, eps, side, torch.Generator().manual_seed(trial))
        assert torch.equal(ours, theirs), (trial, side)


def test_p_schedule_halves_at_the_reference_points():
    for queries in (10_000, 1000, 5000):
        assert p_schedule(0, queries) == P_INIT
        for halvings, point in enumerate([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]):
            last = max(i for i in range(queries) if int(i / queries * 10_000) <= point)  # rescales to ≤ point
            assert p_schedule(last, queries) == P_INIT / 2**halvings
            assert p_schedule(last + 1, queries) == P_INIT / 2 ** (halvings + 1)
        assert p_schedule(queries - 1, queries) == P_INIT / 512
    assert p_schedule(1, 1000) == 0.8 and p_schedule(2, 1000) == 0.4 and p_schedule(801, 1000) == 0.8 / 512
    assert p_schedule(11, 10_000, p_init=0.3) == 0.15
    assert linf_side(0.8, 28, 28) == 25 and linf_side(0.8 / 512, 28, 28) == 1 and linf_side(0.8, 4, 4) == 4
    assert l2_side(0.8 / 512, 28, 28) == 3 and l2_side(0.8 / 64, 32, 32) == 5 and l2_side(0.8, 4, 4) == 4


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.5)])
def test_same_seed_same_result(norm, eps):
    model, x = _linear(1, 3), _images(32, 3, 8, seed=5)
    y = _predict(model, x)

    def run(seed: int) -> torch.Tensor:
        return square(model, x, y, eps=eps, norm=norm, steps=100, generator=torch.Generator().manual_seed(seed))

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))
    assert not torch.equal(first, x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -5}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"targeted": True}, "untargeted"),
        ({"loss": "hinge"}, "loss"),
        ({"p_init": 0.0}, "p_init"),
        ({"eps": 2.0}, "eps"),
        ({"flat": True}, "shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    model, x = _linear(0), _images(4, 1, 8, seed=0)
    y = _predict(model, x)
    options = {"eps": 0.1, **{key: value for key, value in kwargs.items() if key != "flat"}}
    with pytest.raises(AdvlabError, match=message):
        square(model, x.flatten(1) if "flat" in kwargs else x, y, **options)


def test_registry_names_and_labels():
    spec = parse_attack("square1000x2")
    assert (spec.name, spec.steps, spec.restarts, spec.norm) == ("square", 1000, 2, "linf")
    assert (parse_attack("square").steps, parse_attack("square").restarts) == (5000, 1)
    assert parse_attack("square").label == "Square-5000 L∞"
    assert parse_attack("square1000x2-l2").label == "Square-1000×2 L2"
    assert parse_attack("square5000x2").hyperparameters(0.1)["alpha"] is None
    assert spec.kind.black_box  # the evaluation's "black box beats white box" check keys on this
    with pytest.raises(AdvlabError, match="steps"):
        AttackSpec("square", steps=0)
    model, x = _linear(2), _images(16, 1, 8, seed=1)
    y = _predict(model, x)
    x_adv = parse_attack("square200-l2")(model, x, y, eps=2.0, generator=torch.Generator().manual_seed(0))
    verify_adversarial(x, x_adv, 2.0, "l2")
    assert (_predict(model, x_adv) != y).any()


def test_fooled_examples_get_no_more_queries_and_restarts_skip_them():
    eps, steps, restarts = 0.05, 500, 2
    model, x = _linear(3), _images(64, 1, 8, seed=6)
    y = _predict(model, x)
    rows: list[int] = []
    counter = model.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    x_adv = square(model, x, y, eps=eps, steps=steps, restarts=restarts, generator=torch.Generator().manual_seed(0))
    counter.remove()
    fooled = _predict(model, x_adv) != y
    assert fooled.float().mean() > 0.5
    # Every run queries an unfooled example once to start and once a step; the clean pass counts once.
    every_query_of_the_unfooled = len(y) + restarts * (steps + 1) * int((~fooled).sum())
    spent_on_the_fooled = sum(rows) - every_query_of_the_unfooled
    assert spent_on_the_fooled >= 0
    assert spent_on_the_fooled < 0.2 * steps * int(fooled.sum())  # each stopped long before its budget
    assert (~fooled).any() and sum(rows) < 0.5 * restarts * len(y) * steps  # half what querying all would cost
    # The second run starts on what the first left unfooled (at most its last batch), not on everything.
    assert len(rows) == 1 + restarts * (steps + 1) and rows[-(steps + 1)] <= rows[-(steps + 2)] < len(y)
