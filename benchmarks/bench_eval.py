"""Full robustness evaluation with vs without advlab's early exit, and peak memory vs number of images.

Part 1: evaluate(standard small_cnn, FGSM + PGD-S×R (restarts), per-example worst case) with
early_stop=False, early_stop=True, and early_stop=True + chain=True; interleaved repeats, medians.
Part 2: peak RSS (VmHWM of /proc/self/status: the high-water mark of the process's own memory map,
which, unlike getrusage's ru_maxrss, does not inherit the parent's peak through fork and exec) of a PGD-100
evaluation of 1,000 vs 10,000 images, one fresh subprocess per size.

    .venv/bin/python benchmarks/bench_eval.py --quick
    .venv/bin/python benchmarks/bench_eval.py --n 1000 --repeats 3 --out benchmarks/results/eval.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from advlab.attacks import AttackSpec  # noqa: E402
from advlab.evaluate import evaluate  # noqa: E402

# "no early exit" is the naive evaluation: every example (even those misclassified clean), every PGD step
# and every restart. advlab's default skips examples already broken at each of those levels.
MODES = {
    "no early exit": dict(early_stop=False, chain=False),
    "early_stop": dict(early_stop=True, chain=False),
    "early_stop + chain": dict(early_stop=True, chain=True),
}


def vm_kib(field: str) -> int:
    """A memory figure of this process in KiB from /proc/self/status (VmHWM = peak RSS, VmRSS = now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(n: int, model_path: str, batch_size: int, steps: int, threads: int) -> None:
    """Runs in a fresh interpreter: PGD-<steps> evaluation of the first n test images, prints JSON."""
    from advlab.data import load_dataset

    torch.set_num_threads(threads)
    model = C.standard_model(model_path)
    data = load_dataset("fashion-mnist", "test", download=False).subset(n)
    before = vm_kib("VmHWM")
    r = evaluate(
        model, data, attacks=[AttackSpec(name="pgd", steps=steps)], eps=[0.1], batch_size=batch_size, progress=False
    )
    after = vm_kib("VmHWM")
    print(
        json.dumps(
            dict(
                n=n,
                maxrss_before_eval_kib=before,
                maxrss_kib=after,
                seconds=r.seconds,
                robust=r.worst_case[0],
                clean=r.clean_accuracy,
            )
        )
    )


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0], n=1000, repeats=3, batch_size=500, out="benchmarks/results/eval.json")
    p.add_argument("--steps", type=int, default=50, help="PGD steps in the evaluation")
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--eps", default="0.1", help="comma-separated L∞ ε grid")
    p.add_argument("--memory-sizes", default="1000,10000")
    p.add_argument("--memory-steps", type=int, default=100)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--only-memory", action="store_true", help="skip the timing part")
    p.add_argument("--child", type=int, help="internal: memory child for N images")
    args = p.parse_args()
    if args.child:
        memory_child(args.child, args.model, args.batch_size, args.memory_steps, args.threads)
        return
    if args.quick:
        args.n, args.repeats, args.steps, args.restarts = 300, 1, 20, 2
        args.memory_sizes, args.memory_steps = "500,2000", 20
    torch.set_num_threads(args.threads)
    model = C.standard_model(args.model)
    x, y = C.test_data(args.n)
    eps = [float(e) for e in args.eps.split(",")]
    attacks = [AttackSpec(name="fgsm"), AttackSpec(name="pgd", steps=args.steps, restarts=args.restarts)]
    print(C.machine_info(), "load", C.loadavg())
    if args.only_memory:
        args.repeats = 0
    evaluate(model, (x[:50], y[:50]), attacks=attacks[:1], eps=eps, progress=False)  # warm-up
    times = {m: [] for m in MODES}
    res = {}
    loads = [C.loadavg()]
    modes = list(MODES)
    for r in range(args.repeats):
        for m in modes[r % 3 :] + modes[: r % 3]:
            out = evaluate(
                model, (x, y), attacks=attacks, eps=eps, batch_size=args.batch_size, progress=False, seed=r, **MODES[m]
            )
            times[m].append(out.seconds)
            res.setdefault(m, []).append(out.to_dict())
        loads.append(C.loadavg())
        print(f"repeat {r + 1}/{args.repeats} load {loads[-1]}", flush=True)
    tbl = ""
    if args.repeats:
        base = C.median(times["no early exit"])
        rows = []
        for m in modes:
            t = C.median(times[m])
            last = res[m][-1]
            rows.append(
                [m, f"{t:.1f}", f"{base / t:.1f}×", f"{100 * last['clean_accuracy']:.2f}"]
                + [f"{100 * last['robust_accuracy'][a.label][i]:.2f}" for i in range(len(eps)) for a in attacks]
                + [f"{100 * last['worst_case_accuracy'][i]:.2f}" for i in range(len(eps))]
            )
        hdr = (
            ["mode", "seconds (median)", "speed-up", "clean %"]
            + [f"{a.label} @{e:g} %" for e in eps for a in attacks]
            + [f"worst case @{e:g} %" for e in eps]
        )
        tbl = C.table(hdr, rows)
        print(
            f"\nEvaluation of {args.n} images, FGSM + PGD-{args.steps}×{args.restarts} L∞, batch {args.batch_size}, "
            f"{args.repeats} repeats (chain: per-attack numbers are cumulative)"
        )
        print(tbl)

    mem_rows, mem = [], []
    if not args.skip_memory:
        for n in [int(s) for s in args.memory_sizes.split(",")]:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(n),
                "--model",
                args.model,
                "--batch-size",
                str(args.batch_size),
                "--memory-steps",
                str(args.memory_steps),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            d = json.loads(out)
            mem.append(d)
            mem_rows.append(
                [
                    str(n),
                    f"{d['maxrss_before_eval_kib'] / 1024:.0f}",
                    f"{d['maxrss_kib'] / 1024:.0f}",
                    f"{(d['maxrss_kib'] - d['maxrss_before_eval_kib']) / 1024:.0f}",
                    f"{d['seconds']:.1f}",
                    f"{100 * d['robust']:.2f}",
                ]
            )
            print(mem_rows[-1], flush=True)
        mtbl = C.table(
            [
                "images",
                "peak RSS before eval (MiB)",
                "peak RSS after (MiB)",
                "growth during eval (MiB)",
                "seconds",
                f"PGD-{args.memory_steps} robust %",
            ],
            mem_rows,
        )
        print(f"\nPeak memory, PGD-{args.memory_steps} evaluation (early_stop default), batch {args.batch_size}")
        print(mtbl)
    else:
        mtbl = ""
    C.write_json(
        args.out,
        dict(
            machine=C.machine_info(),
            args=vars(args),
            loads=loads,
            times=times,
            results=res,
            memory=mem,
            tables={"eval": tbl, "memory": mtbl},
        ),
    )


if __name__ == "__main__":
    main()
