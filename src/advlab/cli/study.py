"""``advlab study`` (the trade-off study and its report) and ``advlab report`` (the report again, from the
study's saved files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from advlab.cli.common import add_common, add_device, runtime_of, show_preset, size_of

EPILOG = """examples:
  advlab study --preset quick --out runs/quick     # minutes on a 2-core CPU (BENCHMARKS.md)
  advlab study --preset full --out runs/full       # the full recipes (hours)
  advlab study --preset quick --out runs/quick     # again: resumes, every finished stage is cached
  advlab study --show-preset quick > mine.toml     # start a study of your own: edit, then
  advlab study mine.toml --out runs/mine
"""


def add(commands) -> None:
    help_text = "the trade-off study: train standard and robust models, attack all, write a report"
    p = commands.add_parser(
        "study",
        help=help_text,
        description=help_text,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", type=Path, help="study TOML file ([study], [train], [models.NAME])")
    p.add_argument(
        "--preset", help="a shipped study: quick, full or cifar10 (for a GPU) (default quick without CONFIG)"
    )
    p.add_argument("--show-preset", metavar="NAME", help="print that preset's TOML and exit")
    p.add_argument("--out", type=Path, help="run folder (default runs/study-PRESET); an existing one resumes")
    p.add_argument("--overwrite", action="store_true", help="recompute every stage, replacing the folder's files")
    add_device(p, distributed=True)
    add_common(p)
    p.set_defaults(func=run)

    help_text = "rebuild report.html and the figures of a study from its saved files"
    p = commands.add_parser(
        "report",
        help=help_text,
        description=help_text,
        epilog="examples:\n  advlab report runs/quick\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="a study run folder (holds metrics.json)")
    p.set_defaults(func=report)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from advlab.report import build_report, summary_text
    from advlab.study import load_study_config, run_study

    if args.show_preset:
        return show_preset("study", args.show_preset)
    config = load_study_config(args.config, preset=args.preset)
    if args.data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(args.data_dir))
    out = args.out or Path("runs") / f"study-{config.preset}"
    runtime = runtime_of(args)
    metrics = run_study(config, out, overwrite=args.overwrite, progress=not args.quiet, runtime=runtime)
    if not runtime.main:
        return 0  # under torchrun rank 0 draws the report
    path = build_report(out)
    print(summary_text(metrics))
    print(f"report: {path} ({size_of(path)}, self-contained)")
    return 0


def report(args: argparse.Namespace) -> int:
    from advlab.report import build_report

    path = build_report(args.run_dir)
    print(f"report: {path} ({size_of(path)}, self-contained)")
    return 0
