"""``advlab train``: a run folder from a config, a preset or flags (each method's own flags come from its
declared settings, :mod:`advlab.train.methods`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from advlab.cli.common import (
    PARSERS,
    add_common,
    add_device,
    parse_number,
    positive_int,
    runtime_of,
    seed,
    show_preset,
    yes_no,
)
from advlab.errors import AdvlabError

EPILOG = """examples:
  advlab train --out runs/standard                          # standard training, Fashion-MNIST, small_cnn
  advlab train --method fgsm --eps 0.1 --epochs 10 --out runs/fast
  advlab train --dataset mnist --method fgsm --eps 0.3 --out runs/mnist  # the recipe fills in the rest
  advlab train --method pgd --eps 8/255 --dataset cifar10 --out runs/c10  # Rice et al.'s PGD-10 recipe
  advlab train --method fgsm --eps 0.2 --co-remedy fallback --out runs/f2  # go on with PGD if it collapses
  advlab train --list-recipes                                # every recipe, with its source
  advlab train --preset quick --out runs/train-quick        # the quick robust recipe (full: the careful one)
  advlab train --config mine.toml --epochs 20 --out runs/mine  # a TOML [train] table; flags override it
  advlab train --show-preset quick > mine.toml               # start a config of your own from a preset
  advlab train --resume --out runs/fast                      # continue an interrupted run
  advlab train --preset quick --precision bf16 --out runs/q16  # bf16 autocast (CPU with AMX/AVX512-BF16, CUDA)
  advlab train --preset cifar10-fast --device cuda --out runs/c10-fast  # Wong et al.'s CIFAR-10 recipe (not run here)
  torchrun --standalone --nproc_per_node=2 -m advlab train --preset quick --out runs/ddp  # DDP (README: Scale)
settings left out come from the recipe of the data set and method (--list-recipes); config.json names it.
Adversarial training runs under a catastrophic-overfitting guard: FGSM and PGD accuracy on the same
validation images every --co-check-every steps and every epoch. It fires when --co-patience checks in a
row find PGD accuracy more than --co-threshold below its best, or, once the learning rate has passed its
peak, FGSM accuracy more than --co-gap above PGD accuracy (a run on its way to robustness shows that gap
for a while). A run that ends without robustness, or a model still at chance after epoch 1, is flagged.
"""

# The settings of every method, as flags: (TrainConfig field, parser, help). Each method's own come from its
# declarations (advlab.train.methods.Setting).
FLAGS: list[tuple[str, Callable, str]] = [
    ("dataset", str, "fashion-mnist, mnist or cifar10 (default fashion-mnist)"),
    ("model", str, "see `advlab models` (default: the recipe's)"),
    ("eps", parse_number, "training ε in pixel units, L∞; accepts 8/255 (default 0.1)"),
    (
        "alpha",
        parse_number,
        "attack step size (default: the recipe's, else the method's: 1.25ε for fgsm, ε for nfgsm, 2.5ε/steps for pgd)",
    ),
    ("steps", positive_int, "inner attack steps for pgd, trades and mart (default: the recipe's)"),
    ("epochs", positive_int, "training epochs (default: the recipe's)"),
    ("batch_size", positive_int, "minibatch size (default: the recipe's)"),
    ("optimizer", str, "sgd or adam (default: the recipe's)"),
    ("lr", parse_number, "peak learning rate (default: the recipe's)"),
    ("momentum", parse_number, "SGD momentum (default: the recipe's)"),
    ("weight_decay", parse_number, "L2 weight decay (default: the recipe's)"),
    ("schedule", str, "learning-rate schedule: onecycle, triangle, piecewise or constant"),
    ("eps_warmup_epochs", parse_number, "ramp ε up linearly from 0 over this many epochs (default: the recipe's)"),
    (
        "clean_epochs",
        parse_number,
        "train at ε = 0 for this many epochs before the ramp (default: the recipe's; ibp: 1)",
    ),
    (
        "clip_start",
        yes_no,
        "yes or no: clip the random start to [0, 1] before the first gradient (default: the "
        "recipe's, as each paper's code: no for Wong et al.'s MNIST FGSM, yes elsewhere)",
    ),
    (
        "augment",
        str,
        "none or crop-flip (4-pixel padded random crop and horizontal flip, as tensor ops; default: "
        "the recipe's, crop-flip on CIFAR-10)",
    ),
    ("seed", seed, "random seed from 0 to 2^63 - 1 (data order, random starts, initialization)"),
    ("train_size", positive_int, "train on the first N training images only (quick experiments)"),
    ("val_size", int, "training images held out to track robust accuracy each epoch"),
    ("check_steps", positive_int, "PGD steps of the per-epoch robustness check"),
    ("check_examples", positive_int, "validation images attacked by that check each epoch"),
    (
        "co_gap",
        parse_number,
        "catastrophic overfitting: FGSM accuracy above PGD accuracy by more than this (default 0.3)",
    ),
    (
        "co_threshold",
        parse_number,
        "catastrophic overfitting also: validation PGD accuracy this far below its best (default 0.1; 1 turns it off)",
    ),
    ("co_patience", positive_int, "checks in a row that must show the collapse before the guard fires (default 3)"),
    (
        "co_check_every",
        int,
        "optimizer steps between the guard's checks within an epoch (default 100; 0: per epoch only)",
    ),
    ("co_check_examples", positive_int, "validation images of each within-epoch check (default 256)"),
    (
        "co_remedy",
        str,
        "when the guard fires: stop, smaller-step (halve α, go on) or fallback (default: the "
        "recipe's: fallback where fast training is known to collapse, else stop)",
    ),
    ("fallback_method", str, "the method --co-remedy fallback goes on with (default pgd)"),
]
PRESETS = (
    "a shipped config instead of --config: quick (fast FGSM, minutes) or full (PGD-10, under an hour on 2 CPU "
    "cores) on Fashion-MNIST; mnist-quick (Wong et al.'s fast FGSM, ε = 0.3, minutes) or madry-mnist (Madry "
    "et al.'s PGD-40, for a GPU; one epoch run here); cifar10-fast (Wong et al.'s fast FGSM) or cifar10-pgd "
    "(PGD-10 with Rice et al.'s early stopping), both for a GPU and not run here"
)
PRECISION = (
    "arithmetic of training's passes, inner attack included: fp32 (default), bf16 autocast (CPU with "
    "AVX512-BF16/AMX, or CUDA) or fp16 autocast with a gradient scaler (CUDA); weights, optimizer and the "
    "per-epoch checks stay fp32"
)


def add(commands) -> None:
    from advlab.train.methods import declared_settings, method_help

    p = commands.add_parser(
        "train",
        help="train a classifier (standard or adversarial) into a run folder",
        description="train a classifier (standard or adversarial) into a run folder",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, help="run folder to create (refused if it exists, unless --resume or --overwrite); required"
    )
    p.add_argument("--config", type=Path, help="TOML file with training settings (flags override it)")
    p.add_argument("--preset", help=PRESETS)
    p.add_argument("--show-preset", metavar="NAME", help="print that preset's TOML and exit")
    p.add_argument(
        "--list-recipes",
        action="store_true",
        help="print the default settings of each data set and method, with their sources, and exit",
    )
    p.add_argument("--method", help=f"the training method: {method_help()} (default standard)")
    for name, kind, help_text in FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=help_text)
    for name, setting in declared_settings().items():
        default = "the recipe's" if setting.default is None else f"{setting.default}: {setting.why}"
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=PARSERS[setting.kind],
            help=f"{setting.help} (default {default})",
        )
    p.add_argument(
        "--no-random-start",
        dest="random_start",
        action="store_false",
        default=None,
        help="start the training attack at x instead of a random point of the ε-ball",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (from its last "
        "epoch, or from the batch a mid-epoch save or SIGTERM left it at)",
    )
    p.add_argument(
        "--save-every",
        type=parse_number,
        metavar="MINUTES",
        help="also save the training state in the "
        "middle of an epoch this often (SIGTERM always saves at the next batch and exits with status 143)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing run folder")
    add_device(p, precision=PRECISION, distributed=True)
    add_common(p)
    p.set_defaults(func=run)


def config_of(args: argparse.Namespace):
    """The TrainConfig the flags say: a config file's or preset's settings (or a resumed run's own), the
    flags given laid over them."""
    from advlab.train import TrainConfig, config_values
    from advlab.train.methods import declared_settings

    if args.config and args.preset:
        raise AdvlabError("give either --config or --preset, not both")
    if args.config or args.preset:
        values = config_values(args.config, preset=args.preset)
    elif args.resume and (args.out / "config.json").is_file():
        values = config_values(args.out)  # the run's own settings; flags that change them are refused on resume
    else:
        values = {}  # what the recipe of the data set and method does not decide keeps TrainConfig's default
    names = ["method", *(name for name, _, _ in FLAGS), *declared_settings()]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.random_start is not None:
        overrides["random_start"] = args.random_start
    if args.data_dir is not None:
        overrides["data_dir"] = str(args.data_dir)
    return TrainConfig.from_dict({**values, **overrides})


def run(args: argparse.Namespace) -> int:
    from advlab.train import train

    if args.list_recipes:
        from advlab.train.recipes import recipe_table

        print(recipe_table())
        return 0
    if args.show_preset:
        return show_preset("train", args.show_preset)
    if args.out is None:
        raise AdvlabError("--out is required: the run folder to create")
    config = config_of(args)
    runtime = runtime_of(args)
    summary = train(
        config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        runtime=runtime,
        save_every=args.save_every,
    )
    if not runtime.main:
        return 0  # under torchrun rank 0 speaks for the job
    print(f"run folder: {args.out}")
    print(f"  recipe: {config.recipe}")
    for key in (
        "epochs_completed",
        "best_epoch",
        "val_clean_accuracy",
        "val_robust_accuracy",
        "best_val_robust_accuracy",
        "seconds",
    ):
        value = summary.get(key)
        if isinstance(value, float):
            value = f"{100 * value:.2f}%" if "accuracy" in key else f"{value:.1f}"
        if value is not None:
            print(f"  {key.replace('_', ' ')}: {value}")
    if summary.get("catastrophic_overfitting"):
        print(f"  warning: {summary['catastrophic_overfitting_message']}")
    for note in summary.get("warnings", []):
        print(f"  warning: {note}")
    return 0
