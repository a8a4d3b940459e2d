"""Checkpoints: a record that cannot rebuild the model is refused with the project's error, not a crash."""

from __future__ import annotations

import pytest
import torch

from advlab.errors import AdvlabError
from advlab.models import create_model
from advlab.runs import load_checkpoint, save_checkpoint


def test_save_checkpoint_needs_a_record_that_rebuilds_the_model(tmp_path):
    model = create_model("linear", in_channels=1, num_classes=3, height=4, width=4)
    with pytest.raises(AdvlabError, match="must name the model and its arguments"):
        save_checkpoint(tmp_path / "m.safetensors", model, {"model": "linear"})
    assert not (tmp_path / "m.safetensors").exists()
    args = {"in_channels": 1, "num_classes": 3, "height": 4, "width": 4}
    save_checkpoint(tmp_path / "m.safetensors", model, {"model": "linear", "model_args": args})
    loaded, record = load_checkpoint(tmp_path / "m.safetensors", device="cpu")
    assert record["model_args"] == args and not loaded.training
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))
