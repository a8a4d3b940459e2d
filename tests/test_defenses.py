"""Preprocessing defenses and the adaptive attacks that break them (issue 15): the naive gradient through a
non-differentiable transform is zero and the checks say so; BPDA passes it straight through and the defense
falls to about the undefended model's accuracy."""

from __future__ import annotations

import pytest
import torch

from advlab.attacks import parse_attack, verify_adversarial
from advlab.attacks.adaptive import straight_through
from advlab.defenses import defend, parse_defense
from advlab.defenses.transforms import BitDepth, Jpeg, Median, ResizePad
from advlab.errors import AdvlabError
from advlab.evaluate import evaluate


@pytest.mark.parametrize(
    "text, message",
    [
        ("blur", "unknown defense 'blur'"),
        ("jpeg:quality=0", "quality must be from 1 to 100, got 0"),
        ("jpeg:quality=101", "quality must be from 1 to 100, got 101"),
        ("jpeg:quality=high", "quality must be an integer"),
        ("bits:bits=9", "bits must be from 1 to 8, got 9"),
        ("bits:bits=0", "bits must be from 1 to 8, got 0"),
        ("median:size=4", "size must be odd"),
        ("median:size=0", "size must be at least 1, got 0"),
        ("jpeg:colour=1", "defense jpeg has no parameter colour; it takes: quality"),
        ("jpeg:75", "write its parameters as key=value"),
        ("resize-pad:min_scale=0", "min_scale must be in (0, 1]"),
    ],
)
def test_bad_defenses_are_one_line(text, message):
    with pytest.raises(AdvlabError) as err:
        parse_defense(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_adaptive_options_are_one_line():
    with pytest.raises(AdvlabError, match="eot must be an integer of at least 1"):
        parse_attack("pgd10-eot0")
    with pytest.raises(AdvlabError, match="BPDA approximates a gradient, and square uses none"):
        parse_attack("square100-bpda")


def test_transforms_keep_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    for defense in (BitDepth(3), Jpeg(75), Median(3), ResizePad(0.8)):
        out = defense(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, defense
    assert set((BitDepth(1)(x) * 1).unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(Median(3)(torch.full((1, 1, 5, 5), 0.3)), torch.full((1, 1, 5, 5), 0.3))
    assert (Jpeg(100)(x) - x).abs().max() < 0.05  # near-lossless at quality 100
    assert not torch.equal(ResizePad(0.5)(x), ResizePad(0.5)(x))  # two draws differ
    with pytest.raises(AdvlabError, match="1- or 3-channel images"):
        Jpeg(75)(torch.rand(1, 2, 8, 8))


@pytest.mark.parametrize("text", ["bits:bits=4", "jpeg:quality=75"])
def test_naive_gradient_is_zero_and_bpda_restores_it(tiny_cnn, text):
    model = defend(tiny_cnn.eval(), [parse_defense(text)])
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.count_nonzero(grad) == 0  # what autograd gives through rounding or a codec
    with straight_through(model) as switched:
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert switched == 1 and torch.count_nonzero(grad) > 0
    assert not model[0].straight_through  # switched back


def test_bpda_without_a_defense_is_the_plain_attack(tiny_cnn, batch):
    x, y = batch
    plain = parse_attack("pgd5")(tiny_cnn, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    bpda = parse_attack("pgd5-bpda")(tiny_cnn, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, bpda)
    assert parse_attack("pgd5-bpda").label == "PGD-5 L∞ BPDA"


def test_bpda_breaks_bit_depth_and_jpeg_where_the_naive_attack_cannot(trained_model, fashion_test):
    x, y = fashion_test.subset(200).tensors()
    undefended = evaluate(
        trained_model, (x, y), attacks=[parse_attack("pgd20")], eps=[0.1], progress=False, checks=False
    ).worst_case[0]
    for text in ("bits:bits=4", "jpeg:quality=75"):
        model = defend(trained_model, [parse_defense(text)])
        result = evaluate(
            model, (x, y), attacks=[parse_attack("pgd20"), parse_attack("pgd20-bpda")], eps=[0.1], progress=False
        )
        naive, adaptive = result.robust["PGD-20 L∞"][0], result.robust["PGD-20 L∞ BPDA"][0]
        assert naive >= adaptive + 0.3, (text, naive, adaptive)  # the defense only hid the gradient
        assert adaptive <= undefended + 0.05, (text, adaptive, undefended)
        assert "zero-gradients" in {f["flag"] for f in result.model_warnings}  # and the model checks say so


def test_eot_attacks_a_randomized_defense_within_the_ball_and_beats_the_plain_attack(trained_model, fashion_test):
    """EOT (Athalye et al. 2018) averages the gradient over the defense's draws: within the ball, it must break
    far more than the clean accuracy lets stand, and no less than the same attack without it."""
    x, y = fashion_test.subset(100).tensors()
    model = defend(trained_model, [parse_defense("resize-pad:min_scale=0.8")])
    torch.manual_seed(0)
    x_adv = parse_attack("pgd5-eot4")(model, x[:16], y[:16], eps=0.1, generator=torch.Generator().manual_seed(0))
    verify_adversarial(x[:16], x_adv, 0.1, "linf")
    assert parse_attack("pgd5-bpda-eot4").label == "PGD-5 L∞ EOT-4 BPDA"
    result = evaluate(
        model, (x, y), attacks=[parse_attack("pgd10"), parse_attack("pgd10-eot8")], eps=[0.1], progress=False
    )
    plain, eot = result.robust["PGD-10 L∞"][0], result.robust["PGD-10 L∞ EOT-8"][0]
    assert eot <= result.clean_accuracy - 0.3, (eot, result.clean_accuracy)
    assert eot <= plain + 0.03, (eot, plain)


class _Flaky(torch.nn.Module):
    """A model that, on each pass, gives a wrong answer (the next class's) for a random 30% of the images."""

    def __init__(self, base: torch.nn.Module, rate: float = 0.3) -> None:
        super().__init__()
        self.base, self.rate = base, rate

    def forward(self, x):
        logits = self.base(x)
        flip = torch.rand(x.shape[0], device=x.device) < self.rate
        return torch.where(flip[:, None], logits.roll(1, dims=1), logits)


def test_a_randomized_model_scores_its_expected_accuracy_beside_the_majority_vote(trained_model, fashion_test):
    x, y = fashion_test.subset(200).tensors()
    torch.manual_seed(0)
    steady = evaluate(trained_model, (x, y), attacks=[parse_attack("fgsm")], eps=[0.05], progress=False)
    flaky = evaluate(_Flaky(trained_model), (x, y), attacks=[parse_attack("fgsm")], eps=[0.05], progress=False)
    assert (steady.draws, flaky.draws) == (1, 20) and flaky.to_dict()["verdict_draws"] == 20
    assert steady.majority is None and "majority_vote" not in steady.to_dict()
    # Wrong on 30% of its draws: it scores about 70% of the steady model's accuracy on average (the headline),
    # while the majority of 20 passes keeps ~95% of it (P[Binomial(20, 0.7) > 10] = 0.95).
    assert flaky.clean_accuracy == pytest.approx(0.7 * steady.clean_accuracy, abs=0.04)
    assert flaky.majority["clean_accuracy"] == pytest.approx(0.95 * steady.clean_accuracy, abs=0.04)
    assert flaky.worst_case[0] <= 0.7 * steady.worst_case[0] + 0.04, (flaky.worst_case, steady.worst_case)
    assert flaky.to_dict()["headline"] == "expected accuracy over 20 draws"
    assert "expected accuracy over 20 draws" in flaky.table()
    assert "randomized" in {f["flag"] for f in flaky.model_warnings}


def test_attacks_on_a_randomized_model_let_nothing_go_on_one_lucky_draw(trained_model, fashion_test):
    """One pass of the flaky model calls ~30% of the images wrong at random. An attack told the model is random
    (``draws``) must not skip or stop on that: every image the steady model gets right is attacked."""
    from advlab.attacks import apgd_ce, square
    from advlab.attacks.loop import attack_success, success_rate

    x, y = fashion_test.subset(64).tensors()
    right = trained_model(x).argmax(1) == y
    flaky = _Flaky(trained_model)
    torch.manual_seed(0)
    rate = success_rate(flaky, x, y, attack_success(False), 200)
    assert rate[right].mean().item() == pytest.approx(0.3, abs=0.03)

    def moved(x_adv):
        return (x_adv != x).flatten(1).any(1)[right].float().mean().item()

    # With draws, an image stays as it is only where the search found nothing better (a few, on this noisy
    # objective); judged on one pass, the ~30% that pass calls wrong are never attacked at all.
    g = torch.Generator().manual_seed(0)
    assert moved(square(flaky, x, y, eps=0.05, steps=10, draws=20, generator=g)) >= 0.9
    assert moved(square(flaky, x, y, eps=0.05, steps=10, generator=g)) <= 0.8
    assert moved(apgd_ce(flaky, x, y, eps=0.05, steps=5, early_stop=True, draws=20, generator=g)) >= 0.9
    assert moved(apgd_ce(flaky, x, y, eps=0.05, steps=5, early_stop=True, generator=g)) <= 0.8


def test_a_defended_model_keeps_the_models_mode(tiny_cnn):
    assert not defend(tiny_cnn.eval(), [parse_defense("bits")]).training
    assert defend(tiny_cnn.train(), [parse_defense("bits")]).training
