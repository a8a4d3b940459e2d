"""Wong, Rice & Kolter's MNIST fast-FGSM training loop, written out on its own, beside advlab's.

A reference for the MNIST recipe: the published loop (``MNIST/train_mnist.py`` of "Fast is better than
free", arXiv:2001.03994) restated in a few lines of plain PyTorch, with none of advlab's training code, so
that advlab's ``mnist-wong`` recipe can be told apart from the method itself. Their network (conv16-conv32
of stride 2, fc100), Adam with the learning rate 0 → 0.005 → 0 peaking at 2/5, 10 epochs of batch 100 over
all 60,000 training images, FGSM at ε = 0.3 with α = 0.375 from a uniform start in the ε-ball, the start
clipped to the image or not (``--clip-start``: their code does not). Then PGD-50 with α = 0.01 (their
``evaluate_mnist.py``; ``--restarts``) on the first ``--n`` test images, by advlab's attack.

    .venv/bin/python benchmarks/mnist_setup.py
    ADVLAB_DATA=~/.cache/advlab-bench .venv/bin/python benchmarks/bench_wong_mnist.py --seeds 0 1 2 \\
        --out benchmarks/results/wong-mnist-loop.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from advlab.attacks import pgd  # noqa: E402
from advlab.data import load_dataset  # noqa: E402


def wong_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def train(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    clip_start: bool,
    eps: float = 0.3,
    alpha: float = 0.375,
    epochs: int = 10,
    batch: int = 100,
    lr_max: float = 5e-3,
) -> nn.Module:
    torch.manual_seed(seed)
    model = wong_net()
    opt = torch.optim.Adam(model.parameters(), lr=lr_max)
    steps = len(x) // batch
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(steps):
            t = epoch + (i + 1) / steps
            lr = lr_max * (t / (epochs * 2 // 5) if t <= epochs * 2 // 5 else (epochs - t) / (epochs - epochs * 2 // 5))
            opt.param_groups[0]["lr"] = lr
            index = order[i * batch : (i + 1) * batch]
            xb, yb = x[index], y[index]
            delta = torch.empty_like(xb).uniform_(-eps, eps)
            if clip_start:
                delta = torch.max(torch.min(1 - xb, delta), -xb)
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xb + delta), yb), delta)
            delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
            delta = torch.max(torch.min(1 - xb, delta), -xb)
            loss = F.cross_entropy(model(xb + delta), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clip-start", action="store_true", help="clip the random start to the image (not theirs)")
    p.add_argument("--n", type=int, default=1000, help="test images for PGD-50")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/wong-mnist-loop.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = C.started_at()["commit"]
    train_x, train_y = load_dataset("mnist", "train", val_size=0, download=False).tensors()
    test = load_dataset("mnist", "test", download=False).subset(args.n)
    test_x, test_y = test.tensors()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        model = train(train_x, train_y, seed=seed, clip_start=args.clip_start)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            clean = (model(test_x).argmax(1) == test_y).float().mean().item()
        x_adv = pgd(
            model,
            test_x,
            test_y,
            eps=0.3,
            alpha=0.01,
            steps=50,
            restarts=args.restarts,
            generator=torch.Generator().manual_seed(seed),
        )
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == test_y).float().mean().item()
        rows.append({"seed": seed, "clean": clean, "pgd50": robust, "train_seconds": round(seconds, 1)})
        print(
            f"seed {seed}: clean {100 * clean:.2f}%  PGD-50x{args.restarts} {100 * robust:.2f}%  "
            f"({seconds:.0f} s training)",
            flush=True,
        )
    C.write_json(args.out, dict(machine=C.machine_info(), started_at_commit=started, args=vars(args), results=rows))


if __name__ == "__main__":
    main()
