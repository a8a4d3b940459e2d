"""Run under torchrun by tests/test_distributed.py: what every rank of a job sees, written per rank.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py train OUT CONFIG_JSON
    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py evaluate OUT CHECKPOINT
    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py study OUT CHANGES_JSON

``train``: trains CONFIG_JSON (TrainConfig values) into OUT/run and writes each rank's returned summary to
OUT/rank{R}.json, so that a test can check that the ranks took the same decisions (the guard's, the best
epoch). ``evaluate``: evaluates CHECKPOINT on 300 test images with deterministic and random attacks and
writes each rank's per-example flags to OUT/rank{R}.pt. ``methods``: trains every other method briefly (CONFIG_JSON:
the shared settings) and writes the summaries.
``study``: runs the tests' tiny study (conftest's
``tiny_config``, with CHANGES_JSON's changes) into OUT/study and writes each rank's returned metrics to
OUT/rank{R}.json. Without
torchrun it runs as one process (rank 0).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from advlab.distributed import start, stop
from advlab.runtime import Runtime


def main(task: str, out: str, arg: str) -> None:
    torch.set_num_threads(1)
    world, device = start("cpu")
    runtime = Runtime(device=device, world=world)
    rank = world.rank if world is not None else 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if task == "train":
        from advlab.train import TrainConfig, train

        summary = train(TrainConfig.from_dict(json.loads(arg)), out / "run", progress=False, runtime=runtime)
        (out / f"rank{rank}.json").write_text(json.dumps(summary))
    elif task == "methods":  # every training method for a few steps: DDP takes each one's passes
        from advlab.train import TrainConfig, train
        from advlab.train.trainer import Trainer

        finish = Trainer.finish

        def finish_with_weights(trainer):  # each rank's own final weights: a method that bypasses
            summary = finish(trainer)  # DDP's gradient all-reduce leaves the ranks with different ones
            values = [t.detach().double().flatten() for t in trainer.model.state_dict().values()]
            summary["weights_sha256"] = hashlib.sha256(torch.cat(values).numpy().tobytes()).hexdigest()
            return summary

        Trainer.finish = finish_with_weights

        base = json.loads(arg)
        methods = {
            "pgd": {"steps": 2},
            "trades": {"steps": 2},
            "mart": {"steps": 2},
            "nfgsm": {},
            "gradalign": {},
            "free": {"replays": 2},
            "gradreg": {},
            "gaussian": {},
            "ibp": {"model": "wong_mnist", "clean_epochs": 0.0, "eps_warmup_epochs": 0.0},
        }
        summaries = {}
        for method, extra in methods.items():
            config = TrainConfig.from_dict({**base, "method": method, **extra})
            summaries[method] = train(config, out / method, progress=False, runtime=runtime)
        (out / f"rank{rank}.json").write_text(json.dumps(summaries))
    elif task == "study":
        from conftest import tiny_config

        from advlab.study import run_study

        metrics = run_study(tiny_config(**json.loads(arg)), out / "study", progress=False, runtime=runtime)
        (out / f"rank{rank}.json").write_text(json.dumps(metrics))
    else:
        from advlab.attacks import AttackSpec
        from advlab.data import load_dataset
        from advlab.evaluate import evaluate
        from advlab.runs import load_checkpoint

        model = load_checkpoint(arg)[0]
        data = load_dataset("fashion-mnist", "test", download=False, progress=False).subset(300)
        attacks = [
            AttackSpec("fgsm"),
            AttackSpec("pgd", steps=5, random_start=False),
            AttackSpec("pgd", steps=3, random_start=True),
        ]
        result = evaluate(
            model,
            data,
            attacks=attacks,
            eps=[0.05, 0.1],
            batch_size=64,
            runtime=runtime,
            progress=False,
            keep_per_example=True,
        )
        torch.save(
            {
                "per_example": result.per_example,
                "robust": result.robust,
                "clean": result.clean_accuracy,
                "worst": result.worst_case,
            },
            out / f"rank{rank}.pt",
        )
    stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
