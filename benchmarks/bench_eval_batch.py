"""Evaluation batch size: wall time of advlab.evaluate (PGD-20, ε = 0.1, early exit) at several batch sizes.

On a robust model most examples stay in the loop for every step, so the batch size sets the size of every
convolution; on a standard model early exit shrinks the batches quickly. Batch sizes are interleaved over
the repeats in a rotated order; medians reported. advlab.evaluate.DEFAULT_BATCH was chosen from this.

    .venv/bin/python benchmarks/bench_eval_batch.py --run runs/q-fgsm8 --n 1000
    .venv/bin/python benchmarks/bench_eval_batch.py --n 2000          # the cached standard model
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    p = C.base_parser(
        __doc__.splitlines()[0], n=1000, repeats=3, batch_size=0, out="benchmarks/results/eval-batch.json"
    )
    p.add_argument("--run", help="a training run folder to evaluate (default: the cached standard model)")
    p.add_argument("--sizes", default="500,256,128,100", help="comma list of batch sizes")
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = 250, 1
    torch.set_num_threads(args.threads)
    from advlab.attacks import parse_attack
    from advlab.data import load_dataset
    from advlab.evaluate import evaluate
    from advlab.runs import load_checkpoint

    model = load_checkpoint(Path(args.run) / "model.safetensors")[0] if args.run else C.standard_model(args.model)
    test = load_dataset("fashion-mnist", "test", progress=False).subset(args.n)
    attacks = [parse_attack("pgd20")]
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[int, list[float]] = {b: [] for b in sizes}
    robust: dict[int, float] = {}
    print(C.machine_info(), "load", C.loadavg())
    for r in range(args.repeats):
        for b in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
            t0 = time.perf_counter()
            result = evaluate(model, test, attacks=attacks, eps=[0.1], batch_size=b, seed=0, progress=False)
            times[b].append(time.perf_counter() - t0)
            robust[b] = result.worst_case[0]
            print(f"  batch {b}: {times[b][-1]:.2f} s", flush=True)
    rows = [
        [str(b), f"{C.median(times[b]):.2f}", " ".join(f"{t:.2f}" for t in times[b]), f"{100 * robust[b]:.2f}"]
        for b in sizes
    ]
    tbl = C.table(["batch", "seconds (median)", "all repeats", "PGD-20 robust %"], rows)
    print(f"\nadvlab.evaluate, PGD-20 L∞ ε = 0.1, {args.n} images of {args.run or 'the standard model'}")
    print(tbl)
    C.write_json(args.out, dict(machine=C.machine_info(), args=vars(args), times=times, robust=robust, table=tbl))


if __name__ == "__main__":
    main()
