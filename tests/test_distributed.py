"""Training and evaluation under torchrun: 2 gloo processes on 127.0.0.1 against one process.

Each test starts real processes (``python -m torch.distributed.run``, i.e. torchrun), so each costs a few
seconds of start-up; the runs are small Fashion-MNIST ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import have_fashion_mnist

pytestmark = pytest.mark.skipif(
    not have_fashion_mnist(), reason="Fashion-MNIST not found ($ADVLAB_DATA, cache, or Debian's dataset-fashion-mnist)"
)

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
# Small runs: 1,000 training images in batches of 64 (16 steps an epoch, the last batch 40), no within-epoch
# checks (co_check_every 0), 200 validation images checked each epoch.
SMALL = {
    "dataset": "fashion-mnist",
    "train_size": 1000,
    "batch_size": 64,
    "epochs": 2,
    "val_size": 400,
    "check_examples": 100,
    "check_steps": 3,
    "co_check_every": 0,
    "seed": 0,
}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 300, extra: tuple[str, ...] = ("--standalone",)):
    command = [sys.executable, "-m", "torch.distributed.run", *extra, f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def advlab(*args: str, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "advlab", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _one_process(config: dict, out: Path) -> dict:
    from advlab.runtime import Runtime
    from advlab.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as each rank's
    try:
        return train(TrainConfig.from_dict(config), out, progress=False, runtime=Runtime("cpu"))
    finally:
        torch.set_num_threads(threads)


def _decisions(summary: dict) -> dict:
    """A summary without its wall times and the files each rank saw when it was made (rank 0 writes them)."""
    return {key: value for key, value in summary.items() if key not in ("seconds", "paths")}


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _steps(run: Path) -> int:
    from advlab.train.state import read_state

    return read_state(run)[1]["progress"]["step"]


@pytest.mark.parametrize("method, loss_tolerance", [("standard", 2e-3), ("fgsm", 0.05)])
def test_two_processes_train_like_one(tmp_path, method, loss_tolerance):
    """Same seed, same global batch: the same optimizer steps, clean accuracy within 1 point, close losses.

    The tolerances: standard training differs from one process only in the order of float sums (two
    half-batch gradients all-reduced instead of one full-batch sum), so its mean training loss agrees
    to 2e-3 over two epochs. FGSM training also draws each rank's random starts from its own stream (rank
    0's is one process's, rank 1's is new), so half the training examples see other random starts: its
    epoch losses agree to 0.05, a few percent of the loss.
    """
    config = {**SMALL, "method": method}
    result = torchrun(WORKER, "train", str(tmp_path / "ddp"), json.dumps(config))
    assert result.returncode == 0, result.stderr[-3000:]
    single = _one_process(config, tmp_path / "one")
    ddp_run, one_run = tmp_path / "ddp" / "run", tmp_path / "one"
    assert _steps(ddp_run) == _steps(one_run) == 2 * 16
    ddp_rows, one_rows = _rows(ddp_run), _rows(one_run)
    assert len(ddp_rows) == len(one_rows) == 2
    for a, b in zip(ddp_rows, one_rows):
        assert abs(a["train_loss"] - b["train_loss"]) <= loss_tolerance, (a["train_loss"], b["train_loss"])
    ddp = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    assert abs(ddp["val_clean_accuracy"] - single["val_clean_accuracy"]) <= 0.01
    # Every rank returned the same summary (the decisions were taken together); only rank 0 wrote files.
    assert _decisions(json.loads((tmp_path / "ddp" / "rank1.json").read_text())) == _decisions(ddp)
    assert json.loads((ddp_run / "summary.json").read_text())["best_epoch"] == ddp["best_epoch"]
    from advlab.train.state import read_state

    tensors, meta = read_state(ddp_run)
    assert meta["world_size"] == 2 and "rank1.rng.attack" in tensors


def test_guard_decides_alike_on_every_rank(tmp_path):
    """A guard that fires (a gap of 0 always shows the signature) stops both ranks at the same check, with
    the same weights restored: the job ends instead of one rank waiting for the other."""
    config = {**SMALL, "method": "fgsm", "epochs": 2, "co_gap": 0.0, "co_check_every": 5, "co_check_examples": 64}
    result = torchrun(WORKER, "train", str(tmp_path), json.dumps(config))
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [_decisions(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert summaries[0] == summaries[1]
    assert summaries[0]["stopped_by_guard"] and summaries[0]["collapses"][0]["rule"] == "signature"


def test_sharded_evaluation_equals_one_process(tmp_path, trained_checkpoint):
    """Deterministic attacks: per-example flags identical to one process's. Random ones: all examples are
    judged, and rank 0's batches (its generator is one process's) agree with one process exactly."""
    result = torchrun(WORKER, "evaluate", str(tmp_path / "ddp"), str(trained_checkpoint))
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "one").mkdir()
    one = subprocess.run(
        [sys.executable, WORKER, "evaluate", str(tmp_path / "one"), str(trained_checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert one.returncode == 0, one.stderr[-3000:]
    ddp, single = (torch.load(tmp_path / d / "rank0.pt") for d in ("ddp", "one"))
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    assert ddp["clean"] == single["clean"] == rank1["clean"]
    deterministic = [key for key in single["per_example"] if key.startswith(("FGSM", "PGD-5 "))]
    assert len(deterministic) == 4, list(single["per_example"])
    for key in ["clean", *deterministic]:
        assert torch.equal(ddp["per_example"][key], single["per_example"][key]), key
        assert torch.equal(rank1["per_example"][key], single["per_example"][key]), key
    assert 0 < sum(int(ddp["per_example"][key].sum()) for key in deterministic) < 4 * 300
    random_key = next(key for key in single["per_example"] if key.startswith("PGD-3"))
    first = slice(0, 64)  # batch 0 is rank 0's
    assert torch.equal(ddp["per_example"][random_key][first], single["per_example"][random_key][first])
    assert len(ddp["per_example"][random_key]) == 300


def test_killed_run_resumes_under_ddp(tmp_path):
    """SIGKILL to the whole job after its first epoch; ``--resume`` under torchrun ends with the very weights
    of a job never interrupted (each rank's random streams are in the state)."""
    args = [
        "-m",
        "advlab",
        "train",
        "--method",
        "fgsm",
        "--train-size",
        "1000",
        "--batch-size",
        "64",
        "--epochs",
        "3",
        "--val-size",
        "400",
        "--check-examples",
        "100",
        "--check-steps",
        "3",
        "--co-check-every",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    whole = torchrun(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
        "--out",
        str(run),
    ]
    job = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not (run / "metrics.jsonl").is_file() or len(_rows(run)) < 1:
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first epoch"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert len(_rows(run)) < 3
    resumed = torchrun(*args, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from advlab.runs import load_checkpoint

    a, b = (load_checkpoint(d / "model.safetensors")[0].state_dict() for d in (tmp_path / "whole", run))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in _rows(run)] == [r["train_loss"] for r in _rows(tmp_path / "whole")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meet_through_c10d(tmp_path):
    """Two torchrun launches of one process each, meeting through c10d rendezvous on 127.0.0.1, train one
    model together (as two machines would, each with its own torchrun)."""
    rendezvous = [
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--rdzv-id",
        "advlab-test",
    ]
    config = json.dumps({**SMALL, "method": "fgsm", "epochs": 1})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "--nproc_per_node=1",
        WORKER,
        "train",
        str(tmp_path),
        config,
    ]
    nodes = [
        subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in outputs]
    summaries = [_decisions(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert summaries[0] == summaries[1] and summaries[0]["epochs_completed"] == 1
    from advlab.train.state import read_state

    assert read_state(tmp_path / "run")[1]["world_size"] == 2


def _one_line_error(stderr: str, words: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("advlab: error:")]
    assert errors and words in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr.split("advlab: error:")[0][-500:]


def test_bad_distributed_input_exits_2(tmp_path, trained_checkpoint):
    rank_env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    common = ["train", "--train-size", "200", "--epochs", "1", "--out", str(tmp_path / "x")]
    for extra, words in (
        (["--dist-backend", "nccl", "--device", "cpu"], "nccl needs CUDA GPUs"),
        (["--device", "cuda"], "no CUDA device"),
    ):
        if "cuda" in extra and torch.cuda.is_available():
            continue
        done = subprocess.run(
            [sys.executable, "-m", "advlab", *common, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env={**_env(), **rank_env},
        )
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        _one_line_error(done.stderr, words)
    # attack and certify are one process's work: refused under torchrun, before any rank waits for another
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "advlab",
            "attack",
            str(trained_checkpoint),
            "--eps",
            "0.1",
            "--out",
            str(tmp_path / "adv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), **rank_env},
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    _one_line_error(done.stderr, "advlab attack runs in one process; start it without torchrun")
    done = advlab(*common, "--dist-backend", "gloo")  # not under torchrun
    assert done.returncode == 2 and "needs several processes" in done.stderr
    assert not (tmp_path / "x").exists()
    # More processes than examples in a batch: every rank refuses, before any training.
    done = torchrun(
        "-m",
        "advlab",
        "train",
        "--train-size",
        "1",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "tiny"),
    )
    assert done.returncode != 0
    assert done.stderr.count("advlab: error: 2 processes but a batch of 1") == 2, done.stderr[-2000:]
    assert not (tmp_path / "tiny").exists()


def test_resume_with_another_world_size_is_refused(tmp_path):
    run = tmp_path / "run"
    done = torchrun(
        "-m",
        "advlab",
        "train",
        "--train-size",
        "300",
        "--epochs",
        "2",
        "--val-size",
        "200",
        "--check-examples",
        "50",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(run),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The state of a finished 2-process run, resumed by one process: refused in one line, files untouched.
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    done = advlab("train", "--resume", "--out", str(run), "--device", "cpu")
    assert done.returncode == 2, done.stderr
    _one_line_error(done.stderr, "trained by 2 process(es) and resumes only with torchrun and 2 processes")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_study_under_torchrun(tmp_path):
    """The tests' tiny study by 2 processes: each model trained by both (DDP) and evaluated on their shares,
    the other stages by rank 0 alone; the report builds from the files."""
    from conftest import TINY_MODELS

    # Two models and the stages that run on rank 0 alone, the arms race and the explorer left out for time.
    changes = {
        "models": {name: TINY_MODELS[name] for name in ("standard", "fgsm")},
        "defenses": [],
        "explorer_size": 0,
        "certify": False,
    }
    result = torchrun(WORKER, "study", str(tmp_path), json.dumps(changes), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert metrics[1] is None  # rank 1 left once the shared stages were done
    study = tmp_path / "study"
    assert json.loads((study / "metrics.json").read_text()) == metrics[0]
    assert set(metrics[0]["models"]) == {"standard", "fgsm"}
    from advlab.train.state import read_state

    for name in ("standard", "fgsm"):
        assert read_state(study / "models" / name)[1]["world_size"] == 2
        assert json.loads((study / "models" / name / "eval.json").read_text())["inputs"]["world_size"] == 2
    from advlab.report import build_report

    assert build_report(study).is_file()


def test_every_method_trains_under_ddp(tmp_path):
    """Each method's passes (two forwards before one backward in TRADES and MART, double backpropagation in
    GradAlign and gradreg, m optimizer steps per batch in free AT, interval bounds through the wrapped
    network in IBP) go through DistributedDataParallel: every run ends, with finite losses, the same
    summary on both ranks, and the same weights (a method whose update bypassed DDP's gradient all-reduce
    would leave each rank with weights of its own data)."""
    config = {**SMALL, "train_size": 256, "epochs": 1, "val_size": 200, "check_examples": 32}
    result = torchrun(WORKER, "methods", str(tmp_path), json.dumps(config), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]) == {"pgd", "trades", "mart", "nfgsm", "gradalign", "free", "gradreg", "gaussian", "ibp"}
    for method, summary in ranks[0].items():
        assert _decisions(summary) == _decisions(ranks[1][method]), method
        assert summary["weights_sha256"] == ranks[1][method]["weights_sha256"], method
        assert summary["epochs_completed"] == 1, method
        rows = _rows(tmp_path / method)
        assert all(row["train_loss"] == row["train_loss"] and row["train_loss"] < 100 for row in rows), method


def test_evaluate_command_under_torchrun(tmp_path, trained_checkpoint):
    """README's `torchrun ... -m advlab evaluate ... --images N`: rank 0 writes the one result file, whose
    FGSM figures (no random start) equal one process's."""
    args = [
        "evaluate",
        str(trained_checkpoint),
        "--attack",
        "fgsm",
        "--eps",
        "0.05,0.1",
        "--images",
        "300",
        "--device",
        "cpu",
        "--quiet",
    ]
    done = torchrun("-m", "advlab", *args, "--out", str(tmp_path / "ddp.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    one = advlab(*args, "--out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr[-2000:]
    ddp, single = (json.loads((tmp_path / name).read_text()) for name in ("ddp.json", "one.json"))
    assert ddp["runtime"]["world_size"] == 2 and ddp["n"] == single["n"] == 300
    assert ddp["robust_accuracy"] == single["robust_accuracy"] and ddp["clean_accuracy"] == single["clean_accuracy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.json", "one.json"]
