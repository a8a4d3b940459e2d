"""The ``advlab`` command line: a thin layer that parses flags, calls one library function and prints.

    advlab train --method pgd --eps 0.1 --epochs 10 --out runs/pgd
    advlab train --preset quick --out runs/train-quick
    advlab attack runs/pgd --attack pgd20 --eps 0.1 --out runs/pgd/attack
    advlab evaluate runs/pgd --attack fgsm --attack pgd50x10 --eps 0.05,0.1,0.2
    advlab evaluate runs/pgd --attack pgd20-margin --eps 0.1 --device cuda --precision bf16
    advlab certify runs/ibp --method ibp --eps 0.1
    advlab verify runs/pgd
    advlab study --preset quick --out runs/quick
    torchrun --standalone --nproc_per_node=2 -m advlab train --preset quick --out runs/ddp
    advlab report runs/quick
    advlab data list
    advlab models

Bad input exits with status 2 and one line on stderr that says what is wrong; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

from advlab.errors import AdvlabError, Preempted

EVAL_BATCH = 256  # advlab.evaluate.DEFAULT_BATCH, kept here so that --help needs no torch import (tested)
DEVICE_HELP = "auto (default: CUDA when present, else CPU), cpu, cuda or cuda:N"  # as advlab.runtime says

EPILOG_TRAIN = """examples:
  advlab train --out runs/standard                          # standard training, Fashion-MNIST, small_cnn
  advlab train --method fgsm --eps 0.1 --epochs 10 --out runs/fast
  advlab train --dataset mnist --method nfgsm --eps 0.3 --out runs/mnist  # the recipe fills in the rest
  advlab train --method pgd --eps 8/255 --dataset cifar10 --out runs/c10  # Rice et al.'s PGD-10 recipe
  advlab train --method fgsm --eps 0.2 --co-remedy fallback --out runs/f2  # go on with PGD if it collapses
  advlab train --list-recipes                                # every recipe, with its source
  advlab train --preset quick --out runs/train-quick        # the quick robust recipe (full: the careful one)
  advlab train --config mine.toml --epochs 20 --out runs/mine  # a TOML [train] table; flags override it
  advlab train --show-preset quick > mine.toml               # start a config of your own from a preset
  advlab train --resume --out runs/fast                      # continue an interrupted run
  advlab train --preset quick --precision bf16 --out runs/q16  # bf16 autocast (CPU with AMX/AVX512-BF16, CUDA)
  advlab train --preset cifar10-fast --device cuda --out runs/c10-fast  # Wong et al.'s CIFAR-10 recipe
  torchrun --standalone --nproc_per_node=2 -m advlab train --preset quick --out runs/ddp  # DDP (README: Scale)
settings left out come from the recipe of the data set and method (--list-recipes); config.json names it.
Adversarial training runs under a catastrophic-overfitting guard: FGSM and PGD accuracy on the same
validation images every --co-check-every steps and every epoch. It fires when --co-patience checks in a
row find PGD accuracy more than --co-threshold below its best, or, once the learning rate has passed its
peak, FGSM accuracy more than --co-gap above PGD accuracy (a run on its way to robustness shows that gap
for a while). A run that ends without robustness, or a model still at chance after epoch 1, is flagged.
"""
EPILOG_ATTACK = """examples:
  advlab attack runs/standard --attack fgsm --eps 0.1 --out runs/standard/fgsm
  advlab attack runs/standard --attack pgd20 --eps 0.1 --n 16 --out runs/standard/pgd
  advlab attack runs/standard --attack pgd50 --eps 0.1 --target 8 --out runs/standard/to-bag
  advlab attack --model-from nets.py:build --weights net.safetensors --data npz:test.npz --eps 0.1 --out adv
attacks: fgsm, noise, pgd (= pgd20), pgdSTEPS, pgdSTEPSxRESTARTS (e.g. pgd50x10), apgd-ce, apgd-dlr,
apgd-t (Auto-PGD, 100 iterations unless named: apgd-ce100x5), square (gradient-free, 5000 queries unless
named: square1000); append -l2 for L2, -margin for the Carlini-Wagner margin loss instead of cross-entropy
"""
EPILOG_EVALUATE = """examples:
  advlab evaluate runs/standard --attack fgsm --attack pgd20 --eps 0.1
  advlab evaluate runs/pgd --attack fgsm --attack pgd50x10 --eps 0.05,0.1,0.15 --out runs/pgd/eval.json
  advlab evaluate runs/pgd --attack pgd20-l2 --eps 0.5,1,2 --n 1000
  advlab evaluate runs/pgd --attack pgd20-margin --attack pgd20-targeted3 --eps 0.1
  advlab evaluate runs/pgd --suite standard --eps 0.1 --n 1000 --out runs/pgd/aa.json
  advlab evaluate runs/standard --defense bits:bits=4 --attack pgd50 --attack pgd50-bpda --eps 0.1
  advlab evaluate --model-from my_pkg.nets:build --weights net.safetensors --data folder:photos --eps 8/255
attacks: fgsm, noise, pgd (= pgd20), pgdSTEPS, pgdSTEPSxRESTARTS (e.g. pgd50x10), apgd-ce, apgd-dlr,
apgd-t (Auto-PGD, 100 iterations unless named: apgd-ce100x5), square (gradient-free, 5000 queries unless
named: square1000); append -l2 for L2, -margin for the margin loss, -dlr for the DLR loss, -targeted to
attack every other class in turn (-targetedK: the K most likely), -bpda to attack through a --defense
(its backward pass the identity), -eotK to average each gradient over K passes of a random model
suites (--suite): standard = apgd-ce100, apgd-t100, square5000 chained; quick = apgd-ce50, apgd-t50-top3;
rand = apgd-ce100-eot20, apgd-dlr100-eot20 (randomized models: each gradient averaged over 20 passes)
model checks: a warning for a model in train mode, probability outputs, zero/NaN gradients, a random forward
pass, fewer than 4 classes, or a gradient-free attack beating the gradient ones (advlab.model_checks)
"""

EPILOG_CERTIFY = """examples:
  advlab certify runs/ibp --method ibp --eps 0.1                 # verified accuracy on the whole test set
  advlab certify runs/ibp --method crown-ibp --eps 0.1           # tighter bounds (no pooling layers), IBP beside
  advlab certify runs/gauss --method smoothing --sigma 0.25 --n 10000 --alpha 0.001 --images 500
A verified example is correct at every point of the L∞ ball, as interval bounds prove; smoothing certifies
an L2 radius per image that holds with probability 1 - alpha (Cohen et al. 2019). Train for it with
`advlab train --method ibp` or `--method gaussian --sigma 0.25`.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (what is wrong and where to look) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_number(text: str) -> float:
    """A float or a fraction such as ``8/255``."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (use e.g. 0.1 or 8/255)") from None


def parse_numbers(text: str) -> list[float]:
    """A comma-separated list of numbers or fractions: ``0.05,0.1,8/255``."""
    return [parse_number(part) for part in text.split(",") if part.strip()]


def _yes_no(text: str) -> bool:
    words = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if text.strip().lower() not in words:
        raise argparse.ArgumentTypeError(f"give yes or no, not {text!r}")
    return words[text.strip().lower()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; the derived seeds add small offsets


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be from 0 to 2^63 - 1, got {value}")
    return value


def _add_device(
    parser: argparse.ArgumentParser, *, precision: bool = False, distributed: bool = False, training: bool = False
) -> None:
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP}")
    if precision:
        what = (
            (
                "arithmetic of training's passes, inner attack included: fp32 (default), bf16 autocast (CPU with "
                "AVX512-BF16/AMX, or CUDA) or fp16 autocast with a gradient scaler (CUDA); weights, optimizer "
                "and the per-epoch checks stay fp32"
            )
            if training
            else (
                "arithmetic of the attacks' passes: fp32 (default, the reference), bf16 autocast "
                "(CPU with AVX512-BF16/AMX, or CUDA) or fp16 autocast (CUDA); examples are judged in fp32"
            )
        )
        parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help=what)
    if distributed:
        parser.add_argument(
            "--dist-backend",
            choices=["auto", "gloo", "nccl"],
            default="auto",
            help="under torchrun: gloo (CPU) or nccl (CUDA GPUs); auto picks by --device (README: Several processes)",
        )


def _runtime(args: argparse.Namespace):
    from advlab.distributed import launched, start
    from advlab.runtime import Runtime

    if not hasattr(args, "dist_backend"):  # attack, certify: one process's work
        if launched():
            raise AdvlabError(
                f"advlab {args.command} runs in one process; start it without torchrun (train, "
                "evaluate and study run under torchrun)"
            )
        return Runtime(device=args.device, precision=getattr(args, "precision", "fp32"))
    import torch.distributed

    joined_before = torch.distributed.is_available() and torch.distributed.is_initialized()
    world, device = start(args.device, args.dist_backend)
    args.world = None if joined_before else world  # main() leaves the job it joined (not a caller's) at the end
    return Runtime(device=device, precision=getattr(args, "precision", "fp32"), world=world)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the data set files (default: $ADVLAB_DATA, "
        "~/.cache/advlab, the Debian system copy, else download)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice, one per core)"
    )


_TRAIN_FLAGS: list[tuple[str, Callable, str]] = [
    ("dataset", str, "fashion-mnist, mnist or cifar10 (default fashion-mnist)"),
    ("model", str, "see `advlab models` (default: the recipe's)"),
    (
        "method",
        str,
        "standard, fgsm (fast AT), nfgsm (N-FGSM), gradalign, pgd (Madry), trades, mart, free, "
        "gradreg (input-gradient regularization), ibp (certified training with interval bounds) or gaussian "
        "(noise training for randomized smoothing) (default standard)",
    ),
    ("eps", parse_number, "training ε in pixel units, L∞; accepts 8/255 (default 0.1)"),
    (
        "alpha",
        parse_number,
        "attack step size (default: the recipe's, else the method's: 1.25ε for fgsm, ε for nfgsm, 2.5ε/steps for pgd)",
    ),
    ("steps", _positive_int, "inner attack steps for pgd, trades and mart (default: the recipe's)"),
    ("beta", parse_number, "TRADES / MART trade-off weight β"),
    ("replays", _positive_int, "minibatch replays m of free adversarial training"),
    ("nfgsm_noise", parse_number, "N-FGSM's noise multiplier k: noise from the kε cube (default 2)"),
    ("grad_align_lambda", parse_number, "GradAlign's regularizer weight λ ≥ 0 (default: the recipe's)"),
    ("lam", parse_number, "gradreg's weight λ ≥ 0 on the squared input-gradient norm (default 1)"),
    ("kappa_end", parse_number, "ibp: the clean loss's final weight κ, from 1 as ε ramps up (default 0.5)"),
    ("train_eps", parse_number, "ibp: train the bounds at this ε ≥ --eps (Gowal et al. train 10% above)"),
    ("sigma", parse_number, "gaussian: the training noise's standard deviation (default 0.25)"),
    ("epochs", _positive_int, "training epochs (default: the recipe's)"),
    ("batch_size", _positive_int, "minibatch size (default: the recipe's)"),
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
        _yes_no,
        "yes or no: clip the random start to [0, 1] before the first gradient (default: the "
        "recipe's, as each paper's code: no for Wong et al.'s MNIST FGSM, yes elsewhere)",
    ),
    (
        "augment",
        str,
        "none or crop-flip (4-pixel padded random crop and horizontal flip, as tensor ops; default: "
        "the recipe's, crop-flip on CIFAR-10)",
    ),
    ("seed", _seed, "random seed from 0 to 2^63 - 1 (data order, random starts, initialization)"),
    ("train_size", _positive_int, "train on the first N training images only (quick experiments)"),
    ("val_size", int, "training images held out to track robust accuracy each epoch"),
    ("check_steps", _positive_int, "PGD steps of the per-epoch robustness check"),
    ("check_examples", _positive_int, "validation images attacked by that check each epoch"),
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
    ("co_patience", _positive_int, "checks in a row that must show the collapse before the guard fires (default 3)"),
    (
        "co_check_every",
        int,
        "optimizer steps between the guard's checks within an epoch (default 100; 0: per epoch only)",
    ),
    ("co_check_examples", _positive_int, "validation images of each within-epoch check (default 256)"),
    ("co_remedy", str, "when the guard fires: stop (default), smaller-step (halve α, go on) or fallback"),
    ("fallback_method", str, "the method --co-remedy fallback goes on with (default pgd)"),
]


def _show_preset(kind: str, name: str) -> int:
    from advlab.presets import preset_text

    print(preset_text(kind, name), end="")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from advlab.train import TrainConfig, config_values, train

    if args.list_recipes:
        from advlab.train.recipes import recipe_table

        print(recipe_table())
        return 0
    if args.show_preset:
        return _show_preset("train", args.show_preset)
    if args.out is None:
        raise AdvlabError("--out is required: the run folder to create")
    if args.config and args.preset:
        raise AdvlabError("give either --config or --preset, not both")
    if args.config or args.preset:
        values = config_values(args.config, preset=args.preset)
    elif args.resume and (args.out / "config.json").is_file():
        values = config_values(args.out)  # the run's own settings; flags that change them are refused on resume
    else:
        values = {}  # what the recipe of the data set and method does not decide keeps TrainConfig's default
    overrides = {name: getattr(args, name) for name, _, _ in _TRAIN_FLAGS if getattr(args, name) is not None}
    if args.random_start is not None:
        overrides["random_start"] = args.random_start
    if args.data_dir is not None:
        overrides["data_dir"] = str(args.data_dir)
    config = TrainConfig.from_dict({**values, **overrides})
    runtime = _runtime(args)
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


def _attacks(names: Sequence[str] | None, norm: str, default: Sequence[str], step_ratio: float | None = None):
    from advlab.attacks import parse_attack

    return [parse_attack(name, norm=norm, step_ratio=step_ratio) for name in (names or default)]


def _add_sources(p: argparse.ArgumentParser) -> None:
    """The model (an advlab checkpoint, or the user's factory and weights) and the images to use."""
    p.add_argument(
        "checkpoint",
        type=Path,
        nargs="?",
        help="a run folder or a .safetensors checkpoint (or --model-from and --weights)",
    )
    p.add_argument(
        "--model-from",
        metavar="MODULE:FACTORY",
        help="your own model: a function that returns it, "
        "e.g. my_pkg.nets:build or nets.py:build (imported: run only code you trust)",
    )
    p.add_argument(
        "--weights", type=Path, help="with --model-from: its weights, a .safetensors file (nothing is unpickled)"
    )
    p.add_argument(
        "--model-args",
        metavar="JSON",
        help="with --model-from: keyword arguments for the factory, e.g. '{\"width\": 64}'",
    )
    p.add_argument(
        "--normalize",
        metavar="MEAN,STD",
        help="with --model-from: put (x - MEAN) / STD in front, for a "
        "model trained on normalized input (or M1,M2,M3,S1,S2,S3 per channel)",
    )
    p.add_argument("--dataset", help="fashion-mnist, mnist or cifar10 (default: the one the model was trained on)")
    p.add_argument(
        "--data",
        metavar="folder:PATH|npz:PATH",
        help="your own images: a folder with one subfolder per "
        "class, or an .npz with arrays x and y (README: Evaluate your own model)",
    )
    p.add_argument(
        "--image-size",
        metavar="HxW",
        help="with --data: resize every image to this size (default: the images must share one size)",
    )
    p.add_argument("--classes", metavar="NAMES", help="with --data npz:PATH: comma-separated class names")


def _source(args: argparse.Namespace):
    """What ``_add_sources`` parsed: (the model source, the data set spec, image size, class names)."""
    from advlab.data.user import is_user_data, parse_image_size
    from advlab.user_model import UserModel, parse_model_args, parse_normalize

    extras = [
        flag
        for flag, value in (
            ("--weights", args.weights),
            ("--model-args", args.model_args),
            ("--normalize", args.normalize),
        )
        if value is not None
    ]
    if args.model_from is not None:
        if args.checkpoint is not None:
            raise AdvlabError("give a checkpoint or --model-from, not both")
        if args.weights is None:
            raise AdvlabError("--model-from needs --weights FILE.safetensors (the model's state_dict)")
        source = UserModel(
            args.model_from, args.weights, parse_model_args(args.model_args), parse_normalize(args.normalize)
        )
    elif args.checkpoint is None:
        raise AdvlabError(
            "name the model: a run folder or .safetensors checkpoint, or --model-from MODULE:FACTORY with --weights"
        )
    elif extras:
        raise AdvlabError(f"{extras[0]} goes with --model-from; an advlab checkpoint carries its own")
    else:
        source = args.checkpoint
    if args.data is not None and args.dataset is not None:
        raise AdvlabError("give --dataset (a built-in set) or --data (your images), not both")
    if args.data is not None and not is_user_data(args.data):
        raise AdvlabError(f"--data must be folder:PATH or npz:PATH, got {args.data!r} (built-in sets: --dataset)")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    return source, args.data or args.dataset, parse_image_size(args.image_size), classes


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def _training_note(args: argparse.Namespace) -> None:
    """Say on one line (or with --require-finished, refuse) that the model's training did not finish."""
    from advlab.runs import training_status, unfinished_message

    if args.checkpoint is None:
        return  # a user's model: advlab did not train it
    message = unfinished_message(training_status(args.checkpoint))
    if message and args.require_finished:
        raise AdvlabError(message + " (--require-finished)")
    if message:
        print(f"note: {message}", file=sys.stderr)


def _cmd_attack(args: argparse.Namespace) -> int:
    from advlab.jobs import attack_checkpoint
    from advlab.report import save_attack_gallery

    source, dataset, image_size, classes = _source(args)
    _training_note(args)
    (attack,) = _attacks([args.attack], args.norm, ["pgd20"])
    summary = attack_checkpoint(
        source,
        attack=attack,
        eps=args.eps,
        out=args.out,
        n=args.n,
        target=args.target,
        dataset=dataset,
        split=args.split,
        data_dir=args.data_dir,
        image_size=image_size,
        classes=classes,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=not args.quiet,
        runtime=_runtime(args),
        defenses=args.defense,
    )
    save_attack_gallery(args.out)
    goal = "reached the target" if args.target is not None else "fooled the model"
    print(
        f"{attack.label} at ε = {args.eps:g}: {100 * summary['success_rate']:.1f}% of {summary['n']} "
        f"examples {goal}; wrote {args.out}/gallery.png and {args.out}/adversarial.safetensors"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from advlab.jobs import evaluate_checkpoint
    from advlab.runs import training_outcome

    source, dataset, image_size, classes = _source(args)
    _training_note(args)
    attacks = _attacks(args.attack, args.norm, [] if args.suite else ["fgsm", "pgd20"], args.step_ratio)
    runtime = _runtime(args)
    result = evaluate_checkpoint(
        source,
        attacks=attacks,
        suite=args.suite,
        eps=args.eps,
        n=args.n,
        dataset=dataset,
        split=args.split,
        data_dir=args.data_dir,
        image_size=image_size,
        classes=classes,
        out=args.out,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        chain=args.chain,
        early_stop=not args.no_early_stop,
        seed=args.seed,
        progress=not args.quiet,
        runtime=runtime,
        norm=args.norm,
        defenses=args.defense,
    )
    if not runtime.main:
        return 0
    print(result.table())
    for flag in result.flags:
        print(f"warning ({flag['flag']}): {flag['message']}")
    outcome = training_outcome(args.checkpoint) if args.checkpoint is not None else None
    if outcome and outcome["collapsed"]:
        print(f"warning: the guard caught catastrophic overfitting in this model's training: {outcome['message']}")
    for note in outcome["warnings"] if outcome else []:
        print(f"warning: this model's training says: {note}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    from advlab.jobs import certify_checkpoint

    source, dataset, image_size, classes = _source(args)
    _training_note(args)
    result = certify_checkpoint(
        source,
        method=args.method,
        eps=args.eps,
        sigma=args.sigma,
        n=args.n,
        n0=args.n0,
        alpha=args.alpha,
        images=args.images,
        dataset=dataset,
        split=args.split,
        data_dir=args.data_dir,
        image_size=image_size,
        classes=classes,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        runtime=_runtime(args),
    )
    if args.method == "smoothing":
        radii = ", ".join(f"{100 * v:.1f}% at r = {r}" for r, v in result["certified_accuracy"].items())
        print(
            f"smoothing, sigma = {result['sigma']:g}, n = {result['n']}, alpha = {result['alpha']:g}, "
            f"{result['images']} images: certified accuracy {radii}"
        )
        print(
            f"average certified radius {result['average_certified_radius']:.3f}, abstained on "
            f"{100 * result['abstention_rate']:.1f}%, {result['seconds_per_image']:.2f} s per image"
        )
    else:
        line = (
            f"{args.method} at eps = {args.eps:g} on {result['images']} images: clean "
            f"{100 * result['clean_accuracy']:.2f}%, verified {100 * result['verified_accuracy']:.2f}%"
        )
        if "verified_accuracy_ibp" in result:
            line += f" (IBP alone {100 * result['verified_accuracy_ibp']:.2f}%)"
        print(line)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from advlab.verify import verify_path

    findings = verify_path(args.path)
    for finding in findings:
        print(finding.line())
    damaged = sum(f.status == "damaged" for f in findings)
    print(f"{len(findings)} checked, {damaged} damaged" if damaged else f"{len(findings)} checked, none damaged")
    return 1 if damaged else 0


def _cmd_study(args: argparse.Namespace) -> int:
    from advlab.report import build_report, summary_text
    from advlab.study import load_study_config, run_study

    if args.show_preset:
        return _show_preset("study", args.show_preset)
    config = load_study_config(args.config, preset=args.preset)
    if args.data_dir is not None:
        import dataclasses

        config = dataclasses.replace(config, data_dir=str(args.data_dir))
    out = args.out or Path("runs") / f"study-{config.preset}"
    runtime = _runtime(args)
    metrics = run_study(config, out, overwrite=args.overwrite, progress=not args.quiet, runtime=runtime)
    if not runtime.main:
        return 0  # under torchrun rank 0 draws the report
    report = build_report(out)
    print(summary_text(metrics))
    print(f"report: {report} ({_size(report)}, self-contained)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from advlab.report import build_report

    report = build_report(args.run_dir)
    print(f"report: {report} ({_size(report)}, self-contained)")
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from advlab.data import list_datasets

    rows = list_datasets(args.data_dir)
    print(f"{'name':<14} {'classes':>7}  {'shape':<10} where")
    for row in rows:
        where = (
            f"{row['location']} ({row['source']})"
            if row.get("location")
            else f"not found; `advlab data download {row['name']}`"
        )
        print(f"{row['name']:<14} {row['classes']:>7}  {'×'.join(map(str, row['shape'])):<10} {where}")
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from advlab.data import download_dataset

    path = download_dataset(args.name, args.data_dir, progress=not args.quiet)
    print(f"{args.name}: verified files in {path}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from advlab.models import describe_model, list_models

    for name in list_models():
        print(f"{name:<16} {describe_model(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from advlab import __version__

    parser = _Parser(
        prog="advlab",
        description="Adversarial robustness of image classifiers: attack, defend, "
        "observe. Pixels are in [0, 1]; ε is in pixel units (8/255 is accepted).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--version", action="version", version=f"advlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str, epilog: str = "") -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("train", "train a classifier (standard or adversarial) into a run folder", EPILOG_TRAIN)
    p.add_argument(
        "--out", type=Path, help="run folder to create (refused if it exists, unless --resume or --overwrite); required"
    )
    p.add_argument("--config", type=Path, help="TOML file with training settings (flags override it)")
    p.add_argument(
        "--preset",
        help="a shipped config instead of --config: quick (fast FGSM, minutes) or full "
        "(PGD-10, under an hour on 2 CPU cores) on Fashion-MNIST; mnist-quick (Wong et al.'s fast FGSM, ε = 0.3, "
        "minutes) or "
        "madry-mnist (Madry et al.'s PGD-40, for a GPU); cifar10-fast (Wong et al.'s fast FGSM) or "
        "cifar10-pgd (PGD-10 with Rice et al.'s early stopping), both for a GPU",
    )
    p.add_argument("--show-preset", metavar="NAME", help="print that preset's TOML and exit")
    p.add_argument(
        "--list-recipes",
        action="store_true",
        help="print the default settings of each data set and method, with their sources, and exit",
    )
    for name, kind, help_text in _TRAIN_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=help_text)
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
    _add_device(p, precision=True, distributed=True, training=True)
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    def attack_options(p: argparse.ArgumentParser, distributed: bool = False) -> None:
        _add_sources(p)
        p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="threat model (default linf)")
        p.add_argument("--split", choices=["test", "train"], default="test", help="which split (default test)")
        p.add_argument("--seed", type=_seed, default=0, help="seed for random starts, 0 to 2^63 - 1 (default 0)")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        p.add_argument(
            "--defense",
            action="append",
            default=[],
            metavar="NAME[:KEY=VALUE,...]",
            help="a preprocessing defense in front of the model, repeatable, applied in order: "
            "bits:bits=4, jpeg:quality=75, median:size=3, resize-pad:min_scale=0.8 (attack it with "
            "-bpda, e.g. pgd50-bpda; -eotK for the random one)",
        )
        p.add_argument(
            "--require-finished",
            action="store_true",
            help="refuse a model whose training did not finish (default: a one-line note, also recorded in the output)",
        )
        _add_device(p, precision=True, distributed=distributed)
        _add_common(p)

    p = command("attack", "write adversarial examples and a PNG gallery for a trained model", EPILOG_ATTACK)
    attack_options(p)
    p.add_argument("--attack", default="pgd20", help="attack (default pgd20)")
    p.add_argument("--eps", type=parse_number, required=True, help="ε in pixel units, e.g. 0.1 or 8/255")
    p.add_argument("--n", type=_positive_int, default=8, help="number of test images to attack (default 8)")
    p.add_argument("--target", type=int, help="targeted attack towards this class index")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_cmd_attack)

    p = command("evaluate", "clean and robust accuracy over attacks and ε, per-example worst case", EPILOG_EVALUATE)
    attack_options(p, distributed=True)
    p.add_argument("--attack", action="append", help="attack to run; repeat for several (default: fgsm and pgd20)")
    p.add_argument(
        "--suite",
        help="a chain of attacks for one trustworthy number: standard (APGD-CE, APGD-T, "
        "Square: AutoAttack's without FAB-T), quick (APGD-CE and APGD-T, 50 iterations) or rand (EOT, "
        "for randomized models); --attack adds attacks after it",
    )
    p.add_argument("--eps", type=parse_numbers, required=True, help="comma-separated ε values, e.g. 0.05,0.1")
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
        type=_positive_int,
        help="evaluate the first N test images "
        "(default: all; under torchrun write --images, which torchrun does not take for its --nnodes)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=EVAL_BATCH, help=f"images per batch (default {EVAL_BATCH})"
    )
    p.add_argument(
        "--chain",
        action="store_true",
        help="run each attack only on examples that earlier "
        "attacks left robust (fastest; per-attack numbers become cumulative)",
    )
    p.add_argument(
        "--no-early-stop",
        action="store_true",
        help="the naive evaluation, for benchmarks: attack "
        "every example with every step and restart, even those already fooled (much slower)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="write the results as JSON to this file; the progress is kept in "
        "OUT.state.safetensors meanwhile, so the same command resumes an interrupted evaluation",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = command(
        "certify", "certified robustness: verified accuracy (interval bounds) or smoothing radii", EPILOG_CERTIFY
    )
    _add_sources(p)
    p.add_argument(
        "--method",
        default="ibp",
        help="ibp (default), crown-ibp (tighter; no pooling layers) or "
        "smoothing (randomized smoothing, an L2 radius per image)",
    )
    p.add_argument("--eps", type=parse_number, help="ibp, crown-ibp: the L∞ budget, e.g. 0.1 or 8/255")
    p.add_argument(
        "--sigma",
        type=parse_number,
        help="smoothing: the noise level (default: the σ the model was trained with by --method gaussian)",
    )
    p.add_argument(
        "--n",
        type=_positive_int,
        default=10_000,
        help="smoothing: noise samples per image for the bound (default 10000)",
    )
    p.add_argument("--n0", type=_positive_int, default=100, help="smoothing: samples that pick the class (default 100)")
    p.add_argument(
        "--alpha",
        type=parse_number,
        default=0.001,
        help="smoothing: the certificate fails with probability at most alpha, in (0, 0.5) (default 0.001)",
    )
    p.add_argument(
        "--images", type=_positive_int, help="certify the first N test images (default: all for ibp, 500 for smoothing)"
    )
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split (default test)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1000,
        help="images, or noise samples, per forward pass (default 1000)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed for the noise, 0 to 2^63 - 1 (default 0)")
    p.add_argument("--out", type=Path, help="write the result as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--require-finished", action="store_true", help="refuse a model whose training did not finish")
    _add_device(p)
    _add_common(p)
    p.set_defaults(func=_cmd_certify)

    p = command(
        "study",
        "the trade-off study: train standard and robust models, attack all, write a report",
        """examples:
  advlab study --preset quick --out runs/quick     # minutes on a 2-core CPU (BENCHMARKS.md)
  advlab study --preset full --out runs/full       # the full recipes (hours)
  advlab study --preset quick --out runs/quick     # again: resumes, every finished stage is cached
  advlab study --show-preset quick > mine.toml     # start a study of your own: edit, then
  advlab study mine.toml --out runs/mine
""",
    )
    p.add_argument("config", nargs="?", type=Path, help="study TOML file ([study], [train], [models.NAME])")
    p.add_argument(
        "--preset", help="a shipped study: quick, full or cifar10 (for a GPU) (default quick without CONFIG)"
    )
    p.add_argument("--show-preset", metavar="NAME", help="print that preset's TOML and exit")
    p.add_argument("--out", type=Path, help="run folder (default runs/study-PRESET); an existing one resumes")
    p.add_argument("--overwrite", action="store_true", help="recompute every stage, replacing the folder's files")
    _add_device(p, distributed=True)
    _add_common(p)
    p.set_defaults(func=_cmd_study)

    p = command(
        "report",
        "rebuild report.html and the figures of a study from its saved files",
        "examples:\n  advlab report runs/quick\n",
    )
    p.add_argument("run_dir", type=Path, help="a study run folder (holds metrics.json)")
    p.set_defaults(func=_cmd_report)

    p = command(
        "data",
        "list or download data sets",
        "examples:\n  advlab data list\n"
        "  advlab data download mnist                 # into ~/.cache/advlab, checked against SHA-256\n"
        "  advlab data download cifar10 --data-dir data\n",
    )
    data_commands = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser, required=True)
    q = data_commands.add_parser("list", help="each data set and where its files were found")
    _add_common(q)
    q.set_defaults(func=_cmd_data_list)
    q = data_commands.add_parser("download", help="download a data set and verify its checksums")
    q.add_argument("name", help="fashion-mnist, mnist or cifar10")
    _add_common(q)
    q.set_defaults(func=_cmd_data_download)

    p = command(
        "verify",
        "check a run folder or checkpoint: checksums, weights, records, finished training",
        "examples:\n  advlab verify runs/pgd\n  advlab verify runs/quick          # every model of a study\n"
        "  advlab verify runs/pgd/model.safetensors\n"
        "exit status: 0 all intact, 1 a damaged file, 2 nothing to check\n",
    )
    p.add_argument("path", type=Path, help="a run folder (every .safetensors under it) or one .safetensors file")
    p.set_defaults(func=_cmd_verify)

    p = command(
        "models",
        "list the model architectures",
        "examples:\n  advlab models\n  advlab train --model madry_cnn --out runs/madry\n",
    )
    p.set_defaults(func=_cmd_models)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"advlab: note: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except AdvlabError as err:
        _say(f"advlab: error: {err}")
        return 2
    except Preempted as err:
        _say(f"advlab: {err}")
        return Preempted.exit_status
    except KeyboardInterrupt:
        _say("advlab: interrupted")
        return 130
    except OSError as err:  # a file problem the library did not foresee: still one line, still exit 2
        where = f" ({err.filename})" if err.filename else ""
        _say(f"advlab: error: {err.strerror or err}{where}")
        return 2
    finally:
        if getattr(args, "world", None) is not None:
            from advlab.distributed import stop

            stop()  # leave the job this command joined under torchrun


def _say(line: str) -> None:
    """One line on stderr, on a line of its own even if a progress bar was drawing on the terminal."""
    prefix = "\r\033[K" if sys.stderr.isatty() else ""
    print(prefix + line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
