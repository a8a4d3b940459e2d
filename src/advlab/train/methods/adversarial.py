"""Adversarial training: fast FGSM, N-FGSM, GradAlign, PGD, TRADES, MART and free AT."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks.loop import cross_entropy, perturb
from advlab.attacks.threat import project
from advlab.train.methods.base import BatchOutput, Method, Setting, register_method

BETA = Setting(
    "beta",
    float,
    6.0,
    "TRADES' 1/λ = 6, the paper's robust setting; MART uses 5-6 too",
    "TRADES' and MART's trade-off weight β",
    low=0.0,
)


def _kl_from_clean(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(x) ‖ p(x')), with ``logits`` = f(x') and ``clean_probs`` = p(x)."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="none").sum(dim=1)


@register_method
class PGDTraining(Method):
    """Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (arXiv:1706.06083):
    cross-entropy on PGD examples (random start in the ε-ball, ``steps`` signed-gradient steps)."""

    name = "pgd"
    family = "multi-step"
    summary = "PGD-k AT, Madry et al."

    def attack_steps(self) -> int:
        return self.config.steps

    def loss(self, model, x, y, *, eps, alpha, generator):
        x_adv = perturb(
            model,
            x,
            y,
            eps=eps,
            alpha=alpha,
            steps=self.attack_steps(),
            random_start=self.config.random_start,
            clip_start=self.config.clip_start,
            objective=cross_entropy,
            generator=generator,
        )
        logits = model(x_adv)
        return BatchOutput(F.cross_entropy(logits, y), None, logits)


@register_method
class FastFGSM(PGDTraining):
    """Wong, Rice & Kolter 2020, "Fast is better than free: Revisiting adversarial training"
    (arXiv:2001.03994): one FGSM step of α = 1.25ε from a uniform random start in the ε-ball. Their MNIST
    code takes the gradient at the start unclipped (``model(X + delta)``) and their CIFAR-10 code clips it
    to the image first: ``clip_start``, which the recipes set as each code does."""

    name = "fgsm"
    family = "single-step"
    summary = "fast AT: FGSM from a random start"

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return 1.25 * eps  # Wong et al.'s choice; α ≥ 2ε invites catastrophic overfitting

    def attack_steps(self) -> int:
        return 1


@register_method
class NFGSM(Method):
    """de Jorge et al. 2022, "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training"
    (arXiv:2202.01181): noise η from the kε cube (k = ``nfgsm_noise``, 2 by default), one signed-gradient
    step of α = ε from x + η, and **no projection** back to the ε-ball: the training perturbation reaches
    (k + 1)ε. Images stay in [0, 1]. The cost of fast FGSM; the larger, noisier perturbation is what keeps
    it from overfitting catastrophically. Not through ``perturb``, whose every step is projected."""

    name = "nfgsm"
    family = "single-step"
    summary = "N-FGSM"
    settings = (
        Setting(
            "nfgsm_noise",
            float,
            2.0,
            "de Jorge et al.: k = 2 up to ε = 8/255 on CIFAR-10",
            "N-FGSM's noise multiplier k: noise from the kε cube",
            low=0.0,
            above=True,
        ),
    )

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return eps  # the paper's α = ε (its code: --alpha equal to --epsilon on CIFAR-10)

    def perturbation(self, model, x, y, *, eps, alpha, generator) -> torch.Tensor:
        k = self.config.option("nfgsm_noise")
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * (k * eps)
        start = (x + noise).clamp(0.0, 1.0) if self.config.clip_start else x + noise  # the authors' code clips
        start.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
        return (start.detach() + alpha * grad.sign()).clamp(0.0, 1.0)

    def loss(self, model, x, y, *, eps, alpha, generator):
        logits = model(self.perturbation(model, x, y, eps=eps, alpha=alpha, generator=generator))
        return BatchOutput(F.cross_entropy(logits, y), None, logits)


def gradient_alignment(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor, *, eps: float, generator: torch.Generator
) -> torch.Tensor:
    """GradAlign's regularizer without λ: 1 − mean cos(∇ℓ(x), ∇ℓ(x + η)), η uniform in the ε-ball.

    ``grad`` is the input gradient at the FGSM point (no graph, as in the authors' code); the second one is
    taken with ``create_graph=True`` so that the weights' gradient flows through it: double
    backpropagation. Examples where either gradient is zero are left out of the mean."""
    noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    noisy = (x + noise).requires_grad_(True)  # the authors' code does not clamp this point to [0, 1]
    (noisy_grad,) = torch.autograd.grad(F.cross_entropy(model(noisy), y), noisy, create_graph=True)
    g1, g2 = grad.flatten(1), noisy_grad.flatten(1)
    n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
    keep = (n1 > 0) & (n2 > 0)
    if not bool(keep.any()):
        return noisy_grad.sum() * 0.0
    cos = (g1[keep] / n1[keep, None] * (g2[keep] / n2[keep, None])).sum(dim=1)
    return 1.0 - cos.mean()


@register_method
class GradAlign(Method):
    """Andriushchenko & Flammarion 2020, "Understanding and Improving Fast Adversarial Training"
    (arXiv:2007.02617): FGSM from x (α = 1.25ε, clipped to the ε-ball, so a step of ε: the authors'
    runs) plus λ·(1 − cos) between the input gradients at x and at a random point of the ε-ball.
    λ = ``grad_align_lambda``. The regularizer costs a double backpropagation (its epoch time against
    FGSM's: BENCHMARKS.md)."""

    name = "gradalign"
    family = "single-step"
    summary = "GradAlign"
    settings = (
        Setting(
            "grad_align_lambda",
            float,
            None,
            "None: the recipe's (CIFAR-10: 0.02·10^(ε·255/8))",
            "GradAlign's regularizer weight λ",
            low=0.0,
        ),
    )

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return 1.25 * eps  # the authors' fgsm_alpha default, clipped to the ε-ball

    def loss(self, model, x, y, *, eps, alpha, generator):
        start = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
        x_adv = project(x + alpha * grad.sign(), x, eps, "linf")
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        if self.config.option("grad_align_lambda") > 0 and eps > 0:
            loss = loss + self.config.option("grad_align_lambda") * gradient_alignment(
                model, x, y, grad, eps=eps, generator=generator
            )
        return BatchOutput(loss, None, logits)


@register_method
class TRADES(Method):
    """Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy"
    (arXiv:1901.08573): CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximizing the KL term by PGD from
    x + 0.001·N(0, I). The gradient flows through both f(x) and f(x') of the outer KL, as in the paper."""

    name = "trades"
    family = "multi-step"
    summary = "TRADES"
    settings = (BETA,)

    def loss(self, model, x, y, *, eps, alpha, generator):
        logits = model(x)
        clean_probs = logits.detach().softmax(dim=1)
        # The KL term has zero gradient at x' = x, hence the paper's tiny Gaussian start. `perturb` starts
        # at its centre, so we centre it at that start and project onto the true ball around x at the
        # end: the inner iterates' box is shifted by the 0.001-sized noise, ~1% of ε, nothing more.
        start = x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = perturb(
            model,
            start,
            clean_probs,
            eps=eps,
            alpha=alpha,
            steps=self.config.steps,
            random_start=False,
            objective=_kl_from_clean,
            generator=generator,
        )
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        adv_logits = model(x_adv)
        robust = F.kl_div(F.log_softmax(adv_logits, dim=1), logits.softmax(dim=1), reduction="batchmean")
        return BatchOutput(F.cross_entropy(logits, y) + self.config.option("beta") * robust, logits, adv_logits)


@register_method
class MART(Method):
    """Wang et al. 2020 (ICLR), "Improving Adversarial Robustness Requires Revisiting Misclassified
    Examples": BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − p_y(x)), x' from PGD on cross-entropy.
    BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x')) boosts the margin against the strongest wrong class;
    the weight 1 − p_y(x) puts the KL term on examples the model gets wrong (gradient flows through it)."""

    name = "mart"
    family = "multi-step"
    summary = "MART"
    settings = (BETA,)

    def loss(self, model, x, y, *, eps, alpha, generator):
        x_adv = perturb(
            model,
            x,
            y,
            eps=eps,
            alpha=alpha,
            steps=self.config.steps,
            random_start=self.config.random_start,
            clip_start=self.config.clip_start,
            objective=cross_entropy,
            generator=generator,
        )
        logits, adv_logits = model(x), model(x_adv)
        adv_probs = adv_logits.softmax(dim=1)
        strongest_wrong = adv_probs.scatter(1, y[:, None], 0.0).amax(dim=1)
        # The 1.0001 and 1e-12 keep the log finite, as in the authors' code.
        bce = F.cross_entropy(adv_logits, y) - torch.log(1.0001 - strongest_wrong + 1e-12).mean()
        clean_probs = logits.softmax(dim=1)
        kl = (clean_probs * (torch.log(clean_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(dim=1)
        true_prob = clean_probs.gather(1, y[:, None]).squeeze(1)
        return BatchOutput(bce + self.config.option("beta") * (kl * (1.0000001 - true_prob)).mean(), logits, adv_logits)


@register_method
class FreeAT(Method):
    """Shafahi et al. 2019, "Adversarial Training for Free!" (arXiv:1904.12843): each minibatch is
    replayed m times; one backward pass gives the weights' gradient (an optimizer step) and the input's
    (an FGSM step of α = ε on the perturbation δ, clipped to the ε-ball). δ is carried over replays,
    minibatches and epochs; the input x + δ is clipped to [0, 1], as in the authors' code. Metrics are
    those of each batch's last replay."""

    name = "free"
    family = "single-step"
    summary = "free AT"
    replays_batches = True
    settings = (
        Setting(
            "replays",
            int,
            4,
            "the paper's 4-10; free runs ⌈epochs / m⌉ passes, the same gradient work",
            "free AT's minibatch replays m",
            low=1,
        ),
    )

    @classmethod
    def passes(cls, config) -> int:
        return math.ceil(config.epochs / config.option("replays"))

    def __init__(self, config) -> None:
        super().__init__(config)
        self.delta: torch.Tensor | None = None  # (batch_size, C, H, W), created at the first batch

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return eps  # the paper's FGSM step: the whole ε

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.config.option("replays")

    def train_batch(self, model, x, y, *, eps, alpha, generator, step):
        if self.delta is not None and self.delta.device != x.device:
            self.delta = self.delta.to(x.device)  # restored from a state file: it arrives on the CPU
        if self.delta is None:
            self.delta = torch.zeros((self.config.batch_size, *x.shape[1:]), device=x.device, dtype=x.dtype)
        n = x.shape[0]  # a short last batch uses the first n rows of δ
        for _ in range(self.config.option("replays")):
            delta = self.delta[:n].clone().requires_grad_(True)
            logits = model((x + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(logits, y)
            step(loss)  # fills delta.grad from the same backward pass
            self.delta[:n] = (delta.detach() + alpha * delta.grad.sign()).clamp(-eps, eps)
        return BatchOutput(loss.detach(), None, logits.detach())

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.delta is None else {"delta": self.delta}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.delta = tensors.get("delta")
