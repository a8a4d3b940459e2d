"""What every gradient attack shares (advlab.attacks.loop): the gradient at a point, the rule that keeps each
example's strongest result, the targets of a targeted attack, and early exit's batch shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import (
    Strongest,
    apgd_ce,
    bucket_size,
    likely_wrong_classes,
    objective_and_gradient,
    pad_to_bucket,
    pgd,
)
from advlab.attacks.loop import cross_entropy

# --- the gradient at a point -----------------------------------------------------------------------------------


def _confident_linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logit margin 20.8 at x: p(wrong) ≈ 9e-10, an input gradient of ≈ 9e-9, which fp16 cannot hold."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 5.0, 5.0, 5.0], [-5.0, -5.0, -5.0, -5.0]]))
        model.bias.zero_()
    return model, torch.full((1, 4), 0.52), torch.tensor([0])


def test_fp16_scale_is_applied_and_removed():
    """Under fp16 autocast the gradient neither underflows (the scale) nor comes back 1024 times too large
    (the scale removed): it is float32's up to fp16 rounding."""
    model, x, y = _confident_linear()
    exact = objective_and_gradient(model, x, y, cross_entropy)
    with torch.autocast("cpu", dtype=torch.float16):
        half = objective_and_gradient(model, x, y, cross_entropy)
    assert exact.grad.abs().min() > 0
    assert torch.allclose(half.grad, exact.grad, rtol=0.05, atol=0)
    assert half.logits.dtype == torch.float16  # the logits as the model gives them under autocast


def test_without_gradient_the_passes_are_averaged_all_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()  # dropout on: each pass a new draw
    x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
    torch.manual_seed(1)
    mean = objective_and_gradient(model, x, y, cross_entropy, eot=4, need_grad=False)
    torch.manual_seed(1)
    with torch.no_grad():
        passes = [model(x) for _ in range(4)]
    assert mean.grad is None
    assert torch.allclose(mean.logits, sum(passes) / 4)
    assert torch.allclose(mean.value, sum(cross_entropy(p, y) for p in passes) / 4)


# --- the strongest result per example --------------------------------------------------------------------------


def _kept() -> Strongest:
    return Strongest(
        x=torch.zeros(5, 2),
        success=torch.tensor([False, False, True, True, False]),
        value=torch.ones(5),
    )


def test_strongest_keeps_a_success_first_then_the_higher_objective():
    kept = _kept()
    rows = torch.tensor([0, 1, 2, 3])  # example 4 has no candidate
    candidate = torch.arange(1.0, 5.0)[:, None].expand(4, 2)
    success = torch.tensor([True, False, False, True])
    value = torch.tensor([0.0, 2.0, 5.0, 3.0])
    taken = kept.keep(rows, candidate, success, value)
    # 0: a success beats a failure, whatever its objective; 1: failures both, the higher objective;
    # 2: a failure never replaces a success, whatever its objective; 3: successes both, the higher objective.
    assert taken.tolist() == [True, True, False, True]
    assert kept.x[:, 0].tolist() == [1.0, 2.0, 0.0, 4.0, 0.0]
    assert kept.success.tolist() == [True, False, True, True, False]
    assert kept.value.tolist() == [0.0, 2.0, 1.0, 3.0, 1.0]


def test_strongest_ties_keep_the_earlier_and_first_success_freezes():
    kept = _kept()
    rows = torch.tensor([1, 3])
    taken = kept.keep(
        rows, torch.full((2, 2), 7.0), torch.tensor([False, True]), torch.tensor([1.0, 9.0]), first_success=True
    )
    assert taken.tolist() == [False, False]  # 1: an equal objective is no gain; 3: frozen at its success
    assert kept.x.abs().sum() == 0


def test_every_attack_keeps_its_strongest_by_the_one_rule(monkeypatch):
    """PGD's restarts, APGD's iterates and APGD's runs all go through Strongest.keep."""
    calls = []
    original = Strongest.keep

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("first_success", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Strongest, "keep", counted)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct, and ε too small to fool any: every run runs on every example
    pgd(model, x, y, eps=1e-3, steps=2, restarts=3)
    assert len(calls) == 2  # one per further restart
    calls.clear()
    apgd_ce(model, x, y, eps=1e-3, steps=3, restarts=2, early_stop=True)
    assert calls.count(True) == 2 * 4 and calls.count(False) == 2  # each iterate x^(0..3) of 2 runs; each run


# --- targets ---------------------------------------------------------------------------------------------------


def test_likely_wrong_classes_by_the_clean_logits_most_likely_first():
    logits = torch.tensor([[0.1, 3.0, 2.0, 5.0], [4.0, -1.0, 0.0, 1.0]])
    labels = torch.tensor([3, 2])
    # Example 0 (label 3): 1 (3.0), 2 (2.0), 0 (0.1). Example 1 (label 2): 0 (4.0), 3 (1.0), 1 (−1.0).
    assert [t.tolist() for t in likely_wrong_classes(logits, labels, 2)] == [[1, 0], [2, 3]]
    every = likely_wrong_classes(logits, labels)
    assert [t.tolist() for t in every] == [[1, 0], [2, 3], [0, 1]]
    assert [t.tolist() for t in likely_wrong_classes(logits, labels, 10)] == [t.tolist() for t in every]
    assert all(t.dtype == torch.long and t.is_contiguous() for t in every)


def test_likely_wrong_classes_never_names_the_label():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 10, generator=g), torch.randint(0, 10, (50,), generator=g)
    logits[torch.arange(50), labels] += 100  # the label most likely by far
    targets = torch.stack(likely_wrong_classes(logits, labels), dim=1)
    assert (targets != labels[:, None]).all()
    others = torch.stack([torch.arange(10)[torch.arange(10) != c] for c in labels])
    assert torch.equal(targets.sort(dim=1).values, others)  # each wrong class once


# --- early exit's batch shapes ---------------------------------------------------------------------------------


def _pad_reference(mask: torch.Tensor) -> torch.Tensor:
    """The padding as evaluate.py wrote it: the True rows, then the first False ones up to the bucket."""
    chosen = mask.nonzero().squeeze(1)
    size = bucket_size(chosen.numel(), mask.numel())
    extra = (~mask).nonzero().squeeze(1)[: size - chosen.numel()]
    return torch.cat([chosen, extra]).sort().values


@pytest.mark.parametrize("n, left", [(100, 3), (100, 0), (100, 40), (50, 40), (50, 50), (33, 32), (7, 1)])
def test_pad_to_bucket_keeps_every_unfinished_row_and_pads_in_order(n, left):
    g = torch.Generator().manual_seed(n + left)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:left]] = True
    index = pad_to_bucket(mask)
    assert index.numel() == bucket_size(left, n)
    assert mask[index].sum() == left  # every unfinished row is in
    assert torch.equal(index, index.sort().values)  # in their old order
    assert torch.equal(index, _pad_reference(mask))
    assert torch.equal(index, pad_to_bucket(mask, left))
