"""BENCHMARKS.md's like-for-like table (issue 30), printed from the aa-standard-*.json result files.

    .venv/bin/python benchmarks/aa_table.py benchmarks/results/aa-standard-pgd.json ...

One row per file: the model (and advlab's precision when not fp32, its pool of batches where the file
records one), images and ε, both robust accuracies,
both times and each attack's share of them (advlab's / the reference's seconds), the two bars, and the
commit that ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHORT = {"APGD-CE": "APGD-CE", "APGD-T": "APGD-T", "FAB-T": "FAB-T", "Square": "Square"}


def _shares(ours: dict, theirs: dict) -> str:
    parts = []
    for name in SHORT:
        mine = next((s for label, s in ours.items() if label.startswith(name + "-")), None)
        if mine is not None and name in theirs:
            parts.append(f"{name} {mine:.0f}/{theirs[name]:.0f}")
    return ", ".join(parts)


def row(path: Path) -> str:
    data = json.loads(path.read_text())
    r, commit = data["result"], data["provenance"]["commit"][:7]
    ours, theirs = r["advlab_standard"], r["autoattack_standard"]
    holds = r["holds"]
    bars = " / ".join("yes" if holds[k] else "**no**" for k in holds)
    model = r["model"] + (f" ({ours['precision']} passes)" if ours.get("precision", "fp32") != "fp32" else "")
    model += f" (pool {ours['pool']})" if "pool" in ours else ""  # files from before pooling have no "pool"
    return (
        f"| {model} | {r['n']}, ε = {r['eps']:g} | {100 * ours['robust_accuracy']:.1f}% | "
        f"{100 * theirs['robust_accuracy']:.1f}% | {r['difference_points']:+.1f} | {ours['seconds']:.0f} s | "
        f"{theirs['seconds']:.0f} s | {r['time_ratio']:.2f} | "
        f"{_shares(ours['attack_seconds'], theirs['attack_seconds'])} | {bars} | [{commit}]({path.as_posix()}) |"
    )


def main() -> None:
    print("| model | images | advlab | AutoAttack | points | advlab time | AutoAttack time | ratio | "
          "seconds per attack, advlab/AutoAttack | ≤ +0.1 / ≤ 1/3 | file |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sys.argv[1:]:
        print(row(Path(name)))


if __name__ == "__main__":
    main()
