"""Run a command and keep what it printed and what it measured as a result file with its provenance.

Every figure in README.md and BENCHMARKS.md comes from a file under benchmarks/results/ that holds the
command that wrote it, the git commit, the date and the machine. The bench_*.py scripts write theirs
themselves; for a command of advlab's own (a training recipe, a study, an evaluation) this wrapper does:

    .venv/bin/python benchmarks/record.py quick-recipe \\
        --attach runs/quick-recipe/summary.json -- .venv/bin/advlab train --preset quick --out runs/quick-recipe

writes benchmarks/results/quick-recipe.log (everything the command printed, progress bars aside) and
benchmarks/results/quick-recipe.json (provenance, wall time, exit status, peak memory of the command and
the parsed contents of every --attach file, read after the command ends). Several commands can share one
record: separate them with `--then` (each gets its own wall time).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
_PROGRESS = re.compile(r"\r[^\n]*(?=\r|$)")  # tqdm redraws: keep the log readable


def _run(command: list[str], log) -> dict:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        cleaned = _PROGRESS.sub("", line)
        if cleaned.strip():
            log.write(cleaned if cleaned.endswith("\n") else cleaned + "\n")
            log.flush()
    status = process.wait()
    seconds = time.perf_counter() - start
    log.write(f"# exit status {status}, {seconds:.1f} s wall\n")
    return {"command": shlex.join(command), "exit_status": status, "wall_seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="record.py NAME [--attach FILE ...] -- COMMAND [--then COMMAND ...]"
    )
    parser.add_argument("name", help="result name: writes benchmarks/results/NAME.{log,json}")
    parser.add_argument(
        "--attach",
        action="append",
        default=[],
        help="a JSON(L) file the command writes, stored in the record (repeatable)",
    )
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("give the command after --, e.g. record.py NAME -- .venv/bin/advlab ...")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    words = argv[split + 1 :]
    commands, current = [], []
    for word in words:
        if word == "--then":
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    if not all(commands):
        parser.error("give a command after --")
    RESULTS.mkdir(parents=True, exist_ok=True)
    provenance = C.provenance()
    provenance["command"] = C.command_line()
    with open(RESULTS / f"{args.name}.log", "w", encoding="utf-8") as log:
        log.write(f"# {json.dumps(provenance, ensure_ascii=False)}\n")
        runs = []
        for command in commands:
            runs.append(_run(command, log))
            if runs[-1]["exit_status"] != 0:
                break
    attached = {}
    for path in args.attach:
        file = Path(path)
        if not file.is_file():
            attached[path] = None
        elif file.suffix == ".jsonl":
            attached[path] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        else:
            attached[path] = json.loads(file.read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    record = {"provenance": provenance, "runs": runs, "peak_rss_mib_of_children": round(peak, 1), "attached": attached}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")
    print(f"wrote {RESULTS / args.name}.{{log,json}}")
    sys.exit(max(run["exit_status"] for run in runs))


if __name__ == "__main__":
    main()
