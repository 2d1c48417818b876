"""ArcFace: additive angular margin on a (sub-center) cosine classifier."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ._base import BaseLoss
from ._cosine_classifier import CosineClassifier


class ArcFaceLoss(BaseLoss):
    """Additive angular margin loss (Deng et al., 2019), optionally with sub-centers.

    The logit of the true class is ``s * cos(theta + m)`` and of the others ``s * cos(theta)``,
    where ``theta`` is the angle between the embedding and the class weight (the closest of
    ``subcenters`` weights per class). When ``theta + m`` would pass ``pi``, the logit becomes
    ``s * (cos(theta) - m * sin(m))`` so it keeps decreasing with ``theta``, as in insightface.

    Parameters
    ----------
    embedding_dim : int
        Width of the embeddings.
    n_classes : int
        Number of classes.
    margin : float, default=0.5
        Angular margin ``m`` in radians.
    scale : float, default=30.0
        Logit scale ``s``.
    subcenters : int, default=1
        Weights per class (sub-center ArcFace); 1 is plain ArcFace.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import ArcFaceLoss
    >>> loss = ArcFaceLoss(embedding_dim=4, n_classes=3, margin=0.3, scale=16, subcenters=2)
    >>> loss(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).item() > 0
    True
    """

    supports_mixed_labels = True

    def __init__(self, embedding_dim: int, n_classes: int, margin: float = 0.5, scale: float = 30.0,
                 subcenters: int = 1):
        super().__init__()
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFace margin must lie in [0, pi/2) radians; got {margin!r}.")
        if scale <= 0:
            raise ValueError(f"ArcFace scale must be positive; got {scale!r}.")
        self.classifier = CosineClassifier(embedding_dim, n_classes, subcenters=subcenters)
        self.margin = float(margin)
        self.scale = float(scale)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels, reduction="none")

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits with the margin added to each sample's true class."""
        cosine = self.classifier(embeddings)
        target = cosine.gather(1, labels[:, None])
        sine = torch.sqrt((1.0 - target * target).clamp(min=1e-12))
        m = self.margin
        with_margin = target * math.cos(m) - sine * math.sin(m)  # cos(theta + m)
        fallback = target - m * math.sin(m)
        with_margin = torch.where(target > math.cos(math.pi - m), with_margin, fallback)
        return self.scale * cosine.scatter(1, labels[:, None], with_margin)
