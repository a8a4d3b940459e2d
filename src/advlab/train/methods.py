"""Training methods: each turns a batch into a loss, and registers itself by name for ``--method``.

``standard``; ``fgsm`` (fast AT, Wong et al. 2020); ``nfgsm`` (de Jorge et al. 2022); ``gradalign``
(Andriushchenko & Flammarion 2020); ``pgd`` (Madry et al. 2018); ``trades`` (Zhang et al. 2019); ``mart``
(Wang et al. 2020); ``free`` (Shafahi et al. 2019); ``gradreg`` (input-gradient regularization, Ross &
Doshi-Velez 2018); ``ibp`` (certified training with interval bounds, Gowal et al. 2018); ``crown-ibp`` (with
CROWN-IBP's tighter bounds early on, Zhang et al. 2020); ``gaussian`` (noise
training for randomized smoothing, Cohen et al. 2019). The training loop
(:mod:`advlab.train.loop`) never asks which one it runs, and every inner maximization goes through the
attacks' one gradient loop, :func:`advlab.attacks.perturb`, except N-FGSM's one unprojected step. A new method is a
subclass of :class:`Method`
with a ``name``, decorated with :func:`register_method`; its hyperparameters live in ``TrainConfig``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks.gradient import madry_alpha
from advlab.attacks.loop import cross_entropy, perturb
from advlab.attacks.threat import project
from advlab.certify import mixed_margin_bounds, worst_case_logits
from advlab.distributed import unwrap

if TYPE_CHECKING:
    from advlab.train.config import TrainConfig


class BatchOutput(NamedTuple):
    loss: torch.Tensor  # scalar training loss of the batch
    clean_logits: torch.Tensor | None  # logits on x, when the method computes them anyway
    adv_logits: torch.Tensor | None  # logits on the adversarial (or perturbed) batch, when it has one


Step = Callable[[torch.Tensor], None]  # backward + optimizer step for one loss


def _kl_from_clean(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(x) ‖ p(x')), with ``logits`` = f(x') and ``clean_probs`` = p(x)."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="none").sum(dim=1)


METHODS: dict[str, type[Method]] = {}


def register_method(method: type[Method]) -> type[Method]:
    """Class decorator: make a training method available by its ``name`` (``--method NAME``, configs)."""
    if not method.name or method.name in METHODS:
        raise ValueError(f"training method {method.name!r} has no name or is registered twice")
    METHODS[method.name] = method
    return method


class Method:
    """One training method: the loss of a batch. Subclasses set the class fields and write ``loss``.

    All inner attacks run in the model's training mode, as in Wong et al.'s and Rice et al.'s code:
    the attack then sees the very function the loss is taken on (BatchNorm batch statistics included),
    and no mode switch costs time. For small_cnn, madry_cnn and linear the two modes are the same
    function; only preact_resnet18 (BatchNorm) differs, where the attack's passes also feed its running
    statistics, as they do in those reference implementations.
    """

    name = ""
    adversarial = True  # trains against an attack: the catastrophic-overfitting guard applies
    replays_batches = False  # each batch takes several optimizer steps (free AT): it cannot fall back or be one
    bounds: str | None = None  # certified training: the bounds it trains (and is checked) with, "ibp" or "crown-ibp"
    # Settings the method cannot work without, for a data set no recipe names it on (IBP's ε ramp, say).
    base_settings: dict = {}
    robust = True  # aims at robustness: the best epoch is the one with the highest validation PGD accuracy

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return madry_alpha(eps, steps)

    @property
    def optimizer_steps_per_batch(self) -> int:
        return 1

    def loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        alpha: float,
        generator: torch.Generator,
    ) -> BatchOutput:
        raise NotImplementedError

    def train_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        alpha: float,
        generator: torch.Generator,
        step: Step,
    ) -> BatchOutput:
        out = self.loss(model, x, y, eps=eps, alpha=alpha, generator=generator)
        step(out.loss)
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that must survive a resume (free AT's carried perturbation)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


@register_method
class Standard(Method):
    """Empirical risk minimization: cross-entropy on clean images."""

    name = "standard"
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
    adversarial = False

    def loss(self, model, x, y, *, eps, alpha, generator):
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        per_example = cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(per_example.sum(), x, create_graph=True)
        penalty = grad.flatten(1).square().sum(dim=1).mean()
        return BatchOutput(per_example.mean() + self.config.lam * penalty, logits, None)


@register_method
class IntervalBoundTraining(Method):
    """Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
    Models" (arXiv:1810.12715): κ·CE(clean logits) + (1 − κ)·CE(worst-case logits from interval bounds,
    :func:`advlab.certify.worst_case_logits`). The loop's schedule gives the clean warm-up (``clean_epochs``
    at ε = 0) and the linear ε ramp (``eps_warmup_epochs``); κ falls from 1 to ``kappa_end`` with the ramp,
    and the bounds are taken at ``train_eps`` (≥ eps) scaled the same way. No attack inside, so the
    catastrophic-overfitting guard does not apply; the training accuracy it reports is the verified one."""

    name = "ibp"
    adversarial = False
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
        kappa = 1.0 - (1.0 - self.config.kappa_end) * progress
        # The bounds walk the network's layers: the one inside DDP's wrapper (its gradients still sync).
        worst = self.worst_case(
            unwrap(model), x, y, eps * (self.config.train_eps or self.config.eps) / self.config.eps, progress
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
    bounds = "crown-ibp"

    def worst_case(self, model, x, y, eps, progress):
        return -mixed_margin_bounds(model, x, y, eps, crown_weight=1.0 - progress)


@register_method
class GaussianNoiseTraining(Method):
    """Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing"
    (arXiv:1902.02918): cross-entropy on x + N(0, σ²) noise (no clipping, as in their code), the base
    classifier that :mod:`advlab.certify.smoothing` smooths. Not adversarial training: no attack inside."""

    name = "gaussian"
    adversarial = False

    def loss(self, model, x, y, *, eps, alpha, generator):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x + self.config.sigma * noise)
        return BatchOutput(F.cross_entropy(logits, y), logits, None)


@register_method
class PGDTraining(Method):
    """Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (arXiv:1706.06083):
    cross-entropy on PGD examples (random start in the ε-ball, ``steps`` signed-gradient steps)."""

    name = "pgd"

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

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return eps  # the paper's α = ε (its code: --alpha equal to --epsilon on CIFAR-10)

    def perturbation(self, model, x, y, *, eps, alpha, generator) -> torch.Tensor:
        k = self.config.nfgsm_noise
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
    λ = ``grad_align_lambda``. The regularizer costs a double backpropagation: about 3× a FGSM epoch."""

    name = "gradalign"

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return 1.25 * eps  # the authors' fgsm_alpha default, clipped to the ε-ball

    def loss(self, model, x, y, *, eps, alpha, generator):
        start = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
        x_adv = project(x + alpha * grad.sign(), x, eps, "linf")
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        if self.config.grad_align_lambda > 0 and eps > 0:
            loss = loss + self.config.grad_align_lambda * gradient_alignment(
                model, x, y, grad, eps=eps, generator=generator
            )
        return BatchOutput(loss, None, logits)


@register_method
class TRADES(Method):
    """Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy"
    (arXiv:1901.08573): CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximizing the KL term by PGD from
    x + 0.001·N(0, I). The gradient flows through both f(x) and f(x') of the outer KL, as in the paper."""

    name = "trades"

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
        return BatchOutput(F.cross_entropy(logits, y) + self.config.beta * robust, logits, adv_logits)


@register_method
class MART(Method):
    """Wang et al. 2020 (ICLR), "Improving Adversarial Robustness Requires Revisiting Misclassified
    Examples": BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − p_y(x)), x' from PGD on cross-entropy.
    BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x')) boosts the margin against the strongest wrong class;
    the weight 1 − p_y(x) puts the KL term on examples the model gets wrong (gradient flows through it)."""

    name = "mart"

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
        return BatchOutput(bce + self.config.beta * (kl * (1.0000001 - true_prob)).mean(), logits, adv_logits)


@register_method
class FreeAT(Method):
    """Shafahi et al. 2019, "Adversarial Training for Free!" (arXiv:1904.12843): each minibatch is
    replayed m times; one backward pass gives the weights' gradient (an optimizer step) and the input's
    (an FGSM step of α = ε on the perturbation δ, clipped to the ε-ball). δ is carried over replays,
    minibatches and epochs; the input x + δ is clipped to [0, 1], as in the authors' code. Metrics are
    those of each batch's last replay."""

    name = "free"
    replays_batches = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.delta: torch.Tensor | None = None  # (batch_size, C, H, W), created at the first batch

    @staticmethod
    def default_alpha(eps: float, steps: int) -> float:
        return eps  # the paper's FGSM step: the whole ε

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.config.replays

    def train_batch(self, model, x, y, *, eps, alpha, generator, step):
        if self.delta is not None and self.delta.device != x.device:
            self.delta = self.delta.to(x.device)  # restored from a state file: it arrives on the CPU
        if self.delta is None:
            self.delta = torch.zeros((self.config.batch_size, *x.shape[1:]), device=x.device, dtype=x.dtype)
        n = x.shape[0]  # a short last batch uses the first n rows of δ
        for _ in range(self.config.replays):
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
