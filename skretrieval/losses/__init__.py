"""Metric-learning losses, one per module: ``loss(embeddings, labels) -> scalar``."""

from ._arcface import ArcFaceLoss
from ._base import BaseLoss
from ._softmax import SoftmaxLoss
from ._supcon import SupConLoss
from ._triplet import TripletLoss

__all__ = [
    "ArcFaceLoss",
    "BaseLoss",
    "SoftmaxLoss",
    "SupConLoss",
    "TripletLoss",
]
