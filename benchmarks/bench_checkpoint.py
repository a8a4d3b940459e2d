"""What the checkpoint checksums cost: ``load_checkpoint`` with and without verifying them (issue 14).

For small_cnn (Fashion-MNIST) and PreActResNet-18 (CIFAR-10 shape), a checkpoint is saved once, then loaded
with verification (SHA-256 of every tensor's bytes and of the record, as ``advlab`` always does) and without
(``verify=False``), interleaved, ``--repeats`` times each after a warm-up; medians and their ratio. The bar:
at most 1.2× the time without. Also the SHA-256 of the weights alone: on one thread, and as the loader
hashes them (``tensor_digests``, on the hashing threads).

    .venv/bin/python benchmarks/bench_checkpoint.py --repeats 30 --out benchmarks/results/checkpoint.json
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from advlab.models import create_model  # noqa: E402
from advlab.runs import load_checkpoint, save_checkpoint  # noqa: E402

MODELS = {"small_cnn": {"dataset": "fashion-mnist"}, "preact_resnet18": {"dataset": "cifar10"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/checkpoint.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model_args in MODELS.items():
            torch.manual_seed(0)
            model = create_model(name, **model_args)
            path = Path(folder) / f"{name}.safetensors"
            save_checkpoint(path, model, {"model": name, "model_args": model_args})
            times = {True: [], False: []}
            for verify in (True, False):  # warm-up: file cache, imports
                load_checkpoint(path, verify=verify)
            for _ in range(args.repeats):
                for verify in (True, False):
                    start = time.perf_counter()
                    load_checkpoint(path, verify=verify)
                    times[verify].append(time.perf_counter() - start)
            with_, without = statistics.median(times[True]), statistics.median(times[False])
            # What the checksums cost alone: SHA-256 of the weights on one thread, and as the loader runs it.
            from advlab.tensor_files import load_tensors, tensor_digests

            tensors, _ = load_tensors(path, verify=False)
            weights = b"".join(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for t in tensors.values())
            one, pooled = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                hashlib.sha256(weights).digest()
                one.append(time.perf_counter() - start)
                start = time.perf_counter()
                tensor_digests(tensors)
                pooled.append(time.perf_counter() - start)
            row = {
                "model": name,
                "file_mib": path.stat().st_size / 2**20,
                "sha256_one_thread_ms": 1000 * statistics.median(one),
                "sha256_one_thread_gb_per_s": len(weights) / statistics.median(one) / 1e9,
                "tensor_digests_ms": 1000 * statistics.median(pooled),
                "parameters": sum(p.numel() for p in model.parameters()),
                "verified_ms": 1000 * with_,
                "unverified_ms": 1000 * without,
                "ratio": with_ / without,
                "verified_ms_all": [1000 * t for t in times[True]],
                "unverified_ms_all": [1000 * t for t in times[False]],
            }
            rows.append(row)
            print(
                f"{name}: {row['file_mib']:.1f} MiB, verified {row['verified_ms']:.1f} ms, unverified "
                f"{row['unverified_ms']:.1f} ms, ratio {row['ratio']:.3f}; SHA-256 alone "
                f"{row['sha256_one_thread_ms']:.1f} ms on one thread ({row['sha256_one_thread_gb_per_s']:.2f} GB/s), "
                f"{row['tensor_digests_ms']:.1f} ms as the loader hashes",
                flush=True,
            )
    C.write_json(args.out, {"args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
