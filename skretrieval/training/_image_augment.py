"""Train-time image augmentation for ``fine_tune="all"`` (applied to the encoder's input)."""

from __future__ import annotations

import math

import numpy as np
import torch


def random_resized_crop(x: torch.Tensor, rng: np.random.Generator, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop each image of ``(N, C, H, W)`` at a random area and aspect, resized back to (H, W).

    Applied after preprocessing (resize + normalisation), which it commutes with, so it works
    for any encoder input size and needs no padding value. Randomness comes from ``rng``
    alone, so a seed reproduces it.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skretrieval.training import random_resized_crop
    >>> random_resized_crop(torch.rand(2, 3, 16, 16), np.random.default_rng(0)).shape
    torch.Size([2, 3, 16, 16])
    """
    from torchvision.transforms.v2 import functional as TF  # torchvision only when training

    height, width = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(len(x)):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        h = min(height, max(1, round(math.sqrt(area / aspect))))
        w = min(width, max(1, round(math.sqrt(area * aspect))))
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        out[i] = TF.resized_crop(x[i], top, left, h, w, [height, width], antialias=True)
    return out


def build_train_transform(spec):
    """``train_transform=``: ``"crop"`` (random resized crop), None, or a callable ``(x, rng)``."""
    if spec is None:
        return None
    if spec == "crop":
        return random_resized_crop
    if callable(spec):
        return spec
    raise ValueError(f"train_transform={spec!r} is not accepted; use 'crop', None or a callable (x, rng) -> x.")
