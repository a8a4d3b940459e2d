"""Attacks at ImageNet size on this CPU: PGD-10 on a ResNet-50 (random weights, built here: nothing is
downloaded) at 224×224×3 with 1,000 classes, advlab in fp32 and in bf16 autocast (channels-last) against
torchattacks' PGD in fp32, on the same images, in one run; seconds per image and the peak memory.

    .venv/bin/python benchmarks/bench_imagenet_size.py --n 32 --batch 8 --out benchmarks/results/imagenet-size.json

torchattacks comes from ``benchmarks/setup.sh`` (installed with --no-deps); without it its row is skipped.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import advlab.attacks as A  # noqa: E402


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet50(classes: int = 1000) -> nn.Module:
    """ResNet-50's shape (He et al. 2016: bottlenecks 3, 4, 6, 3; 25.6 million parameters)."""
    layers, cin = [], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes),
    )  # fmt: skip


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_advlab(model, x, y, *, eps, alpha, batch, precision):
    start, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            adv = A.pgd(model, xb, yb, eps=eps, alpha=alpha, steps=10, generator=torch.Generator().manual_seed(i))
        out.append(adv.float())
    return time.perf_counter() - start, torch.cat(out)


def run_torchattacks(model, x, y, *, eps, alpha, batch):
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True)
    start, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        out.append(attack(x[i : i + batch], y[i : i + batch]))
    return time.perf_counter() - start, torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet50().eval().to(memory_format=torch.channels_last)
    x = torch.rand(args.n, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = torch.cat([model(x[i : i + args.batch]).argmax(1) for i in range(0, args.n, args.batch)])
    alpha = args.eps / 4
    rows = []
    common = dict(eps=args.eps, alpha=alpha, batch=args.batch)
    for name, call in (
        ("advlab PGD-10 fp32", lambda: run_advlab(model, x, y, precision="fp32", **common)),
        ("advlab PGD-10 bf16", lambda: run_advlab(model, x, y, precision="bf16", **common)),
        ("torchattacks PGD-10 fp32", lambda: run_torchattacks(model, x, y, **common)),
    ):
        try:
            seconds, adv = call()
        except ImportError as err:
            print(f"{name}: skipped ({err})")
            continue
        with torch.no_grad():
            fooled = float((model(adv).argmax(1) != y).float().mean())
        assert (adv - x).abs().max() <= args.eps + 1e-6
        rows.append({"attack": name, "seconds": seconds, "seconds_per_image": seconds / args.n, "fooled": fooled})
        print(f"{name}: {seconds / args.n:.2f} s per image, {100 * fooled:.1f}% fooled, peak {_peak_mib():.0f} MiB")
    if args.out:
        C.write_json(args.out, {"args": vars(args), "results": rows, "peak_rss_mib": _peak_mib()})


if __name__ == "__main__":
    main()
