"""The projection head: encoder features to the learned embedding used for retrieval."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Projection(nn.Module):
    """A linear map from encoder features to the retrieval embedding.

    With ``out_features`` equal to ``in_features`` (``embedding_dim=None``) it starts as the
    identity, so training begins from the encoder's own features.

    Parameters
    ----------
    in_features : int
        Width of the encoder's features.
    out_features : int or None, default=None
        Embedding width; None keeps ``in_features``.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.heads import Projection
    >>> Projection(4).project(np.eye(4, dtype=np.float32)).round(3)
    array([[1., 0., 0., 0.],
           [0., 1., 0., 0.],
           [0., 0., 1., 0.],
           [0., 0., 0., 1.]], dtype=float32)
    """

    def __init__(self, in_features: int, out_features: int | None = None):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        self.linear = nn.Linear(in_features, out_features)
        if out_features == in_features:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(in_features))
                self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def project(self, features: np.ndarray, block: int = 65536) -> np.ndarray:
        """Embed a float32 feature matrix, in blocks of rows, without gradients."""
        device = self.linear.weight.device
        with torch.inference_mode():
            out = [
                self(torch.from_numpy(np.ascontiguousarray(features[i : i + block])).to(device)).float().cpu().numpy()
                for i in range(0, len(features), block)
            ]
        return np.concatenate(out) if out else np.empty((0, self.linear.out_features), np.float32)
