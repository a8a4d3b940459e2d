"""bf16 on the path users run: ``advlab evaluate --precision bf16`` (early exit on) against fp32 (issue 13).

For each model of a study's run folder, ``advlab.evaluate`` with the same attacks, seed and images in fp32
and under bf16 autocast, per-example early exit on (the default). Each attack's robust accuracy and the
worst case, and bf16 − fp32 signed, in points. Under bf16 an example that leaves an attack early because
its bf16 logits look fooled is attacked again in fp32 (``evaluate._recheck_in_fp32``); the third column
turns that recheck off (the path before it) to show what it prevents: a positive difference there is bf16
overstating robustness.

    .venv/bin/python benchmarks/bench_bf16.py --run runs/quick --n 10000 --out benchmarks/results/bf16.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

import advlab.evaluate as evaluation  # noqa: E402
from advlab.attacks import parse_attack  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402
from advlab.runtime import Runtime  # noqa: E402


@contextlib.contextmanager
def _no_recheck():
    """bf16 as before the fp32 recheck: an example that looked fooled in bf16 left the attack for good."""
    original = evaluation._recheck_in_fp32

    def trust_bf16(model, attack, x, goal, y, x_adv, eps, *, runtime, generator):
        return torch.ones(len(y), dtype=torch.bool, device=y.device)

    evaluation._recheck_in_fp32 = trust_bf16
    try:
        yield
    finally:
        evaluation._recheck_in_fp32 = original


def _measure(model, x, y, attacks, eps, seed, precision) -> dict:
    start = time.perf_counter()
    result = evaluation.evaluate(
        model,
        (x, y),
        attacks=attacks,
        eps=[eps],
        seed=seed,
        progress=False,
        runtime=Runtime(device="cpu", precision=precision),
        checks=False,
    )
    return {
        "robust": {label: values[0] for label, values in result.robust.items()},
        "worst_case": result.worst_case[0],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/quick", help="a study's run folder (models/NAME/model.safetensors)")
    p.add_argument("--models", default="standard,fgsm,pgd,trades-b1,trades-b6", help="comma-separated model names")
    p.add_argument(
        "--attacks",
        default="fgsm,pgd20,apgd-ce100",
        help="comma-separated attacks (evaluate's default fgsm and pgd20, and APGD-CE)",
    )
    p.add_argument("--n", type=int, default=10000, help="first N test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/bf16.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", "test", download=False, progress=False)
    x, y = data.subset(min(args.n, len(data))).tensors()
    attacks = [parse_attack(a) for a in args.attacks.split(",")]
    rows = []
    for name in args.models.split(","):
        model, _ = load_checkpoint(Path(args.run) / "models" / name / "model.safetensors", device="cpu")
        model.eval()
        row = {"model": name, "n": len(y), "eps": args.eps}
        row["fp32"] = _measure(model, x, y, attacks, args.eps, args.seed, "fp32")
        row["bf16"] = _measure(model, x, y, attacks, args.eps, args.seed, "bf16")
        with _no_recheck():
            row["bf16_without_recheck"] = _measure(model, x, y, attacks, args.eps, args.seed, "bf16")
        for key in ("bf16", "bf16_without_recheck"):
            row[f"{key}_minus_fp32_points"] = {
                label: 100 * (row[key]["robust"][label] - row["fp32"]["robust"][label])
                for label in row["fp32"]["robust"]
            }
            row[f"{key}_minus_fp32_points"]["worst case"] = 100 * (row[key]["worst_case"] - row["fp32"]["worst_case"])
        rows.append(row)
        print(
            name, {k: row[k] for k in ("bf16_minus_fp32_points", "bf16_without_recheck_minus_fp32_points")}, flush=True
        )
        C.write_json(
            args.out, {"args": vars(args), "results": rows, "complete": len(rows) == len(args.models.split(","))}
        )


if __name__ == "__main__":
    main()
