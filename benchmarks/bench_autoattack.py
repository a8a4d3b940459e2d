"""advlab's standard suite against the reference AutoAttack, side by side on the same images (issue 13).

For each model: advlab's ``--suite standard`` (APGD-CE, APGD-T, Square; chained, per-example early exit)
and fra31/auto-attack's ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square) on the first N test
images at ε (L∞), each timed on its own; both adversarial batches are judged again here by one fp32
forward pass. Also, on the same images, APGD-CE-100 alone against PGD-50×10 with the forward-backward
passes each spends (counted by ``advlab.attacks.count_passes``).

The reference is not on PyPI: install it with ``--no-deps`` (``benchmarks/setup.sh`` does, from its git
URL; offline, from a snapshot of the repository), never copied into this repository.

    .venv/bin/python benchmarks/bench_autoattack.py --run runs/quick --models fgsm,pgd,trades-b1,trades-b6 \\
        --n 1000 --eps 0.1 --threads 2 --out benchmarks/results/autoattack.json
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

from advlab.attacks import count_passes, parse_attack  # noqa: E402
from advlab.attacks.suites import suite_attacks  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.evaluate import evaluate  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _advlab_suite(model, x, y, eps: float, seed: int) -> dict:
    attacks = suite_attacks("standard", norm="linf", classes=10)
    start = time.perf_counter()
    result = evaluate(model, (x, y), attacks=attacks, eps=[eps], chain=True, seed=seed, progress=False)
    return {
        "robust_accuracy": result.worst_case[0],
        "seconds": time.perf_counter() - start,
        "after_each": {label: values[0] for label, values in result.robust.items()},
        "flags": result.flags,
    }


def _reference(model, x, y, eps: float, seed: int, batch: int) -> dict:
    from autoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", seed=seed, verbose=False)
    start = time.perf_counter()
    x_adv = adversary.run_standard_evaluation(x, y, bs=batch)
    seconds = time.perf_counter() - start
    inside = float((x_adv - x).abs().amax()) <= eps + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    return {"robust_accuracy": _accuracy(model, x_adv, y), "seconds": seconds, "in_ball": inside}


def _passes(model, x, y, eps: float, seed: int) -> dict:
    """APGD-CE-100 against PGD-50×10: robust accuracy and the examples pushed through a forward-backward
    pass, with early exit (as advlab evaluates) and without (every example runs every step and restart)."""
    found = {}
    for early_stop in (True, False):
        for name in ("apgd-ce100", "pgd50x10"):
            attack = parse_attack(name)
            with count_passes(model) as passes:
                result = evaluate(
                    model,
                    (x, y),
                    attacks=[attack],
                    eps=[eps],
                    seed=seed,
                    progress=False,
                    checks=False,
                    early_stop=early_stop,
                )
            found[f"{attack.label}, early exit {'on' if early_stop else 'off'}"] = {
                "robust_accuracy": result.worst_case[0],
                "gradient_passes": passes.gradients,
                "forward_passes": passes.forwards,
                "seconds": result.seconds,
            }
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/quick", help="a study's run folder (models/NAME/model.safetensors)")
    p.add_argument("--models", default="fgsm,pgd,trades-b1,trades-b6", help="comma-separated model names")
    p.add_argument("--n", type=int, default=1000, help="first N test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500, help="the reference's batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--parts",
        default="advlab,reference,passes",
        help="comma-separated subset of advlab (the standard suite), reference (AutoAttack), "
        "passes (APGD-CE-100 against PGD-50x10)",
    )
    p.add_argument("--out", default="benchmarks/results/autoattack.json")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"advlab", "reference", "passes"}:
        p.error(f"--parts: unknown part(s) {sorted(parts - {'advlab', 'reference', 'passes'})}")
    torch.set_num_threads(args.threads)
    started = C.git_commit()
    print(C.machine_info(), "commit", started, flush=True)
    data = load_dataset("fashion-mnist", "test", download=False, progress=False)
    x, y = data.subset(min(args.n, len(data))).tensors()
    rows = []
    for name in args.models.split(","):
        model, _ = load_checkpoint(Path(args.run) / "models" / name / "model.safetensors", device="cpu")
        model.eval()
        row = {"model": name, "n": len(y), "eps": args.eps, "clean_accuracy": _accuracy(model, x, y)}
        if "advlab" in parts:
            row["advlab_standard"] = _advlab_suite(model, x, y, args.eps, args.seed)
        if "reference" in parts:
            row["autoattack_standard"] = _reference(model, x, y, args.eps, args.seed, args.batch)
        if "advlab" in parts and "reference" in parts:
            ours, theirs = row["advlab_standard"], row["autoattack_standard"]
            row["difference_points"] = 100 * (ours["robust_accuracy"] - theirs["robust_accuracy"])
            row["time_ratio"] = ours["seconds"] / theirs["seconds"]
        if "passes" in parts:
            row["apgd_vs_pgd"] = _passes(model, x, y, args.eps, args.seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
        # rewritten after each model, so an interrupted run keeps what it measured
        C.write_json(
            args.out,
            {
                "started_at_commit": started,
                "args": vars(args),
                "results": rows,
                "complete": len(rows) == len(args.models.split(",")),
            },
        )


if __name__ == "__main__":
    main()
