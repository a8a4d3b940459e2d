"""Shared fixtures: small models and data that need no download."""

from __future__ import annotations

import pytest
import torch
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
