"""A cosine classifier with optional sub-centers, the weights behind margin losses."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CosineClassifier(nn.Module):
    """Cosine similarity of each embedding to each class: ``(n, d) -> (n, n_classes)``.

    With ``subcenters = k > 1`` each class holds ``k`` weight vectors and its cosine is the
    largest of the ``k`` (sub-center ArcFace), so a class may have several modes.

    Parameters
    ----------
    in_features : int
        Embedding width.
    n_classes : int
        Number of classes.
    subcenters : int, default=1
        Weight vectors per class.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.heads import CosineClassifier
    >>> head = CosineClassifier(2, 3, subcenters=2)
    >>> head(torch.randn(4, 2)).shape
    torch.Size([4, 3])
    """

    def __init__(self, in_features: int, n_classes: int, subcenters: int = 1):
        super().__init__()
        if int(subcenters) != subcenters or subcenters < 1:
            raise ValueError(f"subcenters must be a positive int; got {subcenters!r}.")
        self.n_classes, self.subcenters = int(n_classes), int(subcenters)
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.subcenters, in_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T
        return cosine.view(len(embeddings), self.n_classes, self.subcenters).amax(dim=2)
