"""Training-epoch cost of each adversarial training method relative to standard training.

Runs advlab.train.train(TrainConfig(method=M, epochs=1, train_size=N, ...)) per method, interleaved over
repeats, and reads the epoch's training seconds (metrics.jsonl "seconds": the pass over the training
images only, without the per-epoch validation). Targets: fast-FGSM ≤ 2.2×, PGD-k ≤ (k+1.3)× standard;
N-FGSM the cost of FGSM and GradAlign about 3× FGSM (Andriushchenko & Flammarion), read in the × fgsm
column. The guard's within-epoch checks are off (``co_check_every=0``): this is the method's own cost.

    .venv/bin/python benchmarks/bench_train.py --quick
    .venv/bin/python benchmarks/bench_train.py --n 4000 --repeats 2 --methods standard,fgsm,pgd3,pgd7
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402


def target(method: str) -> tuple[float | None, str]:
    if method in ("fgsm", "nfgsm"):
        return 2.2, "≤ 2.2×"
    m = re.fullmatch(r"pgd(\d+)", method)
    if m:
        k = int(m.group(1))
        return k + 1.3, f"≤ {k + 1.3:.1f}× (k+1.3)"
    return None, ""


def run_one(method: str, n: int, batch_size: int, root: Path) -> float:
    from advlab.train import TrainConfig, train

    m = re.fullmatch(r"pgd(\d+)", method)
    kwargs = dict(method="pgd", steps=int(m.group(1))) if m else dict(method=method)
    if method == "free":
        kwargs["epochs"] = 4  # free AT with m=4 replays: ⌈4/4⌉ = 1 pass, the gradient work of 4 epochs
    cfg = TrainConfig(
        **{"epochs": 1, **kwargs},
        train_size=n,
        batch_size=batch_size,
        val_size=1000,
        check_examples=50,
        check_steps=1,
        co_check_every=0,
    )
    out = root / f"{method}"
    train(cfg, out, progress=False, overwrite=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return float(rows[0]["seconds"])


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0], n=4000, repeats=2, batch_size=128, out="benchmarks/results/train.json")
    p.add_argument(
        "--methods",
        default="standard,fgsm,pgd3,pgd7",
        help="comma list: standard, fgsm, nfgsm, gradalign, pgdK (PGD-K training), trades, mart, free",
    )
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats, args.methods = 1000, 1, "standard,fgsm,pgd3"
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    print(C.machine_info(), "load", C.loadavg())
    times = {m: [] for m in methods}
    loads = [C.loadavg()]
    with tempfile.TemporaryDirectory(prefix="advlab_bench_train_") as tmp:
        run_one("standard", min(args.n, 256), args.batch_size, Path(tmp))  # warm-up
        for r in range(args.repeats):
            for m in methods[r % len(methods) :] + methods[: r % len(methods)]:
                times[m].append(run_one(m, args.n, args.batch_size, Path(tmp)))
                print(f"  {m}: {times[m][-1]:.1f} s", flush=True)
            loads.append(C.loadavg())
            print(f"repeat {r + 1}/{args.repeats} load {loads[-1]}", flush=True)
    base = C.median(times["standard"]) if "standard" in times else None
    fgsm = C.median(times["fgsm"]) if "fgsm" in times else None
    rows = []
    for m in methods:
        t = C.median(times[m])
        ratio = t / base if base else None
        lim, label = target(m)
        verdict = "" if lim is None or ratio is None else ("PASS" if ratio <= lim else "FAIL")
        rows.append(
            [m, f"{t:.1f}", f"{ratio:.2f}×" if ratio else "-", f"{t / fgsm:.2f}×" if fgsm else "-", label, verdict]
        )
    tbl = C.table(["method", "epoch seconds (median)", "× standard", "× fgsm", "target", ""], rows)
    print(
        f"\nOne training epoch on {args.n} Fashion-MNIST images, batch {args.batch_size}, small_cnn, "
        f"{args.repeats} repeats"
    )
    print(tbl)
    C.write_json(args.out, dict(machine=C.machine_info(), args=vars(args), loads=loads, times=times, table=tbl))


if __name__ == "__main__":
    main()
