"""Tiny encoders for tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

import torch
from torch import nn

# Modules whose whole __all__ is public API, documented in docs/api.rst with examples
# (skretrieval.io and .training also export internals the estimators use).
PUBLIC_MODULES = [
    "skretrieval", "skretrieval.encoders", "skretrieval.search", "skretrieval.metrics",
    "skretrieval.plotting", "skretrieval.losses", "skretrieval.heads", "skretrieval.dask",
]


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
