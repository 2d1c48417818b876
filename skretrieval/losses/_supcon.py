"""Supervised contrastive loss."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ._base import BaseLoss


class SupConLoss(BaseLoss):
    """Supervised contrastive loss (Khosla et al., 2020), the "L_out" form.

    Embeddings are L2-normalised; for an anchor ``i`` with positives ``P(i)`` (same label,
    not ``i``) the loss is ``-mean_{p in P(i)} log(exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t))``.
    Anchors without a positive in the batch are left out of the mean.

    Parameters
    ----------
    temperature : float, default=0.1
        Softmax temperature ``t``.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import SupConLoss
    >>> embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> round(SupConLoss(temperature=1.0)(embeddings, torch.tensor([0, 0, 1, 1])).item(), 4)
    0.5514
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SupCon temperature must be positive; got {temperature!r}.")
        self.temperature = float(temperature)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normed = F.normalize(embeddings, dim=1)
        logits = normed @ normed.T / self.temperature
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        log_prob = logits.masked_fill(eye, float("-inf")).log_softmax(dim=1)
        positive = (labels[:, None] == labels[None, :]) & ~eye
        n_positive = positive.sum(1)
        valid = n_positive > 0
        summed = log_prob.masked_fill(~positive, 0.0).sum(1)
        return -(summed[valid] / n_positive[valid])
