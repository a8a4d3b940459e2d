"""The CIFAR-10 presets on small synthetic data in CIFAR-10's own file format (no download, no real copy)."""

from __future__ import annotations

import json
import subprocess
import sys

from test_data import make_cifar_dir


def test_cifar10_fast_preset_trains_with_crop_flip_in_bf16(tmp_path):
    make_cifar_dir(tmp_path / "data", n=200)  # 1,000 training and 200 test images
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "advlab",
            "train",
            "--preset",
            "cifar10-fast",
            "--data-dir",
            str(tmp_path / "data"),
            "--train-size",
            "256",
            "--epochs",
            "1",
            "--val-size",
            "100",
            "--check-examples",
            "16",
            "--check-steps",
            "2",
            "--co-check-every",
            "0",
            "--precision",
            "bf16",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["recipe"] == "cifar10-wong" and config["model"] == "preact_resnet18"
    assert config["augment"] == "crop-flip" and config["schedule"] == "triangle"
    assert abs(config["alpha"] - 10 / 255) < 1e-9 and abs(config["eps"] - 8 / 255) < 1e-9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 1
    from advlab.runs import load_checkpoint

    model, record = load_checkpoint(out / "model.safetensors")
    assert record["dataset"] == "cifar10"
    assert all(v.dtype.is_floating_point is False or v.dtype.itemsize == 4 for v in model.state_dict().values())


def test_augment_is_a_training_setting(tmp_path):
    from advlab.errors import AdvlabError
    from advlab.train import TrainConfig

    assert TrainConfig(dataset="cifar10", method="fgsm", eps=8 / 255).augment == "crop-flip"
    assert TrainConfig(dataset="fashion-mnist", method="fgsm").augment == "none"
    assert TrainConfig(dataset="cifar10", method="pgd", eps=8 / 255, augment="none").augment == "none"
    try:
        TrainConfig(augment="cutout")
    except AdvlabError as err:
        assert "unknown augment 'cutout'; choose one of: crop-flip, none" in str(err)
    else:
        raise AssertionError("an unknown augmentation was accepted")
