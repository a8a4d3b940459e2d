"""Print BENCHMARKS.md's "Reproducing the papers" rows from the committed result files, so that every
figure in that table is read from a file, never typed: ``benchmarks/results/repro-*.json`` (written by
``benchmarks/record.py`` around ``benchmarks/reproduce.sh``) and the Fashion-MNIST ``fmnist-*.json``.

    .venv/bin/python benchmarks/repro_table.py            # markdown rows, one per run, and the seed means
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def runs(record: dict) -> dict[str, dict[str, dict]]:
    """The attached files of one record, by run folder name: {"mnist-fgsm-s0": {"summary.json": {...}}}."""
    out: dict[str, dict[str, dict]] = {}
    for path, content in (record.get("attached") or {}).items():
        parts = Path(path).parts
        if content is not None:
            out.setdefault(parts[-2], {})[parts[-1]] = content
    return out


def last(curve: dict, label_start: str) -> float | None:
    """The suite's number (its last, cumulative column) or the named attack's, at the only ε."""
    labels = [label for label in curve if label.startswith(label_start)] if label_start else list(curve)
    return curve[labels[-1]][0] if labels else None


def row(name: str, files: dict[str, dict], sources: list[tuple[str, str]]) -> str:
    summary = files.get("summary.json", {})
    pgd = files.get("eval-pgd50x10.json")
    suite = next((v for k, v in files.items() if k.startswith("eval-standard")), None)
    ibp, crown = files.get("certify-ibp.json"), files.get("certify-crown-ibp.json")
    clean = (pgd or ibp or {}).get("clean_accuracy")
    cells = [
        name,
        pct(clean),
        pct(last(pgd["robust_accuracy"], "PGD")) if pgd else "–",
        f"{pct(last(suite['robust_accuracy'], ''))} (first {suite['n']})" if suite else "–",
        pct(ibp["verified_accuracy"]) if ibp else "–",
        pct(crown["verified_accuracy"]) if crown else "–",
        _guard(summary),
        f"{summary['seconds']:.0f}" if "seconds" in summary else "–",
        ", ".join(f"[`{result}`](benchmarks/results/{result}) ({commit[:7]})" for result, commit in sources),
    ]
    return "| " + " | ".join(cells) + " |"


def _guard(summary: dict) -> str:
    if not summary or summary.get("method") in ("standard", "ibp", "crown-ibp"):
        return "–"  # no attack in training, so no guard
    collapses = summary.get("collapses") or []
    if not collapses:
        return "never fired" + ("; ends without robustness" if summary.get("ends_without_robustness") else "")
    first = collapses[0]
    where = f"epoch {first.get('epoch')}" + (f", step {first['step']}" if first.get("step") else "")
    if summary.get("remedy") == "stop" or summary.get("stopped_by_guard"):
        return f"fired at {where}; stopped, last good weights kept"
    return f"fired at {where}; {summary.get('remedy')} → {summary.get('final_method')}"


def main() -> None:
    columns = ["run", "clean", "PGD-50×10", "`--suite standard`", "IBP verified", "CROWN-IBP verified", "guard"]
    print("| " + " | ".join([*columns, "train s", "file"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    seeds: dict[str, list[float]] = {}
    table: dict[str, dict] = {}
    for path in sorted(RESULTS.glob("repro-*.json")) + sorted(RESULTS.glob("fmnist-*.json")):
        record = json.loads(path.read_text())
        for name, files in runs(record).items():
            entry = table.setdefault(name, {"files": {}, "sources": []})
            entry["files"].update(files)
            entry["sources"].append((path.name, record["provenance"]["commit"]))
    for name, entry in sorted(table.items()):
        print(row(name, entry["files"], entry["sources"]))
        pgd = entry["files"].get("eval-pgd50x10.json")
        suite = next((v for k, v in entry["files"].items() if k.startswith("eval-standard")), None)
        if name.startswith("mnist-fgsm-s") and pgd:
            seeds.setdefault("PGD-50×10", []).append(last(pgd["robust_accuracy"], "PGD"))
            seeds.setdefault("clean", []).append(pgd["clean_accuracy"])
        if name.startswith("mnist-fgsm-s") and suite:
            seeds.setdefault(f"--suite standard (first {suite['n']})", []).append(last(suite["robust_accuracy"], ""))
    for what, values in seeds.items():
        print(f"\nfgsm seeds, {what}: {_spread(values)}")
    loop = RESULTS / "wong-mnist-loop.json"  # Wong et al.'s own training loop (bench_wong_mnist.py), for comparison
    if loop.is_file():
        record = json.loads(loop.read_text())
        rows = record["results"]
        attack = f"PGD-50×{record['args']['restarts']}, first {record['args']['n']}"
        print(
            f"\nWong et al.'s loop ({loop.name}, {record['provenance']['commit'][:7]}), seeds "
            f"{', '.join(str(r['seed']) for r in rows)}:"
        )
        for what, key in ((attack, "pgd50"), ("clean", "clean")):
            values = [r[key] for r in rows]
            each = " / ".join(pct(v) for v in values)
            print(f"- {what}: {each}; {_spread(values)}")


def _spread(values: list[float]) -> str:
    return (
        f"mean {pct(statistics.mean(values))}, range {100 * min(values):.2f}–{100 * max(values):.2f}% "
        f"({len(values)} seeds)"
    )


if __name__ == "__main__":
    sys.exit(main())
