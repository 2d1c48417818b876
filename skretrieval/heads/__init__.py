"""Heads: the projection to the retrieval embedding, and the classifiers margin losses use."""

from ..losses._cosine_classifier import CosineClassifier  # the margin losses' classifier layer
from ._projection import Projection
from ._registry import HEAD_NAMES, build_head, head_options

__all__ = [
    "HEAD_NAMES",
    "CosineClassifier",
    "Projection",
    "build_head",
    "head_options",
]
