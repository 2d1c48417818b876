"""Softmax cross-entropy over a linear classifier of the embeddings (``head="linear"``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._base import BaseLoss


class SoftmaxLoss(BaseLoss):
    """Cross-entropy of a linear classifier ``W e + b`` trained on top of the embeddings.

    Retrieval uses the embeddings, not the logits; the classifier only shapes them.

    Parameters
    ----------
    embedding_dim : int
        Width of the embeddings.
    n_classes : int
        Number of classes.
    label_smoothing : float, default=0.0
        Passed to :func:`torch.nn.functional.cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import SoftmaxLoss
    >>> loss = SoftmaxLoss(embedding_dim=4, n_classes=3)
    >>> loss(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])).ndim
    0
    """

    supports_mixed_labels = True

    def __init__(self, embedding_dim: int, n_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.classifier = nn.Linear(embedding_dim, n_classes)
        self.label_smoothing = label_smoothing

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            self.classifier(embeddings), labels, reduction="none", label_smoothing=self.label_smoothing
        )
