"""``advlab attack``: adversarial examples of a few images and a PNG gallery of them."""

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
    positive_int,
    runtime_of,
    seed,
    threat_model,
    training_note,
)

EPILOG = """examples:
  advlab attack runs/standard --attack fgsm --eps 0.1 --out runs/standard/fgsm
  advlab attack runs/standard --attack pgd20 --eps 0.1 --n 16 --out runs/standard/pgd
  advlab attack runs/standard --attack pgd50 --eps 0.1 --target 8 --out runs/standard/to-bag
  advlab attack --model-from nets.py:build --weights net.safetensors --data npz:test.npz --eps 0.1 --out adv
  advlab attack --model-from torchvision.models:resnet50 --model-args '{"weights": "IMAGENET1K_V2"}' \
      --normalize imagenet --preprocess imagenet --classes imagenet_classes.txt --data image:panda.jpg \
      --eps 1/255 --target gibbon --out panda     # torchvision downloads the weights: your choice
"""


def add(commands) -> None:
    p = commands.add_parser(
        "attack",
        help="write adversarial examples and a PNG gallery for a trained model",
        description="write adversarial examples and a PNG gallery for a trained model",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sources(p)
    add_threat(p)
    p.add_argument("--attack", default="pgd20", help=f"the attack (default pgd20). Attacks: {attack_help()}")
    p.add_argument("--eps", type=parse_number, required=True, help="ε in pixel units, e.g. 0.1 or 8/255")
    p.add_argument("--n", type=positive_int, default=8, help="number of test images to attack (default 8)")
    p.add_argument(
        "--target", metavar="CLASS", help="targeted attack towards this class: an index or a name (e.g. gibbon)"
    )
    p.add_argument("--seed", type=seed, default=0, help="seed for random starts, 0 to 2^63 - 1 (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device(
        p,
        precision="arithmetic of the attack's passes: fp32 (default, the reference), bf16 autocast (CPU "
        "with AVX512-BF16/AMX, or CUDA) or fp16 autocast (CUDA); examples are judged in fp32",
    )
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from advlab.attacks import parse_attack
    from advlab.jobs import attack_checkpoint
    from advlab.report import save_attack_gallery, save_photo_figure

    source, data, threat = model_source(args), data_source(args, args.n), threat_model(args, [args.eps])
    training_note(args)
    attack = parse_attack(args.attack, norm=args.norm)
    summary = attack_checkpoint(
        source,
        data,
        threat,
        attack=attack,
        out=args.out,
        target=args.target,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=not args.quiet,
        runtime=runtime_of(args),
    )
    save_attack_gallery(args.out)
    drawn = f"{args.out}/gallery.png"
    if str(args.data or "").startswith("image:"):  # photos: the Goodfellow-style figure with the top-5 names
        save_photo_figure(args.out)
        drawn += f", {args.out}/figure.png (and .svg)"
    goal = "reached the target" if args.target is not None else "fooled the model"
    print(
        f"{attack.label} at ε = {args.eps:g}: {100 * summary['success_rate']:.1f}% of {summary['n']} examples "
        f"{goal}; wrote {drawn} and {args.out}/adversarial.safetensors"
    )
    return 0
