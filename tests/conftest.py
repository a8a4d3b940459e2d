"""Shared fixtures: small models and data that need no download."""

from __future__ import annotations

import os

import pytest
import torch

# The suite runs on two workers (pytest-xdist, pyproject.toml): one torch thread each, and the same for every
# process a test starts (OMP_NUM_THREADS is inherited), so the two never fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
from torch import nn

from advlab.models import create_model


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", in_channels=1, num_classes=10, mean=(0.5,), std=(0.25,), width=8, hidden=16)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def have_fashion_mnist() -> bool:
    """Whether Fashion-MNIST is anywhere advlab looks without downloading: $ADVLAB_DATA, the cache, Debian's copy."""
    from advlab.data import locate_dataset

    return locate_dataset("fashion-mnist")[0] is not None


def _require_fashion_mnist() -> None:
    if not have_fashion_mnist():
        pytest.skip(
            "Fashion-MNIST not found: apt-get install dataset-fashion-mnist (scripts/setup.sh does), "
            "or point $ADVLAB_DATA at its files"
        )


@pytest.fixture(scope="session")
def fashion_test():
    """The first 500 Fashion-MNIST test images."""
    _require_fashion_mnist()
    from advlab.data import load_dataset

    return load_dataset("fashion-mnist", "test", download=False, progress=False).subset(500)


@pytest.fixture(scope="session")
def trained_model():
    """A standard small CNN trained for one epoch on 10,000 Fashion-MNIST images (~85% accurate, a few s)."""
    _require_fashion_mnist()
    from advlab.data import load_dataset

    data = load_dataset("fashion-mnist", "train", download=False, progress=False).subset(10_000)
    torch.manual_seed(0)
    model = create_model("small_cnn", dataset="fashion-mnist")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for x, y in data.batches(100, shuffle=True, generator=torch.Generator().manual_seed(0)):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_checkpoint(trained_model, tmp_path_factory):
    """``trained_model`` saved as an advlab checkpoint in a run folder."""
    from advlab.runs import save_checkpoint

    run = tmp_path_factory.mktemp("run")
    normalize = trained_model[0]
    record = {
        "model": "small_cnn",
        "dataset": "fashion-mnist",
        "model_args": {
            "dataset": "fashion-mnist",
            "mean": normalize.mean.flatten().tolist(),
            "std": normalize.std.flatten().tolist(),
        },
    }
    save_checkpoint(run / "model.safetensors", trained_model, record)
    return run


# ------------------------------------------------------------------------------ a tiny study, run once

TINY_TRAIN = {
    "model": "small_cnn",
    "optimizer": "adam",
    "lr": 0.003,
    "schedule": "constant",
    "batch_size": 64,
    "epochs": 1,
    "train_size": 600,
    "val_size": 100,
    "check_examples": 50,
    "check_steps": 3,
}
TINY_MODELS = {
    "standard": {"method": "standard", "label": "standard"},
    "fgsm": {"method": "fgsm", "label": "fast FGSM AT"},
    "trades": {"method": "trades", "label": "TRADES β=6", "steps": 2, "beta": 6.0},
    "gauss": {"method": "gaussian", "label": "Gaussian σ=0.25", "sigma": 0.25},
}


def tiny_config(**changes):
    from advlab.study import StudyConfig

    values = dict(
        preset="tiny",
        eps_grid=(0.0, 0.1, 0.5),
        attacks=("fgsm", "pgd5"),
        n_eval=60,
        gallery_size=3,
        train=TINY_TRAIN,
        models=TINY_MODELS,
        check_dlr="apgd-dlr20",
        check_square="square300",
        suite="quick",
        defenses=("bits:bits=4", "resize-pad:min_scale=0.8"),
        arms_race_attack="pgd10",
        arms_race_eot=4,
        arms_race_n=40,
        smoothing_n=300,
        smoothing_n0=20,
        smoothing_alpha=0.01,
        smoothing_images=12,
        explorer_size=12,
    )
    return StudyConfig(**{**values, **changes})


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The tiny study (every stage, its report), shared by the study, explorer and report tests."""
    _require_fashion_mnist()
    from advlab.report import build_report
    from advlab.study import run_study

    out = tmp_path_factory.mktemp("study") / "run"
    metrics = run_study(tiny_config(), out, progress=False)
    build_report(out)
    return out, metrics
