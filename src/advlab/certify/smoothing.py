"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918): an L2 certificate per
example that holds with probability at least 1 − α.

The smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I), is robust within the L2 radius
σ·Φ⁻¹(p_A) around x whenever p_A, the probability of its top class, exceeds ½. These functions follow the
paper's algorithms:

* :func:`predict` (PREDICT): the top two classes' counts over n noise samples, and abstention unless the
  two-sided binomial test says the top one wins at level α;
* :func:`certify` (CERTIFY): the class guessed from n₀ selection samples, then a one-sided Clopper–Pearson
  lower bound p̲ on its probability from n fresh samples at level α; abstain if p̲ < ½, else the radius
  σ·Φ⁻¹(p̲).

Noise samples go through the model in batches of ``batch_size``, so the cost is the model's forward passes
and little else (``benchmarks/bench_certify.py`` measures the throughput against plain forward passes).
A base classifier trained on noise (``advlab train --method gaussian --sigma 0.25``) is what makes the
radii large.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from advlab.certify.registry import Option, register_certifier
from advlab.errors import AdvlabError

ABSTAIN = -1


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """The one-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion: the p with
    P(Bin(trials, p) ≥ successes) = α, i.e. the α quantile of Beta(successes, trials − successes + 1)."""
    from scipy.stats import beta

    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def check_settings(sigma: float, n: int, n0: int, alpha: float) -> None:
    """σ > 0, α in (0, ½), n ≥ n₀ ≥ 1, and n large enough that some radius can be certified at α."""
    if not sigma > 0:
        raise AdvlabError(f"--sigma must be above 0, got {sigma}")
    if not 0 < alpha < 0.5:
        raise AdvlabError(f"--alpha must be in (0, 0.5), got {alpha}")
    if n0 < 1 or n < n0:
        raise AdvlabError(f"--n ({n}) must be at least --n0 ({n0}), and --n0 at least 1")
    if lower_confidence_bound(n, n, alpha) <= 0.5:
        raise AdvlabError(
            f"with --n {n} no radius can be certified at --alpha {alpha}: even {n} of {n} noise "
            "samples in one class bound its probability only up to ½; raise --n"
        )


Noise = torch.Generator | np.random.Generator


def noise_generator(device: torch.device | str, seed: int) -> Noise:
    """Where the Gaussian noise comes from: on the CPU numpy's generator (a seeded PCG64, ziggurat normals),
    on an accelerator torch's, on that device. Certification's rate against the bare forward passes', and
    why a batch of one image repeated is the wrong baseline: BENCHMARKS.md (benchmarks/results/smoothing.json)."""
    if torch.device(device).type == "cpu":
        return np.random.default_rng(seed)
    return torch.Generator(device=device).manual_seed(seed)


def _noise(generator: Noise, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.standard_normal(shape, dtype=np.float32)).to(like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def sample_counts(
    model: nn.Module, x: torch.Tensor, sigma: float, num: int, classes: int, *, batch_size: int, generator: Noise
) -> torch.Tensor:
    """How often each class wins over ``num`` noisy copies of the one image ``x`` (C, H, W): (classes,).
    ``generator``: a torch generator on ``x``'s device, or (CPU) numpy's (:func:`noise_generator`)."""
    counts = torch.zeros(classes, dtype=torch.long, device=x.device)
    remaining = num
    with torch.inference_mode():
        while remaining > 0:
            size = min(batch_size, remaining)
            noisy = _noise(generator, (size, *x.shape), x).mul_(sigma).add_(x)
            predictions = model(noisy).argmax(1)
            counts += torch.bincount(predictions, minlength=classes)
            remaining -= size
    return counts.cpu()


def predict(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n: int,
    alpha: float,
    *,
    classes: int,
    batch_size: int = 1000,
    generator: Noise,
) -> int:
    """PREDICT: the smoothed classifier's class for one image, or :data:`ABSTAIN` when the top two classes
    are not told apart by a two-sided binomial test at level ``alpha``."""
    from scipy.stats import binomtest

    counts = sample_counts(model, x, sigma, n, classes, batch_size=batch_size, generator=generator)
    top2 = counts.topk(2)
    n_a, n_b = int(top2.values[0]), int(top2.values[1])
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top2.indices[0])


def certify(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    *,
    classes: int,
    batch_size: int = 1000,
    generator: Noise,
) -> tuple[int, float]:
    """CERTIFY for one image: ``(class, radius)``, or ``(ABSTAIN, 0.0)`` when p̲ < ½."""
    from scipy.stats import norm

    selection = sample_counts(model, x, sigma, n0, classes, batch_size=batch_size, generator=generator)
    guess = int(selection.argmax())
    estimation = sample_counts(model, x, sigma, n, classes, batch_size=batch_size, generator=generator)
    p_lower = lower_confidence_bound(int(estimation[guess]), n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return guess, float(sigma * norm.ppf(p_lower))


@dataclass
class SmoothingResult:
    """CERTIFY over a set of images: per example the class (or abstention) and the radius."""

    sigma: float
    n: int
    n0: int
    alpha: float
    labels: list[int]
    predictions: list[int]
    radii: list[float]
    seconds: float
    radii_grid: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])

    def certified_accuracy(self, radius: float) -> float:
        """The fraction certified correct at L2 radius ``radius`` (strictly inside the certified ball at 0)."""
        hits = [
            p == y and (r >= radius if radius > 0 else True)
            for p, y, r in zip(self.predictions, self.labels, self.radii)
        ]
        return sum(hits) / max(len(hits), 1)

    def to_dict(self) -> dict:
        correct = [p == y for p, y in zip(self.predictions, self.labels)]
        count = max(len(self.labels), 1)
        return {
            "method": "smoothing",
            "sigma": self.sigma,
            "n": self.n,
            "n0": self.n0,
            "alpha": self.alpha,
            "images": len(self.labels),
            "certified_accuracy": {f"{r:g}": self.certified_accuracy(r) for r in self.radii_grid},
            "average_certified_radius": sum(r for r, c in zip(self.radii, correct) if c) / count,
            "abstention_rate": sum(p == ABSTAIN for p in self.predictions) / count,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds / count,
            "noise_samples_per_second": (self.n + self.n0) * len(self.labels) / max(self.seconds, 1e-9),
            "predictions": self.predictions,
            "radii": self.radii,
        }


def certify_dataset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    n: int,
    n0: int,
    alpha: float,
    classes: int,
    batch_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> SmoothingResult:
    """CERTIFY on every image of ``x`` (labels ``y``), the model in eval mode throughout."""
    from tqdm.auto import tqdm

    check_settings(sigma, n, n0, alpha)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = noise_generator(device, seed)
    training = model.training
    model.eval()
    predictions, radii = [], []
    start = time.perf_counter()
    try:
        for image in tqdm(x, disable=not progress, desc="certify", unit="img", leave=False, dynamic_ncols=True):
            label, radius = certify(
                model,
                image.to(device),
                sigma,
                n0,
                n,
                alpha,
                classes=classes,
                batch_size=batch_size,
                generator=generator,
            )
            predictions.append(label)
            radii.append(radius)
    finally:
        model.train(training)
    return SmoothingResult(sigma, n, n0, alpha, [int(v) for v in y], predictions, radii, time.perf_counter() - start)


def _smoothing(model, x, y, *, options, classes, batch_size, seed, device, progress, record) -> dict:
    """``advlab certify --method smoothing``: CERTIFY on every image; σ by default the model's own training
    noise (``--method gaussian``)."""
    sigma = options["sigma"] if options["sigma"] is not None else record.get("smoothing_sigma")
    if sigma is None:  # only a model trained with noise (--method gaussian) records the σ it suits
        raise AdvlabError("this model was not trained with --method gaussian; pass --sigma for its smoothing")
    check_settings(sigma, options["n"], options["n0"], options["alpha"])
    result = certify_dataset(
        model,
        x,
        y,
        sigma=sigma,
        n=options["n"],
        n0=options["n0"],
        alpha=options["alpha"],
        classes=classes,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    return result.to_dict()


def _describe(result: dict) -> str:
    radii = ", ".join(f"{100 * v:.1f}% at r = {r}" for r, v in result["certified_accuracy"].items())
    return (
        f"smoothing, sigma = {result['sigma']:g}, n = {result['n']}, alpha = {result['alpha']:g}, "
        f"{result['images']} images: certified accuracy {radii}\naverage certified radius "
        f"{result['average_certified_radius']:.3f}, abstained on {100 * result['abstention_rate']:.1f}%, "
        f"{result['seconds_per_image']:.2f} s per image"
    )


register_certifier(
    "smoothing",
    summary="randomized smoothing: an L2 radius per image, Cohen et al. 2019",
    options=(
        Option(
            "sigma", float, None, "the noise level (default: the σ the model was trained with by --method gaussian)"
        ),
        Option("n", int, 10_000, "noise samples per image for the bound (default 10000)"),
        Option("n0", int, 100, "noise samples that pick the class (default 100)"),
        Option(
            "alpha", float, 0.001, "the certificate fails with probability at most alpha, in (0, 0.5) (default 0.001)"
        ),
    ),
    describe=_describe,
    default_images=500,  # CERTIFY costs n forward passes per image
    # Before any work: σ (when given), α, n and n0 as CERTIFY needs them (σ = 1 stands in when left to the model).
    validate=lambda s: check_settings(1.0 if s["sigma"] is None else s["sigma"], s["n"], s["n0"], s["alpha"]),
)(_smoothing)


__all__ = [
    "ABSTAIN",
    "SmoothingResult",
    "certify",
    "certify_dataset",
    "check_settings",
    "lower_confidence_bound",
    "noise_generator",
    "predict",
    "sample_counts",
]
