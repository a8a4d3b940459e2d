"""Attacks at ImageNet size on this CPU (issue 31): a ResNet-50 (random weights, built here: nothing is
downloaded) at 224×224×3 with 1,000 classes, channels-last, in one run:

- PGD-10 on ``--n`` images and APGD-CE-100 on ``--apgd-n`` images, advlab in fp32 and in bf16 autocast
  against torchattacks' PGD and APGD (CE, one restart) in fp32, on the same images, in batches of the size
  advlab picks from the free memory (:func:`advlab.memory.fitting_batch`; ``--batch N`` to fix it);
  seconds per image, and every perturbation checked in its ε-ball;
- memory against the number of images: ``advlab attack`` (PGD-10, bf16) run as a user runs it, on
  ``--memory-n`` synthetic 256×256 photos each (``--data image:``, ``--preprocess imagenet``), this file's
  ``resnet50`` as the ``--model-from`` factory; each command's own peak resident memory (``wait4``).

    .venv/bin/python benchmarks/bench_imagenet_size.py --n 32 --apgd-n 8 --memory-n 4,16,64 \
        --out benchmarks/results/imagenet-size-detail.json

The random network predicts nearly one class for every input, so "fooled" stays near 0: this measures
speed and memory, not robustness. torchattacks comes from ``benchmarks/setup.sh`` (installed with
--no-deps); without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import advlab.attacks as A  # noqa: E402
from advlab.memory import fitting_batch  # noqa: E402


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


def run_advlab(model, x, y, *, attack, eps, batch, precision):
    start, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        generator = torch.Generator().manual_seed(i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if attack == "pgd":
                adv = A.pgd(model, xb, yb, eps=eps, alpha=eps / 4, steps=10, generator=generator)
            else:
                adv = A.apgd_ce(model, xb, yb, eps=eps, steps=100, generator=generator, early_stop=True)
        out.append(adv.float())
    return time.perf_counter() - start, torch.cat(out)


def run_torchattacks(model, x, y, *, attack, eps, batch):
    import torchattacks

    if attack == "pgd":
        adversary = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)
    else:
        adversary = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)
    start, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        out.append(adversary(x[i : i + batch], y[i : i + batch]))
    return time.perf_counter() - start, torch.cat(out)


def speed_rows(model, x, y, *, eps: float, batch: int, apgd_n: int) -> list[dict]:
    rows = []
    for attack, title, n in (("pgd", "PGD-10", len(x)), ("apgd", "APGD-CE-100", apgd_n)):
        if n == 0:
            continue
        xs, ys, common = x[:n], y[:n], dict(attack=attack, eps=eps, batch=batch)
        for name, call in (
            (f"advlab {title} fp32", lambda: run_advlab(model, xs, ys, precision="fp32", **common)),
            (f"advlab {title} bf16", lambda: run_advlab(model, xs, ys, precision="bf16", **common)),
            (f"torchattacks {title} fp32", lambda: run_torchattacks(model, xs, ys, **common)),
        ):
            try:
                seconds, adv = call()
            except ImportError as err:
                print(f"{name}: skipped ({err})")
                continue
            with torch.no_grad():
                fooled = float((model(adv).argmax(1) != ys).float().mean())
            assert (adv - xs).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
            row = {"attack": name, "images": n, "batch": batch, "seconds": seconds, "seconds_per_image": seconds / n}
            rows.append({**row, "fooled": fooled})
            print(f"{name}: {seconds / n:.2f} s per image over {n}, {100 * fooled:.1f}% fooled")
    return rows


def batch_rows(model, x, y, *, eps: float, sizes: list[int]) -> list[dict]:
    """advlab's PGD-10 in fp32 on the same images at each batch size: which one a CPU runs fastest."""
    rows = []
    for size in sizes:
        seconds, _ = run_advlab(model, x, y, attack="pgd", eps=eps, batch=size, precision="fp32")
        rows.append({"batch": size, "images": len(x), "seconds_per_image": seconds / len(x)})
        print(f"advlab PGD-10 fp32, batch {size}: {seconds / len(x):.2f} s per image", flush=True)
    return rows


def memory_rows(counts: list[int], eps: float) -> list[dict]:
    """``advlab attack`` on ``count`` photos, for each count: its peak resident memory and wall time."""
    import numpy as np
    from PIL import Image

    advlab = str(Path(sys.executable).with_name("advlab"))
    rows, rng = [], np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(counts)):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(f"{tmp}/photo-{i:04d}.png")
        for count in counts:
            files = ",".join(f"{tmp}/photo-{i:04d}.png" for i in range(count))
            command = [advlab, "attack", "--model-from", f"{Path(__file__).resolve()}:resnet50",
                       "--normalize", "imagenet", "--preprocess", "imagenet", "--data", f"image:{files}",
                       "--n", str(count), "--attack", "pgd10", "--eps", str(eps), "--precision", "bf16",
                       "--out", f"{tmp}/out-{count}", "--quiet"]  # fmt: skip
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - start
            if status != 0:
                raise SystemExit(f"advlab attack on {count} photos failed:\n{output}")
            rows.append({"images": count, "peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds})
            print(f"advlab attack, {count} photos: peak {usage.ru_maxrss / 1024:.0f} MiB, {seconds:.1f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images for PGD-10")
    parser.add_argument("--apgd-n", type=int, default=8, help="images for APGD-CE-100 (0: skip)")
    parser.add_argument("--memory-n", default="4,16,64", help="photo counts for advlab attack's memory ('': skip)")
    parser.add_argument("--batch", type=int, default=None, help="default: advlab's pick from the free memory")
    parser.add_argument("--sweep", default="", help="batch sizes to time PGD-10 fp32 at, e.g. 4,8,16,32 ('': none)")
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet50().eval().to(memory_format=torch.channels_last)
    x = torch.rand(args.n, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    batch = args.batch or fitting_batch(model, x[:1], "cpu", ceiling=256)
    print(f"batch {batch} ({'given' if args.batch else 'from the free memory'})")
    with torch.no_grad():
        y = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, args.n, batch)])
    rows = speed_rows(model, x, y, eps=args.eps, batch=batch, apgd_n=min(args.apgd_n, args.n))
    sweep = batch_rows(model, x, y, eps=args.eps, sizes=[int(b) for b in args.sweep.split(",") if b])
    counts = [int(c) for c in args.memory_n.split(",") if c]
    memory = memory_rows(counts, args.eps) if counts else []
    if args.out:
        result = {"args": vars(args), "batch": batch, "results": rows, "batch_sweep": sweep}
        result["advlab_attack_memory"] = memory
        C.write_json(args.out, {**result, "peak_rss_mib": _peak_mib()})


if __name__ == "__main__":
    main()
