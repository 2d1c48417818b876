"""What an encoder builder returns (its own module: the registry and every family use it)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._preprocessing import Preprocessing


@dataclass
class BuiltEncoder:
    """What a builder returns: the feature extractor and the preprocessing it was trained with.

    Parameters
    ----------
    module : nn.Module
        Maps a preprocessed batch ``(N, 3, H, W)`` to pooled features ``(N, D)``.
    preprocessing : Preprocessing
        The resizing and normalisation the module's weights expect.

    Examples
    --------
    >>> from skretrieval.encoders import create_encoder
    >>> built = create_encoder("efficientnet_lite0")
    >>> built.preprocessing.size
    (224, 224)
    """

    module: nn.Module
    preprocessing: Preprocessing
