"""Which FMN settings give an honest L∞ curve (issue 30)? A screen of minimum-norm runs on one model.

Each ATTACK (an advlab attack name, parameters included) runs once on the first N test images and gives its
robust-accuracy curve on the ε grid; pairs joined by ``+`` keep each example's smaller norm of the two runs.
The per-ε standard suite comes from an earlier ``bench_fmn_curve.py`` file on the same model, images and grid
(``--suite-from``), so that each curve's distance to it is printed and recorded. This is how FMN-T's defaults
were chosen (3 targets of 500 steps; a first L∞ step of 10):

    .venv/bin/python benchmarks/screen_fmn.py --checkpoint runs/quick/models/pgd/model.safetensors --n 500 \\
        --suite-from benchmarks/results/fmn-t-curve-pgd.json --out benchmarks/results/fmn-screen-pgd.json \\
        "fmn:alpha=1" "fmn-t:alpha=1" "fmn-t200-top9:alpha=1" "fmn-t1000:alpha=1" "fmn:alpha=1+fmn-t:alpha=1"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from advlab.attacks import curve, parse_attack  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("attacks", nargs="+", help="minimum-norm attack names; A+B: the smaller norm of two runs")
    p.add_argument("--checkpoint", required=True, help="an advlab checkpoint (model.safetensors)")
    p.add_argument("--n", type=int, default=500, help="first N test images")
    p.add_argument("--suite-from", required=True, help="a bench_fmn_curve.py result file on the same model and N")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    earlier = json.loads(Path(args.suite_from).read_text())
    if (earlier["args"]["checkpoint"], earlier["args"]["n"], earlier["args"]["norm"]) != (
        args.checkpoint,
        args.n,
        "linf",
    ):
        sys.exit(f"screen_fmn: {args.suite_from} ran another model, image count or norm (this screen is L∞)")
    grid = [row["eps"] for row in earlier["result"]["per_eps"]]
    suite = [row["standard_suite"] for row in earlier["result"]["per_eps"]]
    model, record = load_checkpoint(args.checkpoint, device="cpu")
    model.eval()
    data = load_dataset(record["dataset"], "test", download=False, progress=False)
    x, y = data.subset(min(args.n, len(data))).tensors()
    norms: dict[str, torch.Tensor] = {}
    took: dict[str, float] = {}
    rows = []
    print(f"standard suite at ε = {grid}: {[round(100 * s, 1) for s in suite]}", flush=True)
    for name in args.attacks:
        for part in name.split("+"):
            if part not in norms:
                start = time.perf_counter()
                norms[part] = parse_attack(part).minimal(model, x, y).norms
                took[part] = time.perf_counter() - start
        seconds = sum(took[part] for part in name.split("+"))  # a pair: both runs' time
        smallest = torch.stack([norms[part] for part in name.split("+")]).amin(dim=0)
        accuracy = curve(smallest, grid).tolist()
        above = [100 * (a - s) for a, s in zip(accuracy, suite)]
        rows.append({"attack": name, "label": " + ".join(parse_attack(part).label for part in name.split("+")),
                     "curve": accuracy, "above_suite_points": above, "seconds": seconds})  # fmt: skip
        print(f"{name}: {[round(100 * a, 1) for a in accuracy]}, above the suite {[round(a, 1) for a in above]}, "
              f"{seconds:.0f} s", flush=True)  # fmt: skip
    result = {"model": args.checkpoint, "n": len(y), "eps": grid, "standard_suite": suite,
              "suite_from": args.suite_from, "suite_commit": earlier["provenance"]["commit"], "runs": rows}  # fmt: skip
    C.write_json(args.out, {"args": vars(args), "result": result})


if __name__ == "__main__":
    main()
