"""One minimum-norm run against the per-ε standard suite (issue 30): is the curve honest, and what does it cost?

FMN (Pintor et al. 2021) runs once on the first N test images and gives each example's smallest adversarial
perturbation, so robust accuracy at every ε; advlab's ``--suite standard`` (APGD-CE, APGD-T, FAB-T, Square,
chained) runs once per ε. What must hold: at no ε is the FMN curve above the suite's worst case by more than
0.5 point (a minimum-norm attack that misses adversarial examples would overstate robustness). The file also
holds both costs: one FMN run against the sum of the per-ε suites.

    .venv/bin/python benchmarks/bench_fmn_curve.py --checkpoint runs/quick/models/pgd/model.safetensors \\
        --n 500 --eps 0.05,0.1,0.15,0.2 --attack fmn-t --out benchmarks/results/fmn-t-curve-pgd.json
    .venv/bin/python benchmarks/bench_fmn_curve.py ... --attack fmn \\
        --suite-from benchmarks/results/fmn-t-curve-pgd.json --out benchmarks/results/fmn-curve-pgd-alpha10.json
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
from advlab.attacks.suites import suite_attacks  # noqa: E402
from advlab.attacks.threat import per_example_norm  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.evaluate import evaluate  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402

BAR_POINTS = 0.5


def minimum_norm(model, x, y, attack: str, norm: str) -> dict:
    spec = parse_attack(attack, norm=norm)
    start = time.perf_counter()
    result = spec.minimal(model, x, y)
    seconds = time.perf_counter() - start
    found = torch.isfinite(result.norms) & (result.norms > 0)
    size = per_example_norm((result.x_adv - x).float(), norm)
    with torch.no_grad():  # every perturbation it reports is adversarial and no larger than it says
        wrong = model(result.x_adv[found]).argmax(1) != y[found]
    assert bool(wrong.all()) and bool((size[found] <= result.norms[found] * (1 + 1e-5) + 1e-6).all())
    return {"attack": spec.label, "seconds": seconds, "norms": result.norms}


def suite_at(model, x, y, eps: float, norm: str, seed: int) -> dict:
    attacks = suite_attacks("standard", norm=norm, classes=int(model(x[:1]).shape[1]))
    start = time.perf_counter()
    result = evaluate(model, (x, y), attacks=attacks, eps=[eps], chain=True, seed=seed, progress=False)
    return {"robust_accuracy": result.worst_case[0], "seconds": time.perf_counter() - start,
            "attack_seconds": result.attack_seconds}  # fmt: skip


def earlier_suites(args, grid: list[float]) -> dict[float, dict]:
    """The per-ε suites of ``args.suite_from``, refused unless it ran on the same model, images, ε grid, norm
    and seed; each row keeps that file's name and commit."""
    earlier = json.loads(Path(args.suite_from).read_text())
    mismatched = [
        key for key in ("checkpoint", "n", "eps", "norm", "seed") if earlier["args"].get(key) != getattr(args, key)
    ]
    if mismatched:
        sys.exit(f"bench_fmn_curve: {args.suite_from} ran another setting ({', '.join(mismatched)})")
    rows = {row["eps"]: row for row in earlier["result"]["per_eps"]}
    origin = {"from": args.suite_from, "commit": earlier["provenance"]["commit"]}
    return {eps: {"robust_accuracy": rows[eps]["standard_suite"], "seconds": rows[eps]["suite_seconds"],
                  "attack_seconds": rows[eps]["suite_attack_seconds"], **origin} for eps in grid}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="an advlab checkpoint (model.safetensors)")
    p.add_argument("--n", type=int, default=500, help="first N test images")
    p.add_argument("--eps", default="0.05,0.1,0.15,0.2", help="the ε grid, comma-separated")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--attack", default="fmn", help="the minimum-norm attack (default fmn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--suite-from",
        default=None,
        help="take the per-ε suites from this earlier result file (same model, images, ε grid, norm and seed) "
        "instead of running them again: for a second minimum-norm attack on one model",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    grid = [float(e) for e in args.eps.split(",")]
    model, record = load_checkpoint(args.checkpoint, device="cpu")
    model.eval()
    data = load_dataset(record["dataset"], "test", download=False, progress=False)
    x, y = data.subset(min(args.n, len(data))).tensors()
    torch.manual_seed(args.seed)
    fmn = minimum_norm(model, x, y, args.attack, args.norm)
    fmn_curve = curve(fmn["norms"], grid).tolist()
    print(f"{fmn['attack']}: {fmn['seconds']:.1f} s, curve {[round(100 * a, 1) for a in fmn_curve]}", flush=True)
    rows, earlier = [], earlier_suites(args, grid) if args.suite_from else {}
    for eps, from_curve in zip(grid, fmn_curve):
        suite = earlier.get(eps) or suite_at(model, x, y, eps, args.norm, args.seed)
        above = 100 * (from_curve - suite["robust_accuracy"])
        rows.append({"eps": eps, "fmn_curve": from_curve, "standard_suite": suite["robust_accuracy"],
                     "fmn_above_suite_points": above, "suite_seconds": suite["seconds"],
                     "suite_attack_seconds": suite["attack_seconds"],
                     **({"suite_from": suite["from"], "suite_commit": suite["commit"]} if "from" in suite else {}),
                     })  # fmt: skip
        print(f"ε = {eps:g}: FMN {100 * from_curve:.1f}%, suite {100 * suite['robust_accuracy']:.1f}% "
              f"({above:+.1f} points) in {suite['seconds']:.0f} s", flush=True)  # fmt: skip
    suites = sum(r["suite_seconds"] for r in rows)
    worst = max(r["fmn_above_suite_points"] for r in rows)
    finite = fmn["norms"][torch.isfinite(fmn["norms"])]
    result = {
        "model": args.checkpoint,
        "n": len(y),
        "minimum_norm_attack": fmn["attack"],
        "minimum_norm_seconds": fmn["seconds"],
        "median_norm_found": float(finite.median()) if finite.numel() else None,
        "none_found": int((~torch.isfinite(fmn["norms"])).sum()),
        "per_eps": rows,
        "suite_seconds_total": suites,
        "cost_ratio": fmn["seconds"] / suites,
        "fmn_above_suite_points_max": worst,
        "holds": {f"never above the suite by more than {BAR_POINTS} point": worst <= BAR_POINTS + 1e-9},
    }
    print(f"FMN {fmn['seconds']:.0f} s against {suites:.0f} s of suites ({result['cost_ratio']:.2f}); "
          f"at most {worst:+.1f} points above", flush=True)  # fmt: skip
    C.write_json(args.out, {"args": vars(args), "result": result})


if __name__ == "__main__":
    main()
