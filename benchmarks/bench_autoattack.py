"""advlab's standard suite against the reference AutoAttack, like for like, one result file per model.

For one model: advlab's ``--suite standard`` (APGD-CE, APGD-T, FAB-T, Square: chained, per-example early
exit) and fra31/auto-attack's ``version="standard"`` (the same four attacks) on the first N test images at ε,
each timed on its own, each attack's share of the time beside (advlab's from its evaluation's per-attack
times, the reference's from its own log of the total time after each attack); both adversarial batches are
judged again here by one fp32 forward pass. What must hold (issue 30): advlab never above AutoAttack by more
than 0.1 point, in at most a third of its time. Run each model alone on the machine.

The reference is not on PyPI: ``benchmarks/setup.sh`` installs it with ``--no-deps`` from its pinned git
commit (offline: from a snapshot of the repository), never copied into this repository.

    .venv/bin/python benchmarks/bench_autoattack.py --checkpoint runs/quick/models/pgd/model.safetensors \\
        --name pgd --n 1000 --eps 0.1 --threads 2 --out benchmarks/results/autoattack-pgd.json
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from advlab.attacks.suites import suite_attacks  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.evaluate import DEFAULT_BATCH, POOL, evaluate  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402
from advlab.runtime import Runtime  # noqa: E402

NAMES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def advlab_standard(
    model,
    x,
    y,
    eps: float,
    seed: int,
    norm: str,
    precision: str = "fp32",
    batch: int = DEFAULT_BATCH,
    pool: int = POOL,
) -> dict:
    attacks = suite_attacks("standard", norm=norm, classes=int(model(x[:1]).shape[1]))
    runtime = Runtime(device="cpu", precision=precision)
    start = time.perf_counter()
    result = evaluate(
        model,
        (x, y),
        attacks=attacks,
        eps=[eps],
        chain=True,
        seed=seed,
        progress=False,
        runtime=runtime,
        batch_size=batch,
        pool=pool,
    )
    seconds = time.perf_counter() - start
    return {
        "robust_accuracy": result.worst_case[0],
        "seconds": seconds,
        "precision": precision,
        "batch": batch,
        "pool": pool,
        "after_each": {label: values[0] for label, values in result.robust.items()},
        "attack_seconds": result.attack_seconds,
        "model_warnings": [w["flag"] for w in result.model_warnings],
    }


def reference_standard(model, x, y, eps: float, seed: int, batch: int, norm: str) -> dict:
    """AutoAttack's standard version; its log gives the robust accuracy and total time after each attack."""
    from autoattack import AutoAttack

    adversary = AutoAttack(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, version="standard", device="cpu", seed=seed
    )
    log = io.StringIO()
    start = time.perf_counter()
    with redirect_stdout(log):
        x_adv = adversary.run_standard_evaluation(x, y, bs=batch)
    seconds = time.perf_counter() - start
    after, total = {}, {}
    for name, accuracy, elapsed in re.findall(
        r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", log.getvalue()
    ):
        label = NAMES.get(name.lower(), name)
        after[label], total[label] = float(accuracy) / 100, float(elapsed)
    shares, previous = {}, 0.0
    for label, elapsed in total.items():  # the log's times are cumulative
        shares[label], previous = elapsed - previous, elapsed
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    inside = bool((size <= eps + 1e-6).all()) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    return {
        "robust_accuracy": _accuracy(model, x_adv, y),
        "seconds": seconds,
        "after_each": after,
        "attack_seconds": shares,
        "in_ball": inside,
        "log": log.getvalue().splitlines(),
    }


def earlier_reference(args, row: dict) -> dict:
    """The reference's run from ``args.reference_from``, refused unless it ran on the same model, images, ε,
    norm, seed and batch; it keeps that file's name and commit."""
    earlier = json.loads(Path(args.reference_from).read_text())
    same = ("checkpoint", "n", "eps", "norm", "seed", "batch")
    mismatched = [key for key in same if earlier["args"].get(key) != getattr(args, key)]
    if mismatched or earlier["result"]["clean_accuracy"] != row["clean_accuracy"]:
        sys.exit(f"bench_autoattack: {args.reference_from} ran another setting ({', '.join(mismatched) or 'data'})")
    return {
        **earlier["result"]["autoattack_standard"],
        "from": args.reference_from,
        "commit": earlier["provenance"]["commit"],
        "date": earlier["provenance"]["date"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="an advlab checkpoint (model.safetensors)")
    p.add_argument("--name", required=True, help="the model's name in the result")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's")
    p.add_argument("--n", type=int, default=1000, help="first N test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500, help="the reference's batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="advlab's attack passes (every example is still judged in fp32); the reference runs fp32",
    )
    p.add_argument("--advlab-batch", type=int, default=DEFAULT_BATCH, help="advlab's batch size")
    p.add_argument("--advlab-pool", type=int, default=POOL, help="batches advlab pools into one unit of work (1: none)")
    p.add_argument(
        "--reference-from",
        default=None,
        help="take the reference's run from this earlier result file (same model, images, ε, seed and "
        "machine; it must say so) instead of running it again: for a second advlab setting on one model",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(C.machine_info(), C.started_at(), flush=True)
    model, record = load_checkpoint(args.checkpoint, device="cpu")
    model.eval()
    data = load_dataset(args.dataset or record["dataset"], "test", download=False, progress=False)
    x, y = data.subset(min(args.n, len(data))).tensors()
    row = {
        "model": args.name,
        "n": len(y),
        "eps": args.eps,
        "norm": args.norm,
        "clean_accuracy": _accuracy(model, x, y),
    }
    if args.reference_from:
        row["autoattack_standard"] = earlier_reference(args, row)
    else:
        row["autoattack_standard"] = reference_standard(model, x, y, args.eps, args.seed, args.batch, args.norm)
    print("reference", {k: v for k, v in row["autoattack_standard"].items() if k != "log"}, flush=True)
    row["advlab_standard"] = advlab_standard(
        model, x, y, args.eps, args.seed, args.norm, args.precision, args.advlab_batch, args.advlab_pool
    )
    print("advlab", row["advlab_standard"], flush=True)
    ours, theirs = row["advlab_standard"], row["autoattack_standard"]
    row["difference_points"] = 100 * (ours["robust_accuracy"] - theirs["robust_accuracy"])
    row["time_ratio"] = ours["seconds"] / theirs["seconds"]
    row["holds"] = {
        "never above AutoAttack + 0.1 point": row["difference_points"] <= 0.1 + 1e-9,
        "at most 1/3 of its time": row["time_ratio"] <= 1 / 3,
    }
    print(
        f"{args.name}: advlab {100 * ours['robust_accuracy']:.1f}% in {ours['seconds']:.0f} s, AutoAttack "
        f"{100 * theirs['robust_accuracy']:.1f}% in {theirs['seconds']:.0f} s: {row['difference_points']:+.1f} "
        f"points, {row['time_ratio']:.2f} of its time",
        flush=True,
    )
    C.write_json(args.out, {"args": vars(args), "result": row})


if __name__ == "__main__":
    main()
