"""Shared helpers for the advlab benchmarks: the cached standard model, data, timing, machine info."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from advlab.data import load_dataset
from advlab.models import create_model

HERE = Path(__file__).resolve().parent

DEFAULT_MODEL = "/tmp/advlab_bench_small_cnn_fmnist.pt"


def base_parser(description: str, *, n: int, repeats: int, batch_size: int, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n", type=int, default=n, help="number of test images")
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats (median reported)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--out", default=out, help="JSON results file")
    p.add_argument("--model", default=DEFAULT_MODEL, help="cached standard small_cnn (trained if missing)")
    p.add_argument("--quick", action="store_true", help="≤2-minute smoke run")
    return p


def git_commit() -> str:
    """The commit the benchmark ran at, with "+dirty" if the working tree had uncommitted changes to tracked files."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE, check=True
        ).stdout.strip()
        # Result files are what a run writes: only a change to the code makes the measured tree "dirty".
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)benchmarks/results"],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def command_line() -> str:
    """How this script was started, as one shell line (what a result file must hold to be reproducible)."""
    import shlex

    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(HERE.parent)
    except ValueError:
        pass
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


_STARTED: dict[str, str] = {}


def started_at() -> dict[str, str]:
    """The commit and date when this benchmark started (taken once, the first time anything asks, which
    the scripts do before measuring): a long run's result names the code that ran, not a later checkout."""
    if not _STARTED:
        _STARTED["commit"] = git_commit()
        _STARTED["started"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return dict(_STARTED)


def provenance() -> dict:
    """Command, commit (at the start), date and machine: what every committed result file holds."""
    return {"command": command_line(), **machine_info(), **started_at()}


def machine_info() -> dict:
    model_name = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        memory = next(
            f"{int(line.split()[1]) / 2**20:.0f} GiB" for line in open("/proc/meminfo") if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        memory = "unknown"
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "memory": memory,
        "bf16": bf16_support(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def bf16_support() -> str:
    """What this CPU offers bf16 autocast, from /proc/cpuinfo's flags: AVX512-BF16 and AMX, yes or no."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "CPU flags unknown"
    return (
        f"avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
        f"amx_bf16 {'yes' if 'amx_bf16' in flags else 'no'} (/proc/cpuinfo)"
    )


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def standard_model(path: str | Path = DEFAULT_MODEL, *, seed: int = 0, log=print) -> torch.nn.Module:
    """small_cnn trained 1 epoch with Adam (lr 1e-3, batch 128) on Fashion-MNIST train; cached at ``path``."""
    path = Path(path)
    model = create_model("small_cnn", dataset="fashion-mnist")
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    log(f"training the standard small_cnn (1 epoch Adam) -> {path}")
    torch.manual_seed(seed)
    train = load_dataset("fashion-mnist", "train", download=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for x, y in train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(seed)):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    log(f"  trained in {time.perf_counter() - t0:.1f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def test_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("fashion-mnist", "test", download=False)
    return data.subset(min(n, len(data))).tensors()


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def median_seconds(fn, repeats: int, *, warmup: int = 1) -> float:
    """The median wall time of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def median(values) -> float:
    return statistics.median(values)


def table(header: list[str], rows: list[list], *, align_left: int = 1) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for k, r in enumerate(cells):
        out.append(
            "| "
            + " | ".join(c.ljust(w) if i < align_left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            + " |"
        )
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def write_json(path: str | Path, payload: dict) -> None:
    """Write a result file, its provenance (command, commit, date, machine) first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance(), **payload}, indent=2, default=str))
    print(f"wrote {path}")


started_at()  # on import, which is when a benchmark starts
