"""Invariants of every attack: ε-ball, [0, 1], no NaN, determinism, FGSM ≡ one-step PGD, no side effects."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab.attacks import ATTACKS, AttackSpec, fgsm, parse_attack, pgd, random_noise, verify_adversarial
from advlab.errors import AdvlabError
from advlab.models import LinearClassifier, Normalize, create_model, list_models


def _norms(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = delta.flatten(1)
    return flat.abs().amax(1), flat.norm(dim=1)


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_registry_attacks_stay_in_ball_and_range(name, norm, tiny_cnn, batch):
    if norm not in ATTACKS[name].norms:
        with pytest.raises(AdvlabError, match="works in L2 only"):  # one clear line instead
            parse_attack(f"{name}-{norm}")
        return
    x, y = batch
    eps = 0.1 if norm == "linf" else 1.0
    spec = AttackSpec(name, norm=norm)
    x_adv = spec(tiny_cnn, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    verify_adversarial(x, x_adv, eps, norm)
    assert parse_attack(f"{name}-{norm}") == spec  # every registered attack can be named
    hyper = spec.hyperparameters(eps)
    assert (hyper["attack"], hyper["norm"], hyper["eps"]) == (name, norm, eps)
    noise = _loss(
        tiny_cnn, random_noise(tiny_cnn, x, y, eps=eps, norm=norm, generator=torch.Generator().manual_seed(1)), y
    )
    if name == "noise":  # the noise baseline itself: as large as ε allows
        assert (
            (x_adv - x).flatten(1).norm(dim=1).gt(0.5 * eps).all()
            if norm == "l2"
            else (x_adv - x).abs().amax(dim=(1, 2, 3)).gt(0.5 * eps).all()
        )
    elif ATTACKS[name].black_box or ATTACKS[name].minimum_norm:
        # It stops at the first wrong prediction (a minimum-norm attack: just past the boundary, where the
        # loss has barely moved): it fools what noise cannot.
        with torch.no_grad():
            wrong = [int((tiny_cnn(v).argmax(1) != y).sum()) for v in (x, x_adv)]
        assert wrong[0] < len(y) and wrong[1] == len(y)  # every image fooled (fails for a stub returning x)
    else:  # a gradient attack raises the loss far beyond noise of the same size (fails for a stub)
        assert _loss(tiny_cnn, x_adv, y) > max(noise, _loss(tiny_cnn, x, y)) + 0.05


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    channels=st.sampled_from([1, 3]),
    size=st.sampled_from([4, 7]),
    norm=st.sampled_from(["linf", "l2"]),
    eps_fraction=st.floats(0.0, 1.0),
    steps=st.integers(1, 6),
    restarts=st.integers(1, 3),
    targeted=st.booleans(),
    early_stop=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pgd_properties(n, channels, size, norm, eps_fraction, steps, restarts, targeted, early_stop, seed):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(Normalize((0.5,) * channels, (0.3,) * channels), LinearClassifier(channels, 4, size, size))
    # Include pixels at the edges 0 and 1, where clipping matters most.
    x = torch.rand(n, channels, size, size, generator=generator).round(decimals=1)
    y = torch.randint(0, 4, (n,), generator=generator)
    max_eps = 1.0 if norm == "linf" else math.sqrt(channels * size * size)
    eps = eps_fraction * max_eps
    x_adv = pgd(
        model,
        x,
        y,
        eps=eps,
        steps=steps,
        norm=norm,
        restarts=restarts,
        targeted=targeted,
        early_stop=early_stop,
        generator=generator,
    )
    assert not torch.isnan(x_adv).any()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    linf, l2 = _norms(x_adv - x)
    size_of = linf if norm == "linf" else l2
    assert (size_of <= eps * (1 + 1e-5) + 1e-6).all()


def test_fgsm_equals_one_step_pgd(tiny_cnn, batch):
    x, y = batch
    for norm, eps in [("linf", 0.05), ("l2", 0.5)]:
        a = fgsm(tiny_cnn, x, y, eps=eps, norm=norm)
        b = pgd(tiny_cnn, x, y, eps=eps, alpha=eps, steps=1, random_start=False, norm=norm)
        assert torch.equal(a, b)


def test_fgsm_matches_analytic_answer_on_linear_model():
    torch.manual_seed(0)
    model = LinearClassifier(1, 3, 5, 5)
    x = torch.rand(6, 1, 5, 5) * 0.6 + 0.2  # away from the edges so clipping does not bite
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    # For a linear model the input gradient of CE is W^T (softmax(Wx+b) − onehot(y)).
    with torch.no_grad():
        probs = model(x).softmax(1)
        grad = (probs - nn.functional.one_hot(y, 3).float()) @ model.linear.weight
        expected = (x + eps * grad.view_as(x).sign()).clamp(0, 1)
    assert torch.allclose(fgsm(model, x, y, eps=eps), expected, atol=1e-7)
    # L2 fast gradient method: a step of length ε along the normalized gradient.
    with torch.no_grad():
        expected_l2 = x + 0.5 * (grad / grad.norm(dim=1, keepdim=True)).view_as(x)
    assert torch.allclose(fgsm(model, x, y, eps=0.5, norm="l2"), expected_l2, atol=1e-6)


def test_same_seed_gives_identical_examples(tiny_cnn, batch):
    x, y = batch
    runs = [
        pgd(tiny_cnn, x, y, eps=0.1, steps=3, restarts=2, generator=torch.Generator().manual_seed(7)) for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(3)
    a = pgd(tiny_cnn, x, y, eps=0.1, steps=3)
    torch.manual_seed(3)
    assert torch.equal(a, pgd(tiny_cnn, x, y, eps=0.1, steps=3))


class _Dropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5), nn.BatchNorm1d(10))

    def forward(self, x):
        return self.inner(x)


def test_attack_restores_modes_and_leaves_grads_alone(batch):
    x, y = batch
    model = _Dropout()
    model.train()
    model.inner[2].eval()  # a mixed state must come back exactly
    model(x).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    running = model.inner[3].running_mean.clone()
    for attack in (fgsm, pgd, random_noise):
        attack(model, x, y, eps=0.1)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, grads[name]) for name, p in model.named_parameters())
    assert torch.equal(model.inner[3].running_mean, running)  # eval mode: BatchNorm statistics untouched


def test_channels_last_changes_layout_only(tiny_cnn, batch):
    """pgd() runs CPU convolutions in channels-last on a copy; the caller's weights are never re-pointed."""
    x, y = batch
    before = {name: (p, p.data_ptr(), p.stride(), p.clone()) for name, p in tiny_cnn.named_parameters()}
    conv = tiny_cnn[1].features[3].weight  # 8 → 16 channels: its NCHW and NHWC strides differ
    strides_seen = []
    hook = tiny_cnn.register_forward_pre_hook(lambda module, args: strides_seen.append(conv.stride()))
    fast = pgd(tiny_cnn, x, y, eps=0.1, alpha=0.025, steps=5, random_start=False)
    hook.remove()
    slow = pgd(tiny_cnn, x, y, eps=0.1, alpha=0.025, steps=5, random_start=False, channels_last=False)
    assert strides_seen and set(strides_seen) == {before["1.features.3.weight"][2]}  # never swapped, even mid-attack
    assert fast.is_contiguous()
    # sign(∇) may flip where a gradient entry is ~0 under a different summation order: allow a few pixels
    assert 0 < (fast - x).abs().max() and (fast - slow).abs().gt(1e-5).float().mean() < 0.01
    for name, p in tiny_cnn.named_parameters():
        obj, ptr, stride, value = before[name]
        assert p is obj and p.data_ptr() == ptr and p.stride() == stride and torch.equal(p, value)


def test_early_exit_keeps_each_examples_first_success(tiny_cnn):
    """Early exit compacts the batch in buckets; every example must still get its own first successful
    iterate (or its last one), exactly as if it were attacked alone."""
    from advlab.attacks import perturb

    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(100, 1, 28, 28, generator=generator), torch.randint(0, 10, (100,), generator=generator)
    tiny_cnn.eval()

    def ce(z, t):
        return nn.functional.cross_entropy(z, t, reduction="none")

    def fooled(z, t):
        return z.argmax(1) != t

    run = dict(eps=0.2, alpha=0.02, steps=15, random_start=False, objective=ce, success=fooled)
    together = perturb(tiny_cnn, x, y, **run)
    alone = torch.cat([perturb(tiny_cnn, x[i : i + 1], y[i : i + 1], **run) for i in range(len(y))])
    with torch.no_grad():
        first_step = fooled(tiny_cnn(x), y)
    assert 0 < int(first_step.sum()) < 90  # some leave at once, most later: the buckets are exercised
    close = (together - alone).abs().flatten(1).amax(1) < 1e-5
    assert close.float().mean() >= 0.97  # a rare sign flip of a ~0 gradient entry between batch sizes


def test_attack_works_under_no_grad_and_without_param_grads(tiny_cnn, batch):
    x, y = batch
    for p in tiny_cnn.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        x_adv = pgd(tiny_cnn, x, y, eps=0.1, steps=2, random_start=False)  # from x: only gradients move it
    assert _loss(tiny_cnn, x_adv, y) > _loss(tiny_cnn, x, y) + 0.05


def test_restarts_draw_new_starts_and_keep_the_best():
    """With α = 0 each start is a pure random draw, so more restarts must fool more examples: a stub that
    ignores restarts (or reuses one start) fools exactly as many as one start does."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():  # logit 0: the mean pixel; logit 1: 0.5. Random starts move the mean by ~0.03
        model[1].weight.copy_(torch.stack([torch.full((16,), 1 / 16), torch.zeros(16)]))
        model[1].bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.rand(400, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    with torch.no_grad():
        y = model(x).argmax(1)  # every example starts correct
    fooled = []
    for restarts in (1, 8):
        x_adv = pgd(
            model,
            x,
            y,
            eps=0.2,
            alpha=0.0,
            steps=1,
            restarts=restarts,
            early_stop=True,
            generator=torch.Generator().manual_seed(3),
        )
        with torch.no_grad():
            fooled.append(int((model(x_adv).argmax(1) != y).sum()))
    assert 0 < fooled[0] < fooled[1]


@pytest.mark.parametrize("early_stop", [True, False])
def test_restarts_never_lose_a_success(tiny_cnn, batch, early_stop):
    """Every example the first start fools stays fooled, whether later restarts skip it or not."""
    x, _ = batch
    with torch.no_grad():
        y = tiny_cnn(x).argmax(1)  # every example starts correct: whatever is fooled, the attack fooled
    kwargs = dict(eps=0.05, steps=2, early_stop=early_stop)
    one = pgd(tiny_cnn, x, y, generator=torch.Generator().manual_seed(0), **kwargs)
    many = pgd(tiny_cnn, x, y, restarts=4, generator=torch.Generator().manual_seed(0), **kwargs)
    with torch.no_grad():
        fooled_one = tiny_cnn(one).argmax(1) != y
        fooled_many = tiny_cnn(many).argmax(1) != y
    assert fooled_one.any() and not (fooled_one & ~fooled_many).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=-0.1), "eps"),
        (dict(eps=1.5), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(eps=0.1, steps=0), "steps"),
        (dict(eps=0.1, restarts=0), "restarts"),
        (dict(eps=0.1, alpha=-1.0), "alpha"),
        (dict(eps=0.1, norm="l1"), "norm"),
        (dict(eps=0.1, loss="hinge"), "loss"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message, tiny_cnn, batch):
    x, y = batch
    with pytest.raises(AdvlabError, match=message):
        pgd(tiny_cnn, x, y, **kwargs)


def test_normalized_inputs_are_refused(tiny_cnn, batch):
    x, y = batch
    with pytest.raises(AdvlabError, match=r"\[0, 1\]"):
        fgsm(tiny_cnn, (x - 0.5) / 0.25, y, eps=0.1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fgsm", AttackSpec("fgsm")),
        ("pgd", AttackSpec("pgd", steps=20)),
        ("PGD50x10", AttackSpec("pgd", steps=50, restarts=10)),
        ("pgd-7-l2", AttackSpec("pgd", steps=7, norm="l2")),
        ("noise", AttackSpec("noise")),
        ("pgd20-margin", AttackSpec("pgd", loss="margin")),
        ("fgsm-l2-cw", AttackSpec("fgsm", norm="l2", loss="margin")),
        ("pgd10-targeted", AttackSpec("pgd", steps=10, targeted=True)),
        ("pgd10-targeted3-l2", AttackSpec("pgd", steps=10, targeted=True, targets=3, norm="l2")),
    ],
)
def test_parse_attack(text, expected):
    assert parse_attack(text) == expected


@pytest.mark.parametrize("text", ["carlini", "fgsm10", "pgd-x", "pgd20-l1", "", "pgd-l2-linf", "pgd-hinge"])
def test_parse_attack_rejects_unknown(text):
    with pytest.raises(AdvlabError, match="attack"):
        parse_attack(text)


@pytest.mark.parametrize(
    "spec, label, alpha",
    [
        (AttackSpec("fgsm"), "FGSM L∞", 0.1),
        (AttackSpec("noise", norm="l2"), "noise L2", None),
        (AttackSpec("pgd"), "PGD-20 L∞", 0.0125),
        (AttackSpec("pgd", steps=50, restarts=10), "PGD-50×10 L∞", 0.005),
        (AttackSpec("pgd", steps=10, step_ratio=0.1, loss="margin"), "PGD-10 L∞ margin", 0.01),
        (AttackSpec("pgd", targeted=True, targets=3), "PGD-20 L∞ top-3 targeted", 0.0125),
    ],
)
def test_labels_and_step_sizes_come_from_the_registry(spec, label, alpha):
    assert spec.label == label
    assert spec.alpha(0.1) == pytest.approx(alpha) if alpha is not None else spec.alpha(0.1) is None
    assert spec.hyperparameters(0.1)["loss"] == spec.loss


def test_options_an_attack_does_not_take_are_refused():
    with pytest.raises(AdvlabError, match="fgsm takes no restarts"):
        AttackSpec("fgsm", restarts=5)
    with pytest.raises(AdvlabError, match="noise takes no steps"):
        AttackSpec("noise", steps=10)
    for name in ("noise-targeted", "noise-margin"):  # noise neither aims nor ascends a loss
        with pytest.raises(AdvlabError, match="noise takes no"):
            parse_attack(name)
    for bad in (dict(steps=True), dict(restarts=2.0), dict(random_start="no")):  # a TOML typo, not a count
        with pytest.raises(AdvlabError, match=next(iter(bad))):
            AttackSpec("pgd", **bad)


def test_margin_loss_is_reachable_and_used(trained_model, fashion_test):
    """The CW margin loss is the one the attack ascends: its iterates differ from cross-entropy's, it raises
    the margin from clean and breaks images (an attack that returned x would do neither)."""
    from advlab.attacks.loop import margin_loss

    x, y = fashion_test.subset(100).tensors()
    ce = parse_attack("pgd5")(trained_model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    margin = parse_attack("pgd5-margin")(trained_model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(ce, margin)
    verify_adversarial(x, margin, 0.1, "linf")
    with torch.no_grad():
        before, after = margin_loss(trained_model(x), y), margin_loss(trained_model(margin), y)
        fooled = (trained_model(margin).argmax(1) != y).float().mean().item()
    assert (after > before).float().mean().item() >= 0.95 and fooled >= 0.5, fooled


@pytest.mark.parametrize("name", list_models())
def test_every_model_is_attackable(name):
    torch.manual_seed(0)
    channels, size = (3, 32) if name == "preact_resnet18" else (1, 28)
    model = create_model(name, in_channels=channels, num_classes=10)
    x = torch.rand(2, channels, size, size)
    x_adv = pgd(model, x, torch.tensor([0, 1]), eps=0.03, steps=2)
    verify_adversarial(x, x_adv, 0.03, "linf")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(AdvlabError, match="unknown model"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", ["small_cnn", "madry_cnn"])
def test_pool_before_relu_is_the_usual_conv_relu_pool(name):
    # The CNNs pool before their ReLU for speed; it must be the textbook network, values and input gradients.
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10)
    features = model[1].features
    swapped = [features[0], features[2], features[1], features[3], features[5], features[4]]
    assert [type(m) for m in swapped] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d] * 2
    usual = nn.Sequential(model[0], nn.Sequential(*swapped), model[1].classifier)
    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    out2 = usual(x2)
    (grad2,) = torch.autograd.grad(out2.logsumexp(1).sum(), x2)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(grad, grad2)
