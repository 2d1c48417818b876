"""Batch augments that mix pairs of samples: Mixup and CutMix (timm/mmpretrain semantics).

Each returns ``(batch, labels, labels_b, lam)``: sample ``i`` is a ``lam : 1 - lam`` mix of
sample ``i`` (label ``labels[i]``) and sample ``perm[i]`` (label ``labels_b[i]``); losses
that accept mixed labels score ``lam * loss(labels) + (1 - lam) * loss(labels_b)``.
"""

from __future__ import annotations

import numpy as np
import torch


class Mixup:
    """Blend every sample with another of the batch: ``lam * x + (1 - lam) * x[perm]``.

    Works on images and on cached features alike. ``lam ~ Beta(alpha, alpha)``.

    Parameters
    ----------
    alpha : float, default=0.8
        Beta distribution parameter.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.training import Mixup
    >>> x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1])
    >>> Mixup().mix(x, y, lam=0.75, perm=[1, 0])
    (tensor([[0.2500],
            [0.7500]]), tensor([0, 1]), tensor([1, 0]), 0.75)
    """

    name = "mixup"
    needs_images = False

    def __init__(self, alpha: float = 0.8):
        if alpha <= 0:
            raise ValueError(f"Mixup alpha must be positive; got {alpha!r}.")
        self.alpha = float(alpha)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator):
        lam = float(rng.beta(self.alpha, self.alpha))
        return self.mix(x, labels, lam, rng.permutation(len(x)))

    def mix(self, x, labels, lam: float, perm):
        perm = torch.as_tensor(np.asarray(perm), device=x.device)
        return lam * x + (1.0 - lam) * x[perm], labels, labels[perm.to(labels.device)], lam

    def __repr__(self):
        return f"Mixup(alpha={self.alpha})"


class CutMix:
    """Paste a box of another sample into every image; ``lam`` is the area kept.

    The box covers about ``1 - lam`` of the image (``lam ~ Beta(alpha, alpha)``), centred at a
    random point and clipped at the borders; ``lam`` is then recomputed from the clipped
    area, so the label weights match the pixels exactly.

    Parameters
    ----------
    alpha : float, default=1.0
        Beta distribution parameter.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.training import CutMix
    >>> x, y = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
    >>> x[1] = 1.0
    >>> mixed, _, y_b, lam = CutMix().mix(x, y, box=(0, 2, 0, 2), perm=[1, 0])
    >>> float(mixed[0].mean()), lam
    (0.25, 0.75)
    """

    name = "cutmix"
    needs_images = True

    def __init__(self, alpha: float = 1.0):
        if alpha <= 0:
            raise ValueError(f"CutMix alpha must be positive; got {alpha!r}.")
        self.alpha = float(alpha)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator):
        lam = float(rng.beta(self.alpha, self.alpha))
        height, width = x.shape[-2:]
        cut_h, cut_w = int(height * np.sqrt(1.0 - lam)), int(width * np.sqrt(1.0 - lam))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        box = (
            max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height),
            max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width),
        )
        return self.mix(x, labels, box, rng.permutation(len(x)))

    def mix(self, x, labels, box, perm):
        """Paste ``x[perm]`` into ``box = (top, bottom, left, right)`` (end-exclusive)."""
        if x.ndim != 4:
            raise ValueError(
                f"CutMix needs image batches (N, C, H, W); got shape {tuple(x.shape)}. With "
                "fine_tune='head' the batch is cached features: use fine_tune='all', or Mixup."
            )
        top, bottom, left, right = box
        perm = torch.as_tensor(np.asarray(perm), device=x.device)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
        return mixed, labels, labels[perm.to(labels.device)], lam

    def __repr__(self):
        return f"CutMix(alpha={self.alpha})"


_AUGMENTS = {"mixup": Mixup, "cutmix": CutMix}


def build_batch_augments(spec, fine_tune: str) -> list:
    """The ``batch_augments=`` parameter as a list of augments (one is drawn per batch).

    ``spec`` is None, ``"mixup"``, ``"cutmix"``, a dict ``{name: alpha}``, or a list of
    names and augment objects (callables ``(x, labels, rng) -> (x, labels, labels_b, lam)``).
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = [spec]
    items = list(spec.items()) if isinstance(spec, dict) else [(s, None) for s in spec]
    augments = []
    for item, alpha in items:
        if isinstance(item, str):
            if item not in _AUGMENTS:
                raise ValueError(
                    f"Unknown batch augment {item!r}; accepted: {sorted(_AUGMENTS)}, a dict "
                    "{name: alpha}, or a list of names and augment objects."
                )
            item = _AUGMENTS[item]() if alpha is None else _AUGMENTS[item](alpha)
        elif not callable(item):
            raise TypeError(f"batch_augments items must be names or callables; got {type(item).__name__}.")
        if fine_tune == "head" and getattr(item, "needs_images", False):
            raise ValueError(
                f"batch_augments={spec!r}: {item!r} cuts image patches, but fine_tune='head' trains "
                "on cached features. Use fine_tune='all' for CutMix, or batch_augments='mixup', "
                "which mixes features."
            )
        augments.append(item)
    return augments
