"""Scale on this CPU (issue 18): bf16 against fp32 training, and what DistributedDataParallel costs.

``precision``: the quick recipe (``advlab train --preset quick``: fast FGSM AT of small_cnn on Fashion-MNIST
at ε = 0.1, 8 epochs) trained in fp32 and then under ``--precision bf16``, one after the other, nothing else
running. Per run: each epoch's training time (``seconds`` of metrics.jsonl: the epoch's batches, without
its validation), and the final model's clean and PGD-20 accuracy on the first ``--n`` test images,
evaluated in fp32 by ``advlab evaluate``. The bar: a bf16 epoch at least 1.5× faster, accuracies within
1 point.

``ddp``: the same recipe for ``--ddp-epochs`` epochs, by 1 process with 2 threads and by torchrun with
2 processes of 1 thread each (gloo on 127.0.0.1), on this 2-core machine: DDP's overhead, per epoch.

    .venv/bin/python benchmarks/bench_scale.py --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PYTHON = sys.executable


def _run(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_and_evaluate(run: Path, precision: str, n: int, threads: int) -> dict:
    wall = _run(
        [
            PYTHON,
            "-m",
            "advlab",
            "train",
            "--preset",
            "quick",
            "--out",
            str(run),
            "--overwrite",
            "--quiet",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--threads",
            str(threads),
        ]
    )
    rows = _epochs(run)
    result = run / "eval.json"
    _run(
        [
            PYTHON,
            "-m",
            "advlab",
            "evaluate",
            str(run),
            "--attack",
            "pgd20",
            "--eps",
            "0.1",
            "--n",
            str(n),
            "--out",
            str(result),
            "--overwrite",
            "--quiet",
            "--device",
            "cpu",
            "--threads",
            str(threads),
        ]
    )
    evaluation = json.loads(result.read_text())
    return {
        "precision": precision,
        "wall_seconds": wall,
        "epoch_seconds": [r["seconds"] for r in rows],
        "median_epoch_seconds": statistics.median(r["seconds"] for r in rows),
        "val_clean": rows[-1]["val_clean_acc"],
        "val_pgd10": rows[-1]["val_robust_acc"],
        "test_clean": evaluation["clean_accuracy"],
        "test_pgd20": next(iter(evaluation["robust_accuracy"].values()))[0],
        "test_images": evaluation["n"],
    }


def ddp_epochs(run: Path, processes: int, epochs: int) -> dict:
    common = [
        "train",
        "--preset",
        "quick",
        "--epochs",
        str(epochs),
        "--out",
        str(run),
        "--overwrite",
        "--quiet",
        "--device",
        "cpu",
    ]
    if processes == 1:
        wall = _run([PYTHON, "-m", "advlab", *common, "--threads", "2"])
    else:
        wall = _run(
            [
                PYTHON,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                "-m",
                "advlab",
                *common,
            ],
            env={"OMP_NUM_THREADS": "1"},
        )
    rows = _epochs(run)
    return {
        "processes": processes,
        "threads_each": 2 // processes,
        "wall_seconds": wall,
        "epoch_seconds": [r["seconds"] for r in rows],
        "val_seconds": [r["val_seconds"] for r in rows],
        "median_epoch_seconds": statistics.median(r["seconds"] for r in rows),
        "val_clean": rows[-1]["val_clean_acc"],
        "val_pgd10": rows[-1]["val_robust_acc"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", "precision", "ddp"], default="all")
    p.add_argument("--n", type=int, default=10_000, help="test images of the final evaluation (default all)")
    p.add_argument("--ddp-epochs", type=int, default=2, help="epochs of each DDP-overhead run (default 2)")
    p.add_argument("--out", default="benchmarks/results/scale.json")
    args = p.parse_args()
    payload: dict = {**C.provenance(), "bf16_support": C.bf16_support()}
    work = Path(tempfile.mkdtemp(prefix="advlab-scale-"))
    try:
        if args.part in ("all", "precision"):
            runs = [train_and_evaluate(work / precision, precision, args.n, 2) for precision in ("fp32", "bf16")]
            fp32, bf16 = runs
            payload["precision"] = {
                "recipe": "advlab train --preset quick (fast FGSM, small_cnn, Fashion-MNIST, ε = 0.1, 8 epochs)",
                "runs": runs,
                "epoch_speedup": fp32["median_epoch_seconds"] / bf16["median_epoch_seconds"],
                "clean_points": 100 * (bf16["test_clean"] - fp32["test_clean"]),
                "pgd20_points": 100 * (bf16["test_pgd20"] - fp32["test_pgd20"]),
            }
            print(json.dumps(payload["precision"], indent=1))
        if args.part in ("all", "ddp"):
            one, two = (ddp_epochs(work / f"ddp{k}", k, args.ddp_epochs) for k in (1, 2))
            payload["ddp"] = {
                "recipe": f"the quick recipe, {args.ddp_epochs} epochs",
                "one_process": one,
                "two_processes": two,
                "epoch_time_ratio": two["median_epoch_seconds"] / one["median_epoch_seconds"],
            }
            print(json.dumps(payload["ddp"], indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    C.write_json(args.out, payload)


if __name__ == "__main__":
    main()
