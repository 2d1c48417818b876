"""Label votes over ranked neighbours, as KNeighborsClassifier does, with a stable tie rule."""

from __future__ import annotations

import numpy as np


def vote_weights(vote, similarities: np.ndarray) -> np.ndarray:
    """Per-neighbour weights for ``vote`` ("uniform", "similarity" or a callable)."""
    if vote == "uniform":
        return np.ones_like(similarities, dtype=np.float64)
    if vote == "similarity":
        weights = np.maximum(similarities.astype(np.float64), 0.0)
    else:
        weights = np.asarray(vote(similarities), dtype=np.float64)
        if weights.shape != similarities.shape or not np.all(weights >= 0):
            raise ValueError(
                f"the vote callable must return non-negative weights of shape {similarities.shape} "
                f"(one per neighbour); got shape {weights.shape}."
            )
    weights[weights.sum(axis=1) == 0] = 1.0  # nothing positive to weigh: fall back to uniform
    return weights


def plurality_vote(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The winning class code per row; a tie goes to the best-ranked neighbour's class.

    ``codes`` and ``weights`` are (n_queries, k), neighbours best first.
    """
    n_queries, k = codes.shape
    keys = codes.astype(np.int64) + np.arange(n_queries, dtype=np.int64)[:, None] * (int(codes.max()) + 1)
    _, group = np.unique(keys, return_inverse=True)
    group = group.reshape(n_queries, k)
    totals = np.bincount(group.ravel(), weights=weights.ravel())[group]
    best_rank = np.argmax(totals, axis=1)  # first maximum = best-ranked among tied classes
    return codes[np.arange(n_queries), best_rank]


def class_probabilities(codes: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_queries, n_classes) vote shares; each row sums to 1."""
    n_queries = codes.shape[0]
    flat = (codes + np.arange(n_queries)[:, None] * n_classes).ravel()
    totals = np.bincount(flat, weights=weights.ravel(), minlength=n_queries * n_classes)
    totals = totals.reshape(n_queries, n_classes)
    return totals / totals.sum(axis=1, keepdims=True)
