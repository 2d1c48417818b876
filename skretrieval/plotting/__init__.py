"""Displays, scikit-learn style: retrieved images and Recall@k curves (matplotlib, lazily)."""

from ._recall_display import RecallAtKDisplay
from ._retrieval_display import RetrievalDisplay

__all__ = [
    "RecallAtKDisplay",
    "RetrievalDisplay",
]
