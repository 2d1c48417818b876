"""Retrieval and open-set metrics as pure functions, scorers for GridSearchCV, and a report."""

from ._open_set import (
    detection_identification_rate,
    equal_error_rate,
    false_match_rate,
    false_non_match_rate,
    fnmr_at_fmr,
    open_set_accuracy,
)
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
from ._scorers import SCORER_PATTERNS, get_scorer, open_set_scores

__all__ = [
    "SCORER_PATTERNS",
    "average_precision_at_k",
    "detection_identification_rate",
    "equal_error_rate",
    "false_match_rate",
    "false_non_match_rate",
    "fnmr_at_fmr",
    "get_scorer",
    "map_at_r",
    "mean_average_precision_at_k",
    "ndcg_at_k",
    "open_set_accuracy",
    "open_set_scores",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "retrieval_report",
]
