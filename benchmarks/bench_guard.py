"""The catastrophic-overfitting guard on real runs: every check recorded, and where its rules fire.

Each config (a JSON object of TrainConfig settings, "_name" naming it) trains with the guard watching but
never acting (``co_patience`` of a million: every check is taken and kept in ``guard.jsonl``, no remedy
changes the run), so one run shows the whole trajectory a collapse, or a run on its way to robustness,
goes through. The guard's rules with their default settings are then replayed over the recorded checks
(:class:`advlab.train.guard.Guard`): until the point where they fire a guarded run is the same run (the
checks draw from a generator of their own), so the replay says where the real guard fires, and what the
previous rule (the signature or a fall at a single check) would have done. ``--fixture`` also writes the
recorded checks for tests/test_guard.py.

    ADVLAB_DATA=~/.cache/advlab-bench .venv/bin/python benchmarks/bench_guard.py \\
        --out benchmarks/results/guard.json --fixture tests/guard_trajectories.json \\
        '{"_name": "mnist-fgsm-s0", "dataset": "mnist", "method": "fgsm", "eps": 0.3, "seed": 0}' ...
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

CHECK_KEYS = ("epoch", "step", "within_epoch", "examples", "clean", "fgsm", "pgd", "falling_lr")


def replay(config, checks: list[dict], falling_step: float, *, patience: int | None = None) -> list[dict]:
    """The guard's rules (default settings, or ``patience``) over recorded checks: each firing, with the
    guard going on as if the remedy had restored nothing (what matters is the first)."""
    import dataclasses

    from advlab.train.guard import Guard

    if patience is not None:
        config = dataclasses.replace(config, co_patience=patience)
    guard, fired = Guard(config, [], falling_step=falling_step), []
    for check in checks:
        rule = guard.assess(
            {k: check[k] for k in ("clean", "fgsm", "pgd")},
            epoch=check["epoch"],
            step=check["step"],
            within=check["within_epoch"],
            examples=check["examples"],
        )
        if rule is not None:
            fired.append({"epoch": check["epoch"], "step": check["step"], "rule": rule})
    return fired


def run(settings: dict, root: Path) -> dict:
    import dataclasses

    from advlab.train import TrainConfig, train

    settings = dict(settings)
    name = settings.pop("_name")
    watching = TrainConfig(**{**settings, "co_patience": 10**6})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(watching, root / "run", progress=False, overwrite=True)
    seconds = time.perf_counter() - start
    checks = [json.loads(line) for line in (root / "run" / "guard.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    # The step from which the learning rate falls, as the run had it: the first check that says so.
    falling = min((c["step"] for c in checks if c["falling_lr"]), default=float("inf"))
    default = dataclasses.replace(watching, co_patience=TrainConfig.co_patience)
    return {
        "name": name,
        "settings": settings,
        "recipe": watching.recipe,
        "seconds": round(seconds, 1),
        "falling_step": falling if checks and falling != float("inf") else None,
        "fires_at": replay(default, checks, falling)[:1],  # the first firing: the run then changes
        "single_check_would_fire_at": replay(default, checks, falling, patience=1)[:1],
        "ends_without_robustness": summary["ends_without_robustness"],
        "warnings": summary["warnings"],
        "epochs": [{k: r[k] for k in ("epoch", "val_clean_acc", "val_fgsm_acc", "val_robust_acc")} for r in rows],
        "checks": [{k: c[k] for k in CHECK_KEYS} for c in checks],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help='JSON objects of TrainConfig settings with a "_name"')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/guard.json")
    p.add_argument("--fixture", help="also write the recorded checks here (tests/guard_trajectories.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = C.started_at()["commit"]
    print(C.machine_info(), "commit", started, flush=True)
    results = []
    for text in args.configs:
        with tempfile.TemporaryDirectory(prefix="advlab_guard_") as tmp:
            result = run(json.loads(text), Path(tmp))
        results.append(result)
        last = result["epochs"][-1] if result["epochs"] else {}
        print(
            f"{result['name']}: fires at {result['fires_at'] or 'never'}; a single check would fire at "
            f"{result['single_check_would_fire_at'] or 'never'}; last epoch clean/FGSM/PGD "
            f"{100 * last.get('val_clean_acc', 0):.1f}/{100 * last.get('val_fgsm_acc', 0):.1f}/"
            f"{100 * last.get('val_robust_acc', 0):.1f}%; {result['seconds']:.0f} s",
            flush=True,
        )
    C.write_json(args.out, dict(started_at_commit=started, args=vars(args), results=results))
    if args.fixture:
        fixture = {
            "written_by": C.command_line(),
            "commit": started,
            "runs": [{k: r[k] for k in ("name", "settings", "falling_step", "fires_at", "checks")} for r in results],
        }
        Path(args.fixture).write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {args.fixture}")


if __name__ == "__main__":
    main()
