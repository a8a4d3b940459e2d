"""The one prepared script for a lent GPU (issue 18): CUDA tests, NCCL, and CIFAR-10 epoch times.

Run it only where ``nvidia-smi`` shows a GPU (the ``device`` tool's machine); it writes what it measured,
and nothing it did not, to ``--out``:

1. the CUDA tests (``pytest -m 'not slow' -k cuda``: the ones that skip without a GPU);
2. with 2 GPUs or more, a 2-process NCCL training run through torchrun (a small Fashion-MNIST run);
3. the CIFAR-10 fast recipe (``--preset cifar10-fast``: PreActResNet-18, fast FGSM, crop-flip) and PGD-10 AT
   (``--preset cifar10-pgd``) on synthetic data in CIFAR-10's own file format (50,000 + 10,000 random
   images: the timing of a real epoch, not its accuracy), ``--epochs`` epochs each in fp32 and in bf16,
   recording each epoch's training time from metrics.jsonl.

    .venv/bin/python benchmarks/bench_gpu.py --out benchmarks/results/gpu.json

Wong, Rice & Kolter's anchor: 15 epochs of fast FGSM in 12 minutes on one older GPU (48 s an epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import _common as C  # noqa: E402

PYTHON = sys.executable


def _run(command: list[str], timeout: float, env: dict | None = None) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
        code, tail = done.returncode, (done.stdout + done.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        code, tail = "timeout", ""
    return {"command": " ".join(command), "returncode": code, "seconds": time.perf_counter() - start, "tail": tail}


def synthetic_cifar(folder: Path) -> None:
    """50,000 training and 10,000 test images of random pixels in CIFAR-10's pickled-batch format."""
    from test_data import py2_pickle

    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 10_000) for i in range(1, 6)] + [("test_batch", 10_000)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        (batches / name).write_bytes(py2_pickle({b"batch_label": b"synthetic", b"labels": labels, b"data": data}))


def epoch_times(data: Path, preset: str, precision: str, epochs: int, timeout: float) -> dict:
    run = data.parent / f"{preset}-{precision}"
    step = _run(
        [
            PYTHON,
            "-m",
            "advlab",
            "train",
            "--preset",
            preset,
            "--epochs",
            str(epochs),
            "--data-dir",
            str(data),
            "--device",
            "cuda",
            "--precision",
            precision,
            "--out",
            str(run),
            "--overwrite",
            "--quiet",
            "--check-examples",
            "200",
        ],
        timeout,
    )
    if step["returncode"] == 0:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        step["epoch_seconds"] = [row["seconds"] for row in rows]
        step["val_seconds"] = [row["val_seconds"] for row in rows]
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs of each timed CIFAR-10 run (default 2)")
    p.add_argument("--timeout", type=float, default=240, help="seconds allowed to each step")
    p.add_argument("--out", default="benchmarks/results/gpu.json")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this script is for a machine with a GPU")
    payload: dict = {
        **C.provenance(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_cuda": torch.version.cuda,
    }
    payload["cuda_tests"] = _run(
        [PYTHON, "-m", "pytest", "-q", "-x", "-m", "not slow", "-k", "cuda", "tests"], args.timeout
    )
    work = Path(tempfile.mkdtemp(prefix="advlab-gpu-"))
    try:
        if torch.cuda.device_count() >= 2:
            payload["nccl_2_processes"] = _run(
                [
                    PYTHON,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc_per_node=2",
                    "-m",
                    "advlab",
                    "train",
                    "--method",
                    "fgsm",
                    "--train-size",
                    "4000",
                    "--epochs",
                    "1",
                    "--device",
                    "cuda",
                    "--out",
                    str(work / "nccl"),
                    "--quiet",
                ],
                args.timeout,
            )
        data = work / "cifar"
        synthetic_cifar(data)
        payload["cifar10"] = {
            f"{preset} {precision}": epoch_times(data, preset, precision, args.epochs, args.timeout)
            for preset in ("cifar10-fast", "cifar10-pgd")
            for precision in ("bf16", "fp32")
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        C.write_json(args.out, payload)
    print(json.dumps(payload, indent=1)[-4000:])


if __name__ == "__main__":
    main()
