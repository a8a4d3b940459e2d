"""The house rules of docs/architecture.md, checked on the code: imports run one way, modules stay small,
and nothing of advlab's is found through a registry it never imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "advlab"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

# The rows of docs/architecture.md's table, from the bottom up: a module may import only what stands in a
# lower row, or a sibling in its own package.
LAYERS = [
    ("errors.py", ["advlab.errors"]),
    ("the package root", ["advlab"]),
    ("presets/", ["advlab.presets"]),
    ("files.py", ["advlab.files"]),
    ("tensor_files.py", ["advlab.tensor_files"]),
    ("schema.py", ["advlab.schema"]),
    ("results.py", ["advlab.results"]),
    ("distributed.py", ["advlab.distributed"]),
    ("runtime.py", ["advlab.runtime"]),
    ("memory.py", ["advlab.memory"]),
    ("data/", ["advlab.data"]),
    ("models.py", ["advlab.models"]),
    ("defenses/", ["advlab.defenses"]),
    ("runs.py", ["advlab.runs"]),
    ("user_model.py", ["advlab.user_model"]),
    ("attacks/", ["advlab.attacks"]),
    ("certify/", ["advlab.certify"]),
    ("model_warnings.py", ["advlab.model_warnings"]),
    ("tally.py", ["advlab.tally"]),
    ("verdicts.py", ["advlab.verdicts"]),
    ("evaluate.py", ["advlab.evaluate"]),
    ("eval_state.py", ["advlab.eval_state"]),
    ("jobs/", ["advlab.jobs"]),
    ("verify.py", ["advlab.verify"]),
    ("train/", ["advlab.train"]),
    ("masking_attacks.py", ["advlab.masking_attacks"]),
    ("masking.py", ["advlab.masking"]),
    ("study/", ["advlab.study"]),
    ("report/", ["advlab.report"]),
    ("cli/", ["advlab.cli"]),
    ("__main__.py", ["advlab.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = ["advlab", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> tuple[int, str]:
    """(layer index, the unit it belongs to) of an advlab module, by its longest listed prefix."""
    best = None
    for index, (_, units) in enumerate(LAYERS):
        for unit in units:
            inside = module == unit or (unit != "advlab" and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    assert best is not None, f"{module} belongs to no layer: add it to docs/architecture.md and LAYERS"
    return best


def _imports(path: Path) -> set[str]:
    """Every advlab module imported anywhere in the file, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("advlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("advlab"):
            found.add(node.module)
    return found


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_one_way(path):
    module = _module_name(path)
    rank, unit = _rank(module)
    for imported in _imports(path):
        if imported == "advlab":
            continue  # the package root holds only the version and the error type
        other_rank, other_unit = _rank(imported)
        assert other_rank < rank or other_unit == unit, (
            f"{module} ({LAYERS[rank][0]}) imports {imported} ({LAYERS[other_rank][0]}), which stands "
            "above it or beside it: see docs/architecture.md"
        )


def test_measurement_never_imports_presentation():
    """The issue's own words, checked directly: attacks, evaluate, train, data and models import no report."""
    for path in MODULES:
        if _module_name(path).split(".")[1:2] in (
            ["attacks"],
            ["evaluate"],
            ["train"],
            ["data"],
            ["models"],
            ["masking"],
            ["runs"],
        ):
            assert not any(i.startswith(("advlab.report", "advlab.cli", "advlab.study")) for i in _imports(path)), path


def test_no_module_outgrows_a_room():
    """At most about 400 lines, unless docs/architecture.md names the module and says why."""
    allowed = set(re.findall(r"`src/advlab/([\w/]+\.py)` \(\d+ lines\)", ARCHITECTURE.read_text(encoding="utf-8")))
    too_big = {
        str(p.relative_to(SRC)): n for p in MODULES if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert set(too_big) <= allowed, f"over 400 lines without a reason in docs/architecture.md: {too_big}"


def test_the_doc_lists_the_rooms_in_the_tests_order():
    """docs/architecture.md's table, read top to bottom, is LAYERS read bottom to top."""
    rows = re.findall(r"^\|[^|]*\| `([\w/.]+)` \|", ARCHITECTURE.read_text(encoding="utf-8"), re.MULTILINE)
    assert rows == [name for name, _ in reversed(LAYERS) if name != "the package root"]


def test_architecture_doc_names_every_room():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for path in MODULES:
        if path.name == "__init__.py" and path.parent != SRC:
            name = f"{path.parent.relative_to(SRC)}/"
        elif path.name == "__init__.py":
            continue
        else:
            name = str(path.relative_to(SRC))
        assert f"`{name}`" in text or f"`{Path(name).name}`" in text, f"docs/architecture.md does not place {name}"


def _functions():
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_functions_stay_short_and_take_few_positional_arguments():
    """No function in src/ over 80 lines (a screenful) or with more than 6 positional parameters (past that,
    a call passes values by position that a reader cannot tell apart: keyword-only, or one value)."""
    long, wide = [], []
    for path, node in _functions():
        where = f"{path.relative_to(SRC)}:{node.lineno} {node.name}"
        if node.end_lineno - node.lineno + 1 > 80:
            long.append(f"{where} ({node.end_lineno - node.lineno + 1} lines)")
        positional = node.args.posonlyargs + node.args.args
        if positional and positional[0].arg in ("self", "cls"):
            positional = positional[1:]
        if len(positional) > 6:
            wide.append(f"{where} ({len(positional)} positional)")
    assert not long and not wide, long + wide


def test_no_import_cycle():
    """No two modules import each other, directly or round a longer loop, by any import: at the top, inside a
    function, or behind TYPE_CHECKING."""
    graph = {_module_name(path): {m for m in _imports(path) if m != "advlab"} for path in MODULES}
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        visiting.add(module)
        for dep in sorted(graph[module]):
            if dep in visiting:
                cycles.append(trail[trail.index(dep) :] + [dep] if dep in trail else [module, dep])
            elif dep not in done:
                visit(dep, trail + [dep])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles
