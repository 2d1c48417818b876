"""Triplet loss with batch-hard mining."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ._base import BaseLoss


class TripletLoss(BaseLoss):
    """Batch-hard triplet loss (Hermans et al., 2017) on L2-normalised embeddings.

    For every anchor with at least one positive and one negative in the batch, the loss is
    ``max(0, max d(a, p) - min d(a, n) + margin)`` with Euclidean distances between
    normalised embeddings; anchors lacking either are left out of the mean.

    Parameters
    ----------
    margin : float, default=0.2
        Required gap between the hardest negative and the hardest positive.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import TripletLoss
    >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> TripletLoss(margin=0.2)(embeddings, torch.tensor([0, 0, 1, 1])).item()
    0.0
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        if margin < 0:
            raise ValueError(f"triplet margin must be >= 0; got {margin!r}.")
        self.margin = float(margin)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normed = F.normalize(embeddings, dim=1)
        # sqrt(2 - 2 cos) is exact for unit vectors and its gradient is safe away from 0.
        distances = (2.0 - 2.0 * normed @ normed.T).clamp(min=1e-12).sqrt()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive, negative = same & ~eye, ~same
        valid = positive.any(1) & negative.any(1)
        hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(1)
        hardest_negative = distances.masked_fill(~negative, float("inf")).amin(1)
        return F.relu(hardest_positive - hardest_negative + self.margin)[valid]
