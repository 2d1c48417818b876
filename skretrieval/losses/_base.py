"""The flow every loss shares: validate, compute per-sample losses, mix, reduce."""

from __future__ import annotations

import torch
from torch import nn


class BaseLoss(nn.Module):
    """A metric-learning loss mapping ``(embeddings, labels)`` to a scalar.

    Subclasses fill in :meth:`compute_loss`, which returns the loss of every sample (or of
    every anchor that has the pairs it needs); this class validates the inputs, mixes the
    losses of two label sets for Mixup/CutMix and takes the mean.

    Attributes
    ----------
    supports_mixed_labels : bool
        Whether a batch whose samples are a ``lam : 1 - lam`` mix of two samples may be
        scored as ``lam * loss(labels) + (1 - lam) * loss(labels_b)`` (true for classifier
        losses; false for pair-based losses, where a mixed sample has no single class).

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import BaseLoss
    >>> class CentreDistance(BaseLoss):
    ...     def compute_loss(self, embeddings, labels):
    ...         return embeddings.norm(dim=1)
    >>> CentreDistance()(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([0, 1])).item()
    3.0
    """

    supports_mixed_labels = False

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, mixed=None) -> torch.Tensor:
        """Mean loss of a batch.

        Parameters
        ----------
        embeddings : Tensor of shape (n, d)
        labels : LongTensor of shape (n,)
            Class codes in ``[0, n_classes)``.
        mixed : tuple (labels_b, lam) or None, default=None
            The second label of each mixed sample and the weight ``lam`` of ``labels``.
        """
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"{type(self).__name__} needs embeddings (n, d) and labels (n,); got "
                f"{tuple(embeddings.shape)} and {tuple(labels.shape)}."
            )
        if mixed is None:
            return _mean(self.compute_loss(embeddings, labels), embeddings)
        if not self.supports_mixed_labels:
            raise ValueError(
                f"{type(self).__name__} cannot take mixed labels (Mixup/CutMix); use "
                "head='linear' or head='arcface', or batch_augments=None."
            )
        labels_b, lam = mixed
        losses = lam * self.compute_loss(embeddings, labels) + (1 - lam) * self.compute_loss(embeddings, labels_b)
        return _mean(losses, embeddings)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of each sample (or valid anchor), a 1-D tensor."""
        raise NotImplementedError


def _mean(losses: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of the losses; zero (still attached to the graph) when there are none."""
    if losses.numel() == 0:
        return embeddings.sum() * 0.0
    return losses.mean()
