"""``advlab data`` (where each data set is, downloads), ``advlab models`` and ``advlab verify``."""

from __future__ import annotations

import argparse
from pathlib import Path

from advlab.cli.common import Parser, add_common


def add(commands) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = commands.add_parser(
        "data",
        help="list or download data sets",
        description="list or download data sets",
        epilog="examples:\n  advlab data list\n  advlab data download mnist                 # "
        "into ~/.cache/advlab, checked against SHA-256\n  advlab data download cifar10 "
        "--data-dir data\n",
        formatter_class=raw,
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser, required=True)
    q = actions.add_parser("list", help="each data set and where its files were found")
    add_common(q)
    q.set_defaults(func=data_list)
    q = actions.add_parser("download", help="download a data set and verify its checksums")
    q.add_argument("name", help="fashion-mnist, mnist or cifar10")
    add_common(q)
    q.set_defaults(func=data_download)

    help_text = "check a run folder or checkpoint: checksums, weights, records, finished training"
    p = commands.add_parser(
        "verify",
        help=help_text,
        description=help_text,
        formatter_class=raw,
        epilog="examples:\n  advlab verify runs/pgd\n  advlab verify runs/quick          # every "
        "model of a study\n  advlab verify runs/pgd/model.safetensors\nexit status: 0 all "
        "intact, 1 a damaged file, 2 nothing to check\n",
    )
    p.add_argument("path", type=Path, help="a run folder (every .safetensors under it) or one .safetensors file")
    p.set_defaults(func=verify)

    p = commands.add_parser(
        "models",
        help="list the model architectures",
        description="list the model architectures",
        formatter_class=raw,
        epilog="examples:\n  advlab models\n  advlab train --model madry_cnn --out runs/madry\n",
    )
    p.set_defaults(func=models)


def data_list(args: argparse.Namespace) -> int:
    from advlab.data import list_datasets

    print(f"{'name':<14} {'classes':>7}  {'shape':<10} where")
    for row in list_datasets(args.data_dir):
        where = (
            f"{row['location']} ({row['source']})"
            if row.get("location")
            else f"not found; `advlab data download {row['name']}`"
        )
        print(f"{row['name']:<14} {row['classes']:>7}  {'×'.join(map(str, row['shape'])):<10} {where}")
    return 0


def data_download(args: argparse.Namespace) -> int:
    from advlab.data import download_dataset

    path = download_dataset(args.name, args.data_dir, progress=not args.quiet)
    print(f"{args.name}: verified files in {path}")
    return 0


def verify(args: argparse.Namespace) -> int:
    from advlab.verify import verify_path

    findings = verify_path(args.path)
    for finding in findings:
        print(finding.line())
    damaged = sum(f.status == "damaged" for f in findings)
    print(f"{len(findings)} checked, {damaged} damaged" if damaged else f"{len(findings)} checked, none damaged")
    return 1 if damaged else 0


def models(args: argparse.Namespace) -> int:
    from advlab.models import describe_model, list_models

    for name in list_models():
        print(f"{name:<16} {describe_model(name)}")
    return 0
