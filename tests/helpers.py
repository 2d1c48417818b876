"""Tiny encoders for tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

import time

import numpy as np
import torch
from torch import nn

from skretrieval import Preprocessing
from skretrieval.encoders import BuiltEncoder, register_encoder

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


class SlowCounter:
    """A :class:`TinyEncoder` counter that prints "batch" at every forward pass, then waits
    ``delay`` seconds: the encoding a test kills half-way (it sees the line, then kills)."""

    images = 0

    def __init__(self, delay: float = 0.2):
        self.delay = delay

    def __deepcopy__(self, memo):
        return self

    @property
    def calls(self):
        return 0

    @calls.setter
    def calls(self, value):
        print("batch", flush=True)
        time.sleep(self.delay)


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


@register_encoder("cli_tiny")
def _cli_tiny(weights=None):
    """The tiny encoder by name: the command line takes encoder names."""
    return BuiltEncoder(TinyEncoder(), Preprocessing(size=8, crop_pct=1.0))


CLI_TINY = ["--encoder", "cli_tiny", "--device", "cpu"]


def reference_scores(queries, gallery, name):
    """Brute-force float64 similarities of every query to every gallery row (numpy)."""
    q, g = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    if name == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    if name == "euclidean":
        return -np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    return q @ g.T
