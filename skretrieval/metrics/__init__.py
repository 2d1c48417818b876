"""Retrieval metrics as pure functions, scorers for GridSearchCV, and a report."""

from ._ranking import (
    average_precision_at_k,
    map_at_r,
    mean_average_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    r_precision,
    recall_at_k,
)
from ._report import retrieval_report
from ._scorers import SCORER_PATTERNS, get_scorer

__all__ = [
    "SCORER_PATTERNS",
    "average_precision_at_k",
    "get_scorer",
    "map_at_r",
    "mean_average_precision_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "retrieval_report",
]
