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
from typing import Sequence

from advlab.cli import attack, catalogue, certify, evaluate, study, train
from advlab.cli.common import Parser, parse_number, parse_numbers
from advlab.errors import AdvlabError, Preempted

COMMANDS = (train, evaluate, attack, certify, study, catalogue)  # each adds its commands to the parser


def build_parser() -> argparse.ArgumentParser:
    from advlab import __version__

    parser = Parser(
        prog="advlab",
        description="Adversarial robustness of image classifiers: attack, defend, "
        "observe. Pixels are in [0, 1]; ε is in pixel units (8/255 is accepted).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--version", action="version", version=f"advlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add(commands)
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
    finished = False
    try:
        status = args.func(args)
        finished = True
        return status
    except AdvlabError as err:
        _say(f"advlab: error: {err}")
        return getattr(err, "exit_status", 2)
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

            stop(finished=finished)  # leave the job this command joined under torchrun


def _say(line: str) -> None:
    """One line on stderr, on a line of its own even if a progress bar was drawing on the terminal."""
    prefix = "\r\033[K" if sys.stderr.isatty() else ""
    print(prefix + line, file=sys.stderr)


__all__ = ["build_parser", "main", "parse_number", "parse_numbers"]
