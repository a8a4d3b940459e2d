"""Training without an attack: standard training, input-gradient regularization, Gaussian noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advlab.attacks.loop import cross_entropy
from advlab.train.methods.base import BatchOutput, Method, Setting, register_method


@register_method
class Standard(Method):
    """Empirical risk minimization: cross-entropy on clean images."""

    name = "standard"
    summary = "cross-entropy on clean images"
    adversarial = False
    robust = False

    def loss(self, model, x, y, *, eps, alpha, generator):
        logits = model(x)
        return BatchOutput(F.cross_entropy(logits, y), logits, None)


@register_method
class GradientRegularization(Method):
    """Ross & Doshi-Velez 2018, "Improving the Adversarial Robustness and Interpretability of Deep Neural
    Networks by Regularizing their Input Gradients" (AAAI, arXiv:1711.09404): cross-entropy plus
    λ·‖∇ₓ CE‖² per example (λ = ``lam``), by double backpropagation. A regularizer, not adversarial training:
    no attack inside, so the catastrophic-overfitting guard does not apply; the per-epoch check still
    measures PGD accuracy, and the best epoch is the most robust one."""

    name = "gradreg"
    summary = "input-gradient regularization"
    adversarial = False
    settings = (
        Setting(
            "lam",
            float,
            1.0,
            "not yet tuned here: a first guess",
            "gradreg's λ on the squared input-gradient norm",
            low=0.0,
        ),
    )

    def loss(self, model, x, y, *, eps, alpha, generator):
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        per_example = cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(per_example.sum(), x, create_graph=True)
        penalty = grad.flatten(1).square().sum(dim=1).mean()
        return BatchOutput(per_example.mean() + self.config.option("lam") * penalty, logits, None)


@register_method
class GaussianNoiseTraining(Method):
    """Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing"
    (arXiv:1902.02918): cross-entropy on x + N(0, σ²) noise (no clipping, as in their code), the base
    classifier that :mod:`advlab.certify.smoothing` smooths. Not adversarial training: no attack inside."""

    name = "gaussian"
    summary = "noise training for randomized smoothing"
    adversarial = False
    settings = (
        Setting(
            "sigma",
            float,
            0.25,
            "Cohen et al. 2019 train at 0.12-1.0",
            "gaussian's noise standard deviation",
            low=0.0,
            above=True,
        ),
    )

    def smoothing_sigma(self) -> float | None:
        return self.config.option("sigma")

    def loss(self, model, x, y, *, eps, alpha, generator):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x + self.config.option("sigma") * noise)
        return BatchOutput(F.cross_entropy(logits, y), logits, None)
