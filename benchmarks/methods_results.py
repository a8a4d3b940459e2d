"""Print BENCHMARKS.md's "Every method on the same budget" table from its committed result files, so that
each figure in it is read from a file: the records that ``benchmarks/rerun.sh methods`` writes (two halves,
each with the summary, metrics and PGD-50×10 evaluation of its runs attached).

    .venv/bin/python benchmarks/methods_results.py benchmarks/results/methods-n10000-a.json \\
        benchmarks/results/methods-n10000-b.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_table import runs as attached_by_run  # noqa: E402

ORDER = ("standard", "fgsm", "nfgsm", "gradalign", "pgd", "trades-b1", "trades-b6", "mart", "free", "gradreg")
LABELS = {
    "standard": "standard",
    "fgsm": "fast FGSM AT (`fgsm`)",
    "nfgsm": "N-FGSM (`nfgsm`)",
    "gradalign": "GradAlign (`gradalign`, λ = 0.2)",
    "pgd": "PGD-3 (`pgd`)",
    "trades-b1": "TRADES-3, β = 1",
    "trades-b6": "TRADES-3, β = 6",
    "mart": "MART-3, β = 6",
    "free": "free AT, m = 4 (an epoch: one pass of 4 replays)",
    "gradreg": "gradreg, λ = 1",
}


def runs(paths: list[Path]) -> dict[str, dict]:
    """Each run's attached files and the record (file name, commit) they came from."""
    out: dict[str, dict] = {}
    for path in paths:
        record = json.loads(path.read_text())
        for name, files in attached_by_run(record).items():
            out[name] = {**files, "source": (path.name, record["provenance"]["commit"][:7])}
    return out


def epoch_seconds(metrics: list[dict]) -> tuple[float, float]:
    """The median seconds of one pass over the training data (validation excluded), and their sum."""
    seconds = [row["seconds"] for row in metrics]
    return statistics.median(seconds), sum(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", type=Path, help="methods-n10000-*.json result files")
    table = runs(p.parse_args().records)
    missing = [name for name in ORDER if name not in table]
    if missing:
        raise SystemExit(f"methods_results.py: no run for {', '.join(missing)} in these records")
    standard = epoch_seconds(table["standard"]["metrics.jsonl"])[0]
    fgsm = epoch_seconds(table["fgsm"]["metrics.jsonl"])[0]
    columns = ["method", "clean", "PGD-50×10, ε = 0.1", "training minutes", "epoch (× standard)", "× FGSM"]
    print("| " + " | ".join([*columns, "best epoch", "file"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ORDER:
        run = table[name]
        median, total = epoch_seconds(run["metrics.jsonl"])
        ev = run["eval-pgd50x10-n10000.json"]
        assert ev["n"] == 10000, f"{name}: evaluated on {ev['n']} images"
        file, commit = run["source"]
        print(
            f"| {LABELS[name]} | {100 * ev['clean_accuracy']:.2f}% | {100 * ev['worst_case_accuracy'][0]:.2f}% | "
            f"{total / 60:.1f} | {median:.1f} s ({median / standard:.1f}×) | {median / fgsm:.2f}× | "
            f"{run['summary.json']['best_epoch']} | [`{file}`](benchmarks/results/{file}) ({commit}) |"
        )


if __name__ == "__main__":
    main()
