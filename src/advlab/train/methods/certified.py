"""Certified training: interval bound propagation and CROWN-IBP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advlab.certify import mixed_margin_bounds, worst_case_logits
from advlab.distributed import unwrap
from advlab.train.methods.base import BatchOutput, Method, Setting, register_method

KAPPA_END = Setting(
    "kappa_end",
    float,
    0.5,
    "Gowal et al.'s 0.5",
    "certified training: the clean loss's weight κ falls from 1 to this as ε ramps up",
    low=0.0,
    high=1.0,
)
TRAIN_EPS = Setting(
    "train_eps",
    float,
    None,
    "None: the recipe's (MNIST: 0.2 for ε ≤ 0.2, else 0.4; CIFAR-10: "
    "1.1 ε, as Gowal et al. and Zhang et al.), else ε itself",
    "certified training: the ε its bounds train at, at least --eps",
    high=1.0,
    at_least_eps=True,
)


@register_method
class IntervalBoundTraining(Method):
    """Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
    Models" (arXiv:1810.12715): κ·CE(clean logits) + (1 − κ)·CE(worst-case logits from interval bounds,
    :func:`advlab.certify.worst_case_logits`). The loop's schedule gives the clean warm-up (``clean_epochs``
    at ε = 0) and the linear ε ramp (``eps_warmup_epochs``); κ falls from 1 to ``kappa_end`` with the ramp,
    and the bounds are taken at ``train_eps`` (≥ eps) scaled the same way. No attack inside, so the
    catastrophic-overfitting guard does not apply; the training accuracy it reports is the verified one."""

    name = "ibp"
    family = "certified"
    summary = "certified training with interval bounds"
    adversarial = False
    settings = (KAPPA_END, TRAIN_EPS)
    bounds = "ibp"
    # Without a warm-up and a ramp IBP training starts at the full ε and stays at chance (one class for every
    # image on MNIST at ε = 0.1, measured): Gowal et al.'s schedule, at most half of a short run.
    base_settings = {"clean_epochs": 1.0, "eps_warmup_epochs": 10.0}

    def loss(self, model, x, y, *, eps, alpha, generator):
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        if eps <= 0 or self.config.eps <= 0:
            return BatchOutput(clean, logits, None)
        progress = min(1.0, eps / self.config.eps)
        kappa = 1.0 - (1.0 - self.config.option("kappa_end")) * progress
        # The bounds walk the network's layers: the one inside DDP's wrapper (its gradients still sync).
        worst = self.worst_case(
            unwrap(model), x, y, eps * (self.config.option("train_eps") or self.config.eps) / self.config.eps, progress
        )
        return BatchOutput(kappa * clean + (1.0 - kappa) * F.cross_entropy(worst, y), logits, worst)

    def worst_case(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, progress: float
    ) -> torch.Tensor:
        return worst_case_logits(model, x, y, eps)


@register_method
class CrownIBPTraining(IntervalBoundTraining):
    """Zhang et al. 2020, "Towards Stable and Efficient Training of Verifiably Robust Neural Networks" (ICLR,
    arXiv:1906.06316): IBP training whose worst-case logits come from β·(CROWN-IBP bounds) + (1 − β)·(IBP
    bounds), β falling linearly from 1 to 0 as ε ramps up (their final β = 0), so that the tighter bound shapes
    the early, fragile phase and the cheaper IBP bound the end. Networks without pooling layers."""

    name = "crown-ibp"
    summary = "certified training with CROWN-IBP's bounds early on"
    bounds = "crown-ibp"

    def worst_case(self, model, x, y, eps, progress):
        return -mixed_margin_bounds(model, x, y, eps, crown_weight=1.0 - progress)
