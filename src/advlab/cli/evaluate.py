"""``advlab evaluate``: clean and robust accuracy over attacks and ε, the per-example worst case."""

from __future__ import annotations

import argparse
from pathlib import Path

from advlab.cli.common import (
    add_common,
    add_device,
    add_sources,
    add_threat,
    attack_help,
    data_source,
    model_source,
    parse_number,
    parse_numbers,
    positive_int,
    runtime_of,
    seed,
    threat_model,
    training_note,
)

EPILOG = """examples:
  advlab evaluate runs/standard --attack fgsm --attack pgd20 --eps 0.1
  advlab evaluate runs/pgd --attack fgsm --attack pgd50x10 --eps 0.05,0.1,0.15 --out runs/pgd/eval.json
  advlab evaluate runs/pgd --attack pgd20-l2 --eps 0.5,1,2 --n 1000
  advlab evaluate runs/pgd --attack pgd20-margin --attack pgd20-targeted3 --eps 0.1
  advlab evaluate runs/pgd --suite standard --eps 0.1 --n 1000 --out runs/pgd/aa.json
  advlab evaluate runs/mnist --attack pgd50x10 --step-ratio 1/30 --eps 0.3   # a paper's α = 0.01
  advlab evaluate runs/standard --defense bits:bits=4 --attack pgd50 --attack pgd50-bpda --eps 0.1
  advlab evaluate --model-from my_pkg.nets:build --weights net.safetensors --data folder:photos --eps 8/255
attack names take -l2 for L2, -margin for the margin loss, -dlr for the DLR loss, -targeted to attack every
other class in turn (-targetedK: the K most likely), -bpda to attack through a --defense (its backward pass
the identity), -eotK to average each gradient over K passes of a random model
model warnings: a model in train mode, probability outputs, zero/NaN gradients, a random forward pass, fewer
than 4 classes, or a gradient-free attack beating the gradient ones (advlab.model_warnings)
"""


def add(commands) -> None:
    from advlab.attacks.suites import suite_help
    from advlab.evaluate import DEFAULT_BATCH, POOL

    p = commands.add_parser(
        "evaluate",
        help="clean and robust accuracy over attacks and ε, per-example worst case",
        description="clean and robust accuracy over attacks and ε, per-example worst case",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sources(p)
    add_threat(p)
    p.add_argument(
        "--attack",
        action="append",
        help=f"attack to run; repeat for several (default: fgsm and pgd20). Attacks: {attack_help()}",
    )
    p.add_argument(
        "--suite",
        help=f"a chain of attacks for one trustworthy number: {suite_help()}; --attack adds "
        "attacks after it, and the whole evaluation then chains",
    )
    p.add_argument(
        "--eps",
        type=parse_numbers,
        help="comma-separated ε values, e.g. 0.05,0.1 (required, except with minimum-norm attacks alone: "
        "fmn, fmn-t, fab, fab-t, cw and deepfool give every ε from one run)",
    )
    p.add_argument(
        "--step-ratio",
        type=parse_number,
        help="step size of the --attack attacks that take one, as a "
        "fraction of ε, e.g. 1/30 for a paper's α = 0.01 at ε = 0.3 (default: each attack's rule, "
        "2.5/steps for PGD)",
    )
    p.add_argument(
        "--n",
        "--images",
        dest="n",
        type=positive_int,
        help="evaluate the first N test images (default: "
        "all; under torchrun write --images, which torchrun does not take for its --nnodes)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"images per attack batch (default: what fits half the free memory, ≤ {DEFAULT_BATCH}); the "
        f"evaluation works through pools of {POOL} batches, each attack on what a pool still holds",
    )
    _add_order(p)
    p.add_argument("--seed", type=seed, default=0, help="seed for random starts, 0 to 2^63 - 1 (default 0)")
    p.add_argument(
        "--out",
        type=Path,
        help="write the results as JSON to this file; the progress is kept in "
        "OUT.state.safetensors meanwhile, so the same command resumes an interrupted evaluation",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--plot",
        type=Path,
        help="draw robust accuracy against ε to this PNG (a minimum-norm attack's whole curve, the others' points)",
    )
    add_device(
        p,
        precision="arithmetic of the attacks' passes: fp32 (default, the reference), bf16 autocast (CPU "
        "with AVX512-BF16/AMX, or CUDA) or fp16 autocast (CUDA); examples are judged in fp32",
        distributed=True,
    )
    add_common(p)
    p.set_defaults(func=run)


def _add_order(p: argparse.ArgumentParser) -> None:
    """Which examples each attack runs on: --chain and --no-early-stop."""
    p.add_argument(
        "--chain",
        action="store_true",
        help="run each attack only on examples that earlier attacks "
        "left robust (fastest; per-attack numbers become cumulative)",
    )
    p.add_argument(
        "--no-early-stop",
        action="store_true",
        help="the naive evaluation, for benchmarks: attack every "
        "example with every step and restart, even those already fooled (much slower)",
    )


def curve_table(label: str, curve: dict) -> str:
    """A minimum-norm attack's curve as two rows of text: ε, and robust accuracy there."""
    eps = "  ".join(f"{e:>6.4g}" for e in curve["eps"])
    acc = "  ".join(f"{100 * a:>5.1f}%" for a in curve["robust_accuracy"])
    median = curve["median_norm"]
    return (
        f"{label}: robust accuracy at every ε from one run (median smallest adversarial "
        f"{'none found' if median is None else f'{median:.4g}'})\n  eps  {eps}\n  acc  {acc}"
    )


def run(args: argparse.Namespace) -> int:
    from advlab.attacks import parse_attack
    from advlab.errors import AdvlabError
    from advlab.jobs import evaluate_checkpoint
    from advlab.jobs.evaluate import minimum_norm_curves
    from advlab.runs import training_outcome

    source, data, threat = model_source(args), data_source(args, args.n), threat_model(args, args.eps or ())
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise AdvlabError(f"--plot writes a PNG; give a path ending in .png, got {args.plot}")
    training_note(args)
    names = args.attack or ([] if args.suite else ["fgsm", "pgd20"])
    attacks = [parse_attack(name, norm=args.norm, step_ratio=args.step_ratio) for name in names]
    runtime = runtime_of(args)
    result = evaluate_checkpoint(
        source,
        data,
        threat,
        attacks=attacks,
        suite=args.suite,
        out=args.out,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        chain=args.chain,
        early_stop=not args.no_early_stop,
        seed=args.seed,
        progress=not args.quiet,
        runtime=runtime,
    )
    if not runtime.main:
        return 0
    if args.eps:
        print(result.table())
    curves = minimum_norm_curves(result, args.eps or ()) if result.minimal_norms else {}
    for label, curve in curves.items():
        print(curve_table(label, curve))
    if args.plot is not None:
        from advlab.files import atomic_write_bytes
        from advlab.report.figures import evaluation_curve_figure, figure_bytes

        top = max([*(args.eps or ()), *(max(c["eps"]) for c in minimum_norm_curves(result).values())], default=0)
        dense = {  # the plot draws each minimum-norm curve whole: 101 points up to the last ε of interest
            label: {"eps": grid, "robust_accuracy": result.minimal_curve(label, grid)}
            for label in result.minimal_norms
            for grid in [[top * k / 100 for k in range(101)]]
        }
        evaluation = {**result.to_dict(), "minimum_norm": dense, "per_eps": bool(args.eps)}
        atomic_write_bytes(args.plot, figure_bytes(evaluation_curve_figure(evaluation)))
        print(f"wrote {args.plot}")
    for warning in result.model_warnings:
        print(f"warning ({warning['flag']}): {warning['message']}")
    outcome = training_outcome(args.checkpoint) if args.checkpoint is not None else None
    if outcome and outcome["collapsed"]:
        print(f"warning: the guard caught catastrophic overfitting in this model's training: {outcome['message']}")
    for note in outcome["warnings"] if outcome else []:
        print(f"warning: this model's training says: {note}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
