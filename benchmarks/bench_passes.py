"""How fast one pass of a model runs here: the floor under every attack's time (issue 30's "a third of AutoAttack").

An attack suite is a count of passes: APGD, FAB and PGD one forward and backward per step, Square one
forward per query, and advlab's standard suite makes the same count as the reference AutoAttack (the same
attacks, steps, targets and queries, each example leaving once it is fooled). What is left to win is the
speed of each pass. This times, on a batch of the first test images of the model's data set, the forward pass
(no autograd) and the forward pass with the input gradient, in fp32 with the images in NCHW (PyTorch's
default, what the reference runs) and channels-last (advlab's default on CPU), and under bf16 autocast;
and, for a network whose layers advlab knows, the multiply-adds of one image, so that the fp32 forward
pass can be read as GFLOP/s against the CPU's peak.

    .venv/bin/python benchmarks/bench_passes.py --checkpoint runs/quick/models/pgd/model.safetensors \\
        --out benchmarks/results/passes-pgd.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from advlab.data import load_dataset  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402


def multiply_adds(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one image through the model's Conv2d and Linear layers (the rest is noise)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="an advlab checkpoint (model.safetensors)")
    p.add_argument("--batch", type=int, default=256, help="images per pass (advlab's evaluation batch)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, record = load_checkpoint(args.checkpoint, device="cpu")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = load_dataset(record["dataset"], "test", download=False, progress=False).subset(args.batch).tensors()[0]
    macs = multiply_adds(model, x)

    def forward(layout, precision):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(layout)

        return run

    def with_gradient(layout, precision):
        def run():
            point = layout.detach().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                torch.autograd.grad(model(point).float().sum(), point)

        return run

    rows = []
    for layout_name, memory_format in (("nchw", torch.contiguous_format), ("channels-last", torch.channels_last)):
        model.to(memory_format=memory_format)
        layout = x.contiguous(memory_format=memory_format)
        for precision in ("fp32", "bf16"):
            for pass_name, make in (("forward", forward), ("forward+input gradient", with_gradient)):
                seconds = C.median_seconds(make(layout, precision), args.repeats, warmup=2)  # oneDNN warms up
                row = {
                    "layout": layout_name,
                    "precision": precision,
                    "pass": pass_name,
                    "ms_per_batch": 1e3 * seconds,
                    "images_per_s": args.batch / seconds,
                }
                if pass_name == "forward":
                    row["gflop_per_s"] = 2 * macs * args.batch / seconds / 1e9
                rows.append(row)
                print(row, flush=True)
    print(
        C.table(
            ["layout", "precision", "pass", "ms / batch", "images/s", "GFLOP/s"],
            [
                [
                    r["layout"],
                    r["precision"],
                    r["pass"],
                    f"{r['ms_per_batch']:.1f}",
                    f"{r['images_per_s']:.0f}",
                    f"{r['gflop_per_s']:.0f}" if "gflop_per_s" in r else "",
                ]
                for r in rows
            ],
            align_left=3,
        )
    )
    C.write_json(
        args.out,
        {
            "args": vars(args),
            "machine": C.machine_info(),
            "multiply_adds_per_image": macs,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
