"""The fault suite (issue 14): the real CLI as a subprocess, stopped by SIGTERM, SIGKILL or SIGINT in the
middle of an epoch, then resumed, must end bit-identical to a run never stopped; damaged files are refused
with one line; a full disk names the path and leaves nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advlab.tensor_files import load_tensors

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("ADVLAB_DATA"),
    reason="needs Fashion-MNIST",
)

# Two short epochs of fast FGSM training: about 3 s of work on one thread, 40 batches per epoch.
TRAIN = [
    "train",
    "--method",
    "fgsm",
    "--eps",
    "0.1",
    "--epochs",
    "2",
    "--train-size",
    "2560",
    "--batch-size",
    "64",
    "--val-size",
    "100",
    "--check-examples",
    "50",
    "--threads",
    "1",
]


def _advlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "advlab", *args]


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(_advlab(*args), capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run never interrupted."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    done = _run(*TRAIN, "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def _same_run(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "best.safetensors", "state.safetensors"):
        ta, _ = load_tensors(a / name)
        tb, _ = load_tensors(b / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert ta[key].dtype == tb[key].dtype and ta[key].equal(tb[key]), f"{name}: {key} differs"
    rows = [
        [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in (a, b)
    ]
    assert rows[0] == rows[1]


def _stop_mid_training(out: Path, sig: int, *extra: str) -> subprocess.Popen:
    """Start the training and send ``sig`` once it is well into its batches."""
    # SIGINT back to its default in the child: a shell that starts the tests in the background (`cmd &`)
    # ignores it, the child would inherit that, and Python would never raise KeyboardInterrupt.
    process = subprocess.Popen(
        _advlab(*TRAIN, "--out", str(out), *extra),
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in process.stderr:  # the bars and the log go to stderr; training starts after the recipe line
        if line.startswith("recipe "):
            break
    time.sleep(1.0)
    process.send_signal(sig)
    process.stderr.read()
    process.wait(timeout=120)
    return process


def test_sigterm_saves_mid_epoch_and_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    process = _stop_mid_training(out, signal.SIGTERM)
    assert process.returncode == 143
    _, meta = load_tensors(out / "state.safetensors")
    position = json.loads(meta["advlab_state"])["position"]
    assert position["batches"] > 0  # saved in the middle of an epoch
    done = _run(*TRAIN, "--out", str(out), "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def test_sigkill_after_a_mid_epoch_save_resumes_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    process = _stop_mid_training(out, signal.SIGKILL, "--save-every", "0.001")  # a save every 60 ms
    assert process.returncode == -signal.SIGKILL
    assert (out / "state.safetensors").is_file()
    done = _run(*TRAIN, "--out", str(out), "--save-every", "0.001", "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def test_sigint_exits_130_and_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    process = _stop_mid_training(out, signal.SIGINT)
    assert process.returncode == 130
    done = _run(*TRAIN, "--out", str(out), "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def test_truncated_and_flipped_checkpoints_are_refused(tmp_path, reference):
    for damage in ("truncate", "flip"):
        run = tmp_path / damage
        shutil.copytree(reference, run)
        path = run / "model.safetensors"
        raw = bytearray(path.read_bytes())
        if damage == "truncate":
            raw = raw[: len(raw) - 100]
        else:
            raw[-5] ^= 0x04  # a bit of the last tensor's bytes
        path.write_bytes(bytes(raw))
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        done = _run("evaluate", str(run / "model.safetensors"), "--eps", "0.1", "--n", "10", "--quiet")
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "damaged" in done.stderr or "corrupt" in done.stderr
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing changed
        verify = _run("verify", str(run))
        assert verify.returncode == 1 and "damaged" in verify.stdout


def test_a_malformed_config_of_a_run_is_one_line(tmp_path, reference):
    """config.json is what a resume trains by: unreadable, it is refused in one line that names it, and the
    run folder is left as it was."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "config.json").write_text("{not json")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    done = _run(*TRAIN, "--out", str(run), "--resume", "--quiet")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "config.json is not a readable JSON file" in done.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_malformed_summary_is_written_again_from_the_state(tmp_path, reference):
    """summary.json is an output, not an input: a resume of a finished run writes it again from the
    checksummed training state, whatever was there."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "summary.json").write_text(json.dumps({"finished": "yes"}))
    done = _run(*TRAIN, "--out", str(run), "--resume", "--quiet")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    again, first = (json.loads((folder / "summary.json").read_text()) for folder in (run, reference))
    places = ("run_dir", "paths", "seconds")  # where the copy lives, and the time of the call
    assert again["finished"] is True and {k: v for k, v in again.items() if k not in places} == {
        k: v for k, v in first.items() if k not in places
    }


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="a small tmpfs needs root")
def test_a_full_disk_names_the_path_and_leaves_nothing_half_written(tmp_path, reference):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "attack"
        done = _run("attack", str(reference), "--eps", "0.1", "--n", "2000", "--out", str(out), "--quiet")
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert str(disk) in done.stderr  # the error names where it could not write
        leftovers = [p.name for p in out.iterdir()] if out.exists() else []
        assert not [n for n in leftovers if n.endswith(".tmp") or n == "adversarial.safetensors"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_resume_state_with_a_mistyped_field_is_one_line(tmp_path, reference):
    from advlab.tensor_files import save_tensors

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    tensors, meta = load_tensors(run / "state.safetensors")
    state = json.loads(meta["advlab_state"])
    state["progress"]["epoch"] = "1"  # a string where the epoch count belongs, with valid checksums
    save_tensors(run / "state.safetensors", tensors, metadata={"advlab_state": json.dumps(state)})
    done = _run(*TRAIN, "--out", str(run), "--resume", "--quiet")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "training state field epoch must be an integer, got '1'" in done.stderr


def test_a_malformed_summary_is_refused_naming_file_and_field(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "summary.json").write_text(json.dumps({"finished": "yes", "epochs_completed": 2}))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    done = _run("evaluate", str(run), "--eps", "0.1", "--n", "10", "--quiet")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "summary.json" in done.stderr and "finished must be true or false or none, got 'yes'" in done.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
