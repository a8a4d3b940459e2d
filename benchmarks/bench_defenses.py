"""The arms race, measured (issue 15): preprocessing defenses attacked naively, obliviously and adaptively.

For each model (a study's standard model and its PGD-trained one) and each defense, on the first N test
images at ε (L∞): clean accuracy; the oblivious attack (PGD made on the undefended model, passed through the
defense); the naive white-box PGD (gradients as autograd gives them); the adaptive one (BPDA, with EOT over
20 draws for the randomized defense, beside the same attack without EOT); the undefended model under the same
attack; and the model flags each evaluation raised. The attack is APGD-CE-100 unless ``--attack`` names
another (the first run, at commit 55918fb, used PGD-50: ``--attack pgd50``).

    .venv/bin/python benchmarks/bench_defenses.py --run runs/quick --n 1000 --out benchmarks/results/defenses-apgd.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from advlab.attacks import parse_attack  # noqa: E402
from advlab.data import load_dataset  # noqa: E402
from advlab.defenses import defend, parse_defense  # noqa: E402
from advlab.evaluate import evaluate, transfer_flags  # noqa: E402
from advlab.runs import load_checkpoint  # noqa: E402

DEFENSES = ("jpeg:quality=75", "bits:bits=4", "bits:bits=1", "median:size=3", "resize-pad:min_scale=0.8")


def _evaluate(model, x, y, names, eps, seed) -> dict:
    start = time.perf_counter()
    result = evaluate(model, (x, y), attacks=[parse_attack(n) for n in names], eps=[eps], seed=seed, progress=False)
    return {
        "clean": result.clean_accuracy,
        "robust": {k: v[0] for k, v in result.robust.items()},
        "flags": sorted({f["flag"] for f in result.flags}),
        "verdict_draws": result.draws,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/quick", help="a study's run folder (models/NAME/model.safetensors)")
    p.add_argument("--models", default="standard,pgd")
    p.add_argument("--defenses", default=",".join(DEFENSES), help="comma-separated; ';' would split parameters")
    p.add_argument(
        "--attack", default="apgd-ce100", help="the gradient attack, naive and (with -bpda or -eot20) adaptive"
    )
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/defenses-apgd.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = C.started_at()["commit"]
    data = load_dataset("fashion-mnist", "test", download=False, progress=False)
    x, y = data.subset(min(args.n, len(data))).tensors()
    rows = []
    for name in args.models.split(","):
        model, _ = load_checkpoint(Path(args.run) / "models" / name / "model.safetensors", device="cpu")
        model.eval()
        bare = _evaluate(model, x, y, [args.attack, f"{args.attack}-bpda"], args.eps, args.seed)
        rows.append({"model": name, "defense": None, **bare})
        print(name, "undefended", bare["robust"], flush=True)
        for text in args.defenses.split(","):
            defense = parse_defense(text)
            guarded = defend(model, [defense])
            # Adaptive: BPDA through a deterministic transform; EOT (real gradients) through a random one.
            names = [args.attack, f"{args.attack}-eot20" if defense.randomized else f"{args.attack}-bpda"]
            row = {"model": name, "defense": defense.describe(), **_evaluate(guarded, x, y, names, args.eps, args.seed)}
            torch.manual_seed(args.seed)
            oblivious = transfer_flags(
                guarded, model, (x, y), attack=parse_attack(args.attack), eps=args.eps, seed=args.seed
            )
            row["oblivious"] = oblivious.float().mean().item()
            row["undefended_same_attack"] = bare["robust"]
            rows.append(row)
            print(
                name,
                text,
                {k: round(v, 4) for k, v in row["robust"].items()},
                "oblivious",
                round(row["oblivious"], 4),
                row["flags"],
                flush=True,
            )
            C.write_json(
                args.out, {"started_at_commit": started, "args": vars(args), "results": rows, "complete": False}
            )
    C.write_json(args.out, {"started_at_commit": started, "args": vars(args), "results": rows, "complete": True})


if __name__ == "__main__":
    main()
