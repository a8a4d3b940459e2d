"""Why clipping fast FGSM's random start to the image collapses MNIST at ε = 0.3: what the start does to
the training perturbation, measured on MNIST and Fashion-MNIST.

Wong et al.'s fast FGSM draws δ ~ U(−ε, ε), takes the gradient at x + δ and steps α = 1.25ε; their MNIST
code takes that gradient at x + δ as drawn, their CIFAR-10 code clips x + δ to [0, 1] first. On a pixel at 0
(MNIST's background) the clipped start is max(δ, 0), and one step of α = 1.25ε > ε then lands at exactly ε or
exactly 0 whatever δ was: the training perturbation there is the plain FGSM step from x, the random start is
gone. This script measures it on ``--n`` training images of each data set, with a model trained for one
epoch of Wong et al.'s FGSM (their network, their start), for both starts: the share of pixels at 0 (where
the clip acts), the share of the perturbation's coordinates that equal FGSM-from-x's (same model, no random
start), the share strictly between 0 and ε in size (what the random start leaves random), and how much of
the start's energy ‖δ‖² the clip keeps.

    ADVLAB_DATA=~/.cache/advlab-bench .venv/bin/python benchmarks/bench_clip_start.py \\
        --out benchmarks/results/clip-start.json
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def fgsm_point(model, x, y, *, eps: float, alpha: float, start: torch.Tensor | None, clip_start: bool):
    """The training perturbation of fast FGSM from ``start`` (None: from x), as advlab's loop makes it."""
    point = x.clone() if start is None else (x + start).clamp(0, 1) if clip_start else x + start
    point.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(point), y, reduction="sum"), point)
    step = point.detach() + alpha * grad.sign()
    return torch.minimum(torch.maximum(step, x - eps), x + eps).clamp(0, 1) - x


def measure(dataset: str, *, n: int, eps: float, seed: int) -> dict:
    import tempfile

    from advlab.data import load_dataset
    from advlab.runs import load_checkpoint
    from advlab.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # One epoch of Wong et al.'s recipe (their network, schedule and unclipped start) on this data set.
        config = TrainConfig(
            dataset=dataset,
            method="fgsm",
            eps=eps,
            model="wong_mnist",
            optimizer="adam",
            lr=0.005,
            schedule="onecycle",
            epochs=10,
            batch_size=100,
            clip_start=False,
            eps_warmup_epochs=0,
            co_patience=10**6,
            seed=seed,
        )
        train(config, Path(tmp) / "run", progress=False, stop_after_epochs=1)
        model, _ = load_checkpoint(Path(tmp) / "run" / "model.safetensors")
    model.eval()
    x, y = load_dataset(dataset, "train", val_size=1000, download=False).subset(n).tensors()
    alpha = 1.25 * eps
    g = torch.Generator().manual_seed(seed)
    start = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    plain = fgsm_point(model, x, y, eps=eps, alpha=alpha, start=None, clip_start=True)
    result = {
        "dataset": dataset,
        "n": n,
        "eps": eps,
        "alpha": alpha,
        "pixels_at_0": float((x == 0).float().mean()),
        "pixels_at_1": float((x == 1).float().mean()),
    }
    kept = ((x + start).clamp(0, 1) - x).square().sum() / start.square().sum()
    result["start_energy_kept_by_clip"] = float(kept)
    for clip in (False, True):
        delta = fgsm_point(model, x, y, eps=eps, alpha=alpha, start=start, clip_start=clip)
        size = delta.abs()
        key = "clipped" if clip else "unclipped"
        result[key] = {
            "equal_to_fgsm_from_x": float((delta - plain).abs().le(1e-6).float().mean()),
            "equal_to_fgsm_from_x_on_zero_pixels": float((delta - plain).abs().le(1e-6)[x == 0].float().mean()),
            "strictly_inside": float(((size > 1e-6) & (size < eps - 1e-6)).float().mean()),
            "mean_abs": float(size.mean()),
        }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/clip-start.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = C.started_at()["commit"]
    results = []
    for dataset in ("mnist", "fashion-mnist"):
        r = measure(dataset, n=args.n, eps=args.eps, seed=args.seed)
        results.append(r)
        print(
            f"{dataset}: pixels at 0 {100 * r['pixels_at_0']:.1f}%, start energy kept by the clip "
            f"{100 * r['start_energy_kept_by_clip']:.1f}%"
        )
        for key in ("unclipped", "clipped"):
            v = r[key]
            print(
                f"  {key:9s}: equal to FGSM from x {100 * v['equal_to_fgsm_from_x']:.1f}% (on pixels at 0: "
                f"{100 * v['equal_to_fgsm_from_x_on_zero_pixels']:.1f}%), strictly inside (0, ε) "
                f"{100 * v['strictly_inside']:.1f}%, mean |δ| {v['mean_abs']:.4f}"
            )
    C.write_json(args.out, dict(started_at_commit=started, args=vars(args), results=results))


if __name__ == "__main__":
    main()
