"""A wheel built from the checkout, installed non-editable into a fresh virtual environment, works outside
the source tree: its presets are package data, not files of the checkout. Offline: the wheel is built
without build isolation and installed with --no-index; torch and the other dependencies are reached
through a path file pointing at this interpreter's site-packages, so nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import have_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not found")


def _run(args, cwd, check=True, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(advlab console script, python, a working folder outside the source tree)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so that building leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            wheels,
            source,
        ],
        cwd=tmp,
    )
    (wheel,) = wheels.glob("advlab-*.whl")
    env_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=tmp)
    python = env_dir / "bin" / "python"
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip()
    )
    # torch, numpy, ... from this environment, without its editable advlab (a plain path, no nested .pth).
    (site / "zz_advlab_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    return env_dir / "bin" / "advlab", python, work


def test_the_wheel_is_what_runs(venv):
    advlab, python, work = venv
    where = _run(
        [
            python,
            "-c",
            "import advlab, advlab.presets as p; print(advlab.__file__); "
            "print(p.preset_names('study'), p.preset_names('train'))",
        ],
        cwd=work,
    ).stdout.splitlines()
    assert str(python.parents[1]) in where[0] and str(ROOT / "src") not in where[0]
    shipped = {
        kind: sorted(f.stem for f in (ROOT / "src/advlab/presets" / kind).glob("*.toml")) for kind in ("study", "train")
    }
    assert (
        "madry-mnist" in shipped["train"] and where[1] == f"{shipped['study']} {shipped['train']}"
    )  # all of them ship


def test_presets_ship_inside_the_wheel(venv):
    advlab, _, work = venv
    for kind in ("study", "train"):
        shown = _run([advlab, kind, "--show-preset", "quick"], cwd=work).stdout
        assert shown == (ROOT / "src" / "advlab" / "presets" / kind / "quick.toml").read_text(encoding="utf-8")
    # The study preset resolves and is validated before the run folder is refused (no 3-minute run here).
    (work / "taken").mkdir()
    (work / "taken" / "notes.txt").write_text("mine")
    refused = _run([advlab, "study", "--preset", "quick", "--out", work / "taken"], cwd=work, check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr, refused.stderr
    unknown = _run([advlab, "study", "--preset", "huge", "--out", work / "new"], cwd=work, check=False)
    assert (
        unknown.returncode == 2 and "unknown study preset 'huge'; choose one of: cifar10, full, quick" in unknown.stderr
    )


@needs_data
def test_train_preset_from_the_wheel(venv):
    advlab, _, work = venv
    _run(
        [
            advlab,
            "train",
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--train-size",
            "300",
            "--val-size",
            "100",
            "--check-examples",
            "50",
            "--check-steps",
            "2",
            "--out",
            work / "quick",
            "--quiet",
        ],
        cwd=work,
    )
    import json

    config = json.loads((work / "quick" / "config.json").read_text())["config"]
    assert (config["method"], config["lr"], config["epochs"]) == ("fgsm", 0.002, 1)  # the preset, then the flags


TINY_STUDY = """
[study]
dataset = "fashion-mnist"
train_eps = 0.1
eps_grid = [0.0, 0.1, 0.3]
attacks = ["fgsm", "pgd5"]
check_dlr = "apgd-dlr10"
check_square = "square100"
suite = "quick"
n_eval = 40
defenses = ["bits:bits=4"]
arms_race_attack = "pgd5"
arms_race_eot = 2
arms_race_n = 20
smoothing_n = 200
smoothing_n0 = 20
smoothing_alpha = 0.01
smoothing_images = 8
gallery_size = 3

[train]
model = "small_cnn"
epochs = 1
train_size = 400
val_size = 100
check_examples = 40
check_steps = 2

[models.standard]
method = "standard"

[models.fgsm]
method = "fgsm"

[models.gauss]
method = "gaussian"
sigma = 0.25
"""


@needs_data
def test_a_study_from_the_wheel(venv):
    """Every stage of a study and its report, run by the installed wheel outside the tree, on a tiny budget."""
    advlab, _, work = venv
    (work / "tiny.toml").write_text(TINY_STUDY, encoding="utf-8")
    _run([advlab, "study", work / "tiny.toml", "--out", work / "tiny", "--quiet"], cwd=work, timeout=900)
    assert (work / "tiny" / "report.html").is_file()
    import json

    metrics = json.loads((work / "tiny" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"standard", "fgsm", "gauss"} and metrics["n_eval"] == 40


@pytest.mark.slow
@needs_data
def test_quick_study_from_the_wheel(venv):
    """The issue's own check: `advlab study --preset quick` from a wheel, outside the tree (five minutes)."""
    advlab, _, work = venv
    _run([advlab, "study", "--preset", "quick", "--out", work / "study", "--quiet"], cwd=work, timeout=1800)
    assert (work / "study" / "report.html").is_file()
