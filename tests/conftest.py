"""Shared fixtures: tiny encoders and small images, so the suite stays fast on 2 CPU cores."""

import numpy as np
import pytest
import torch
from torch import nn


class CallCounter:
    """A counter shared by every copy of the module holding it (fit deep-copies encoders)."""

    def __init__(self):
        self.calls = 0
        self.images = 0

    def __deepcopy__(self, memo):
        return self


class TinyEncoder(nn.Module):
    """Mean colour plus a fixed random 3x3 conv, pooled: (N, 3, H, W) -> (N, 11)."""

    def __init__(self, counter=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.counter = counter if counter is not None else CallCounter()

    def forward(self, x):
        self.counter.calls += 1
        self.counter.images += len(x)
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return torch.cat([x.mean(dim=(2, 3)), pooled], dim=1)


@pytest.fixture
def tiny_encoder():
    return TinyEncoder()


@pytest.fixture
def colour_images():
    """24 images 12x12 RGB uint8 in three colour classes, with noise."""
    rng = np.random.default_rng(0)
    base = np.array([[220, 30, 30], [30, 200, 40], [40, 50, 210]])
    labels = np.repeat(np.arange(3), 8)
    images = base[labels][:, None, None, :] + rng.integers(-25, 25, size=(24, 12, 12, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture
def tiny_prep():
    """Preprocessing for the tiny encoder: 8x8 inputs, no crop."""
    return {"size": 8, "crop_pct": 1.0}
