"""Catastrophic-overfitting grid: train each given config with the guard on and print its trajectory.

Each config is a JSON object of TrainConfig settings (everything else from the recipe of its data set and
method), and optionally "_stop_after": end after that many epochs, as an interruption would. Per epoch: validation
clean / FGSM / PGD-10 accuracy on the guard's check images; then where the
guard fired, if it did. For finding a fast recipe that holds at a large ε before the full study
(benchmarks/fast_at_study.sh) measures it over seeds on the whole test set.

    .venv/bin/python benchmarks/bench_fast_at_grid.py --threads 1 --out benchmarks/results/fast-at-grid.json \\
        '{"method": "nfgsm", "eps": 0.3}' '{"method": "nfgsm", "eps": 0.3, "nfgsm_noise": 3}'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402


def run(settings: dict, root: Path) -> dict:
    from advlab.train import TrainConfig, train

    settings = dict(settings)
    stop_after = settings.pop("_stop_after", None)
    config = TrainConfig(**settings)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(config, root / "run", progress=False, overwrite=True, stop_after_epochs=stop_after)
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "settings": {**settings, "_stop_after": stop_after},
        "recipe": config.recipe,
        "resolved": config.to_dict(),
        "epochs": [
            {k: r[k] for k in ("epoch", "eps", "val_clean_acc", "val_fgsm_acc", "val_robust_acc", "seconds")}
            for r in rows
        ],
        "collapses": summary["collapses"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="JSON objects of TrainConfig settings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/fast-at-grid.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = C.started_at()["commit"]  # the code that ran
    print(C.machine_info(), "commit", started, flush=True)
    results = []
    for text in args.configs:
        with tempfile.TemporaryDirectory(prefix="advlab_grid_") as tmp:
            result = run(json.loads(text), Path(tmp))
        results.append(result)
        trajectory = " ".join(
            f"{r['epoch']}:{100 * r['val_clean_acc']:.0f}/{100 * r['val_fgsm_acc']:.0f}/{100 * r['val_robust_acc']:.0f}"
            for r in result["epochs"]
        )
        fired = result["collapses"][0]["message"] if result["collapses"] else "no collapse"
        print(f"{text}\n  epoch:clean/FGSM/PGD-10 % {trajectory}\n  {fired}\n  {result['seconds']:.0f} s", flush=True)
    C.write_json(args.out, dict(machine=C.machine_info(), started_at_commit=started, args=vars(args), results=results))


if __name__ == "__main__":
    main()
