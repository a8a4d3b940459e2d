"""What the documentation shows must run: every `advlab COMMAND --flag` in the README, docs/, BENCHMARKS.md
and the modules' docstrings is a flag that command has, and every `from advlab... import ...` there imports."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from advlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "src" / "advlab").rglob("*.py")),
    *sorted((ROOT / "src" / "advlab" / "presets").rglob("*.toml")),
]
COMMAND = re.compile(r"\badvlab ((?:data )?[a-z]+)((?: +(?:--?[\w-]+|[^\s`#|;&()]+))*)")


def _texts():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":  # docstrings and comments only: code is checked by running it
            tree = ast.parse(text)
            strings = [
                ast.get_docstring(node) or ""
                for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
            ]
            text = "\n".join(strings + [line for line in text.splitlines() if line.lstrip().startswith("#")])
        yield path.relative_to(ROOT), text


def _subcommands():
    parser = build_parser()
    actions = {a.dest: a for a in parser._subparsers._group_actions}  # noqa: SLF001 - argparse has no public API
    commands = dict(actions["command"].choices)
    data = commands.pop("data")
    for name, sub in data._subparsers._group_actions[0].choices.items():  # noqa: SLF001
        commands[f"data {name}"] = sub
    return commands


def test_every_documented_flag_exists():
    commands = _subcommands()
    problems = []
    for where, text in _texts():
        for match in COMMAND.finditer(text):
            command, rest = match.group(1), match.group(2)
            if command not in commands:
                continue  # prose such as "advlab is ..." or "advlab's"
            known = {opt for action in commands[command]._actions for opt in action.option_strings}  # noqa: SLF001
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
                if flag not in known:
                    problems.append(f"{where}: `advlab {command} ... {flag}`")
    assert not problems, "\n".join(problems)


IMPORT = re.compile(r"^\s*from (advlab[\w.]*) import ([\w, ]+)$", re.MULTILINE)


def test_every_documented_import_imports():
    problems = []
    for where, text in _texts():
        for module, names in IMPORT.findall(text):
            try:
                imported = importlib.import_module(module)
            except ImportError as err:
                problems.append(f"{where}: {module} ({err})")
                continue
            problems += [
                f"{where}: from {module} import {n}"
                for n in map(str.strip, names.split(","))
                if n and not hasattr(imported, n) and not _is_module(f"{module}.{n}")
            ]
    assert not problems, "\n".join(problems)


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("path", [p for p in DOCS if p.suffix == ".md"], ids=lambda p: p.name)
def test_documented_paths_exist(path):
    """Files and folders a document points at (`src/...`, `benchmarks/...`, `docs/...`, `scripts/...`)."""
    text = path.read_text(encoding="utf-8")
    missing = [
        p
        for p in re.findall(r"`((?:src|benchmarks|docs|scripts|tests)/[\w./-]+)`", text)
        if not any((ROOT / p).exists() for p in (p, p.rstrip("/")))
    ]
    assert not missing, missing
