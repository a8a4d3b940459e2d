"""Square Attack alone, advlab's against the reference AutoAttack's, on the same images in the same batches.

The standard suite's time on a small network is mostly Square (issue 30: on the Fashion-MNIST IBP model
advlab's Square took 76 s where the reference's took 45 s). This times both on the first N test images the
model classifies correctly, 5,000 queries, batches of ``--batch`` (advlab's evaluation batch is 256), each
adversarial batch judged again here by one fp32 forward pass and checked in its ε-ball.

    .venv/bin/python benchmarks/bench_square.py --checkpoint runs/quick/models/ibp/model.safetensors \\
        --n 500 --eps 0.1 --out benchmarks/results/square-ibp.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from advlab.attacks import square  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402


def _robust(model, x, y, adv, eps: float) -> float:
    assert (adv - x).abs().amax() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def time_advlab(model, x, y, eps: float, batch: int, seed: int) -> tuple[float, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    start, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        out.append(square(model, x[i : i + batch], y[i : i + batch], eps=eps, steps=5000, generator=generator))
    return time.perf_counter() - start, torch.cat(out)


def time_reference(model, x, y, eps: float, batch: int, seed: int) -> tuple[float, torch.Tensor]:
    from autoattack.square import SquareAttack

    attack = SquareAttack(model, p_init=0.8, n_queries=5000, eps=eps, norm="Linf", n_restarts=1, seed=seed,
                          verbose=False, device="cpu", resc_schedule=False)  # fmt: skip
    start, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        out.append(attack.perturb(x[i : i + batch], y[i : i + batch]))
    return time.perf_counter() - start, torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=500, help="first N test images (those classified correctly are attacked)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="advlab,reference")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, record = load_checkpoint(args.checkpoint, device="cpu")
    model.eval()
    x, y = load_dataset(record["dataset"], "test", download=False, progress=False).subset(args.n).tensors()
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right], y[right]
    rows = {}
    for part, run in (("advlab", time_advlab), ("reference", time_reference)):
        if part not in args.parts.split(","):
            continue
        seconds, adv = run(model, x, y, args.eps, args.batch, args.seed)
        rows[part] = {"seconds": seconds, "robust_accuracy_of_correct": _robust(model, x, y, adv, args.eps)}
        print(part, rows[part], flush=True)
    if "advlab" in rows and "reference" in rows:
        rows["time_ratio"] = rows["advlab"]["seconds"] / rows["reference"]["seconds"]
    if args.out:
        C.write_json(args.out, {"args": vars(args), "attacked": len(y), "results": rows})


if __name__ == "__main__":
    main()
