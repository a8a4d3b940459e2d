"""``advlab certify``: what a registered certifier proves (its flags come from its declared options)."""

from __future__ import annotations

import argparse
from pathlib import Path

from advlab.cli.common import (
    PARSERS,
    add_common,
    add_device,
    add_sources,
    data_source,
    model_source,
    positive_int,
    runtime_of,
    seed,
    training_note,
)

EPILOG = """examples:
  advlab certify runs/ibp --method ibp --eps 0.1                 # verified accuracy on the whole test set
  advlab certify runs/ibp --method crown-ibp --eps 0.1           # tighter bounds (no pooling layers), IBP beside
  advlab certify runs/gauss --method smoothing --sigma 0.25 --n 10000 --alpha 0.001 --images 500
A verified example is correct at every point of the L∞ ball, as interval bounds prove; smoothing certifies
an L2 radius per image that holds with probability 1 - alpha (Cohen et al. 2019). Train for it with
`advlab train --method ibp` or `--method gaussian --sigma 0.25`.
"""


def add(commands) -> None:
    from advlab.certify import CERTIFIERS
    from advlab.certify.registry import certifier_help, certifier_options

    p = commands.add_parser(
        "certify",
        help="certified robustness: verified accuracy (interval bounds) or smoothing radii",
        description="certified robustness: verified accuracy (interval bounds) or smoothing radii",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sources(p)
    p.add_argument("--method", default="ibp", help=f"the certifier: {certifier_help()} (default ibp)")
    for name, option in certifier_options().items():
        takers = " and ".join(c.name for c in CERTIFIERS.values() if option in c.options)
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=PARSERS[option.kind], help=f"{takers}: {option.help}"
        )
    p.add_argument("--images", type=positive_int, help="certify the first N test images (default: all; smoothing 500)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1000,
        help="images, or noise samples, per forward pass (default 1000)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed for the noise, 0 to 2^63 - 1 (default 0)")
    p.add_argument(
        "--cross-check",
        action="store_true",
        help="attack the examples the bound verified (PGD-50 from 5 starts); one broken is an error, exit status 1 "
        "(ibp and crown-ibp)",
    )
    p.add_argument("--out", type=Path, help="write the result as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_device(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from advlab.certify import get_certifier
    from advlab.certify.registry import certifier_options
    from advlab.jobs import certify_checkpoint

    certifier = get_certifier(args.method)
    source, data = model_source(args), data_source(args, args.images)
    training_note(args)
    options = {name: getattr(args, name) for name in certifier_options()}
    result = certify_checkpoint(
        source,
        data,
        method=args.method,
        options=options,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        runtime=runtime_of(args),
        cross_check=args.cross_check,
    )
    print(certifier.describe(result))
    if "cross_check" in result:
        check = result["cross_check"]
        print(f"cross-check: {check['attack']} broke none of the {check['verified']} verified images")
    if args.out:
        print(f"wrote {args.out}")
    return 0
