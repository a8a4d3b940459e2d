"""What the commands share: one-line parse errors, number parsers, the device and runtime flags, and the
model / images / threat flags of ``evaluate``, ``attack`` and ``certify`` turned into the jobs' sources."""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from advlab.errors import AdvlabError

DEVICE_HELP = "auto (default: CUDA when present, else CPU), cpu, cuda or cuda:N"  # as advlab.runtime says
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; the derived seeds add small offsets


class Parser(argparse.ArgumentParser):
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


def yes_no(text: str) -> bool:
    words = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if text.strip().lower() not in words:
        raise argparse.ArgumentTypeError(f"give yes or no, not {text!r}")
    return words[text.strip().lower()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be from 0 to 2^63 - 1, got {value}")
    return value


PARSERS = {float: parse_number, int: int, str: str, bool: yes_no}  # a registry's declared type → its flag's parser


def add_device(parser: argparse.ArgumentParser, *, precision: str | None = None, distributed: bool = False) -> None:
    """``--device``; ``--precision`` with ``precision`` as its help; ``--dist-backend`` for torchrun."""
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP}")
    if precision:
        parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help=precision)
    if distributed:
        parser.add_argument(
            "--dist-backend",
            choices=["auto", "gloo", "nccl"],
            default="auto",
            help="under torchrun: gloo (CPU) or nccl (CUDA GPUs); auto picks by --device (README: Several processes)",
        )


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the data set files (default: $ADVLAB_DATA, "
        "~/.cache/advlab, the Debian system copy, else download)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=positive_int, help="CPU threads for torch (default: torch's choice, one per core)"
    )


def runtime_of(args: argparse.Namespace):
    """Where and in what precision the command computes; under torchrun, the job it joins."""
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


def add_sources(p: argparse.ArgumentParser) -> None:
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
        help="your own model: a function that returns it, e.g. my_pkg.nets:build, nets.py:build or "
        "torchvision.models:resnet50 (imported: run only code you trust; a factory that downloads weights "
        "does so because you asked it to)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="with --model-from: its weights, a .safetensors file (nothing is unpickled); without it the "
        "factory's model is used as it returns it (a pretrained one), recorded by its state dict's SHA-256",
    )
    p.add_argument(
        "--model-args",
        metavar="JSON",
        help="with --model-from: keyword arguments for the factory, e.g. '{\"width\": 64}'",
    )
    p.add_argument(
        "--normalize",
        metavar="MEAN,STD|imagenet",
        help="with --model-from: put (x - MEAN) / STD in front, for a model trained on normalized input "
        "(or M1,M2,M3,S1,S2,S3 per channel; imagenet: the usual ImageNet mean and std)",
    )
    p.add_argument("--dataset", help="fashion-mnist, mnist or cifar10 (default: the one the model was trained on)")
    p.add_argument(
        "--data",
        metavar="folder:PATH|npz:PATH|image:FILE",
        help="your own images: a folder with one subfolder per class, an .npz with arrays x and y, or photos "
        "(image:FILE, image:A.jpg,B.png or image:'photos/*.jpg'; README: Evaluate your own model)",
    )
    p.add_argument(
        "--label",
        metavar="CLASS",
        help="with --data image:: every photo's class, an index or a name (default: the model's own clean "
        "prediction, and the output says so)",
    )
    p.add_argument(
        "--preprocess",
        metavar="NAME",
        help="with --data folder: or image:: prepare each photo as a model family expects: imagenet (shorter "
        "side resized to 256, the central 224x224 cropped; ε is in pixels of the cropped image)",
    )
    p.add_argument(
        "--image-size",
        metavar="HxW",
        help="with --data: resize every image to this size (default: the images must share one size)",
    )
    p.add_argument(
        "--classes",
        metavar="NAMES|FILE",
        help="with --data npz:PATH or image:FILE: the class names, comma-separated or a text file with one "
        "name a line (e.g. ImageNet's 1,000)",
    )
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split (default test)")
    p.add_argument(
        "--require-finished",
        action="store_true",
        help="refuse a model whose training did not finish (default: a one-line note, also recorded in the output)",
    )


def model_source(args: argparse.Namespace):
    """The model ``add_sources`` parsed: an advlab checkpoint or the user's factory and weights."""
    from advlab.jobs import ModelSource
    from advlab.user_model import UserModel, parse_model_args, parse_normalize

    given = [
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
        user = UserModel(
            args.model_from, args.weights, parse_model_args(args.model_args), parse_normalize(args.normalize)
        )
        return ModelSource(user=user)
    if args.checkpoint is None:
        raise AdvlabError(
            "name the model: a run folder or .safetensors checkpoint, or --model-from MODULE:FACTORY (and --weights)"
        )
    if given:
        raise AdvlabError(f"{given[0]} goes with --model-from; an advlab checkpoint carries its own")
    return ModelSource(checkpoint=args.checkpoint)


def data_source(args: argparse.Namespace, n: int | None):
    """The images ``add_sources`` parsed: a built-in data set's split, or the user's folder or npz."""
    from advlab.data.user import is_user_data, parse_image_size
    from advlab.jobs import DataSource

    if args.data is not None and args.dataset is not None:
        raise AdvlabError("give --dataset (a built-in set) or --data (your images), not both")
    if args.data is not None and not is_user_data(args.data):
        raise AdvlabError(
            f"--data must be folder:PATH, npz:PATH or image:FILE, got {args.data!r} (built-in sets: --dataset)"
        )
    return DataSource(
        dataset=args.data or args.dataset,
        split=args.split,
        n=n,
        data_dir=args.data_dir,
        image_size=parse_image_size(args.image_size),
        classes=parse_classes(args.classes),
        preprocess=args.preprocess,
        label=args.label,
    )


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``--classes``: comma-separated names, or a text file with one name a line (blank lines skipped)."""
    if not text:
        return None
    path = Path(text).expanduser()
    if "," not in text and path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            raise AdvlabError(f"--classes {text}: cannot read it as UTF-8 text ({type(err).__name__})") from None
        names = [name for name in names if name]
        if not names:
            raise AdvlabError(f"--classes {text}: the file names no class (one name a line)")
        return tuple(names)
    return tuple(c.strip() for c in text.split(","))


def add_threat(p: argparse.ArgumentParser) -> None:
    """The threat model's norm and the defenses in front of the model (ε is each command's own flag)."""
    from advlab.defenses import defense_help

    p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="threat model (default linf)")
    p.add_argument(
        "--defense",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a preprocessing defense in front of the model, repeatable, applied in order: "
        f"{defense_help()} (attack it with -bpda, e.g. pgd50-bpda; -eotK for a random one)",
    )


def threat_model(args: argparse.Namespace, eps):
    from advlab.jobs import ThreatModel

    return ThreatModel(eps=tuple(eps), norm=args.norm, defenses=tuple(args.defense))


def training_note(args: argparse.Namespace) -> None:
    """Say on one line (or with --require-finished, refuse) that the model's training did not finish."""
    from advlab.runs import training_status, unfinished_message

    if args.checkpoint is None:
        return  # a user's model: advlab did not train it
    message = unfinished_message(training_status(args.checkpoint))
    if message and args.require_finished:
        raise AdvlabError(message + " (--require-finished)")
    if message:
        print(f"note: {message}", file=sys.stderr)


def attack_help() -> str:
    """Every registered attack's spelling and summary, for --help."""
    from advlab.attacks import ATTACKS

    return "; ".join(f"{kind.syntax} ({kind.summary})" for kind in ATTACKS.values())


def size_of(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def show_preset(kind: str, name: str) -> int:
    from advlab.presets import preset_text

    print(preset_text(kind, name), end="")
    return 0
