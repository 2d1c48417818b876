"""Open-set retrieval: a threshold on the best match's similarity, and what a rejected query gets.

A query is *rejected* when its best gallery match is less similar than the threshold; the
retriever then answers ``outlier_label`` instead of a gallery label. ``threshold="auto"``
is chosen from the gallery: each class is held out in turn (the extreme of
``GroupKFold`` over classes, one class per fold, so the remaining gallery is nearly the
whole one) and the best match of each of its items among the other classes is an
impostor score, the similarity a query of an absent class would reach. The threshold is
the smallest that accepts at most ``false_match_rate`` of those scores. Without labels
every item is its own class, so this leaves items out: the near-duplicate case.

The retriever and the sharded retriever both call these functions with their best-match
similarities; nothing here searches by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

import numpy as np

from ._sklearn_compat import Interval, StrOptions
from .metrics._open_set import _threshold_at_rate

OPEN_SET_CONSTRAINTS = {
    "threshold": [None, Interval(Real, None, None, closed="neither"), StrOptions({"auto"})],
    "outlier_label": [Real, str, None],
    "false_match_rate": [Interval(Real, 0, 1, closed="both")],
}

# search(rows, k) -> (similarities, indices): the k best gallery matches of gallery rows
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def best_impostor_similarities(search: Search, labels) -> np.ndarray:
    """Each gallery item's best match among the items of the other classes.

    The nearest neighbours are searched ``k`` at a time, ``k`` doubling only for the items
    whose ``k`` best matches all share their class. An item's own row is of its own
    class, so it never counts. Needs at least two classes.
    """
    codes = np.unique(labels, return_inverse=True)[1].ravel()
    n = len(codes)
    best = np.empty(n, np.float32)
    todo, k = np.arange(n), min(n, 16)
    while todo.size:
        similarities, indices = search(todo, k)
        other = codes[indices] != codes[todo, None]
        found = other.any(axis=1)
        first = other.argmax(axis=1)  # the best-ranked match of another class
        best[todo[found]] = similarities[found, first[found]]
        todo, k = todo[~found], min(2 * k, n)
    return best


def fit_threshold(threshold, false_match_rate: float, search: Search, labels) -> float | None:
    """``threshold_``: None, the given number, or the "auto" estimate (see the module docstring)."""
    if threshold is None:
        return None
    if not isinstance(threshold, str):
        return float(threshold)
    n_classes = len(np.unique(labels))
    if n_classes < 2:
        raise ValueError(
            "threshold='auto' holds each class of the gallery out in turn, so it needs at least "
            f"2 classes (or 2 items, without y); the gallery has {n_classes}. Give a number instead."
        )
    return _threshold_at_rate(best_impostor_similarities(search, labels), false_match_rate)


def duplicate_threshold(false_match_rate: float, search: Search, n_items: int) -> float:
    """``threshold="auto"`` leaving single items out, whatever the labels: near-duplicates."""
    return fit_threshold("auto", false_match_rate, search, np.arange(n_items))


def rejected(best_similarities: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which queries to reject: best match below ``threshold`` (in float32); an equal one is accepted."""
    if threshold is None:
        return np.zeros(len(best_similarities), dtype=bool)
    return np.asarray(best_similarities) < np.float32(threshold)


def resolve_outlier_label(outlier_label, classes: np.ndarray, codes: np.ndarray):
    """``outlier_label_``, with the type rules of ``RadiusNeighborsClassifier.fit``.

    ``"most_frequent"`` is the most frequent gallery label; a manual label (a scalar: the
    parameter constraints refuse lists) must be of the labels' kind (a ``TypeError``
    otherwise). Unlike scikit-learn, a string longer
    than the gallery's string labels is accepted (``predict`` widens its dtype).
    """
    if outlier_label is None:
        return None
    if isinstance(outlier_label, str) and outlier_label == "most_frequent":
        return classes[np.bincount(codes).argmax()]
    kind = classes.dtype.kind
    if isinstance(outlier_label, str) != (kind in "US") or np.append(classes, outlier_label).dtype.kind != kind:
        raise TypeError(f"The dtype of outlier_label {outlier_label!r} is inconsistent with classes {classes} in y.")
    return outlier_label


def label_rejected(y_pred: np.ndarray, reject: np.ndarray, outlier_label_) -> np.ndarray:
    """``y_pred`` with ``outlier_label_`` in the rejected rows (a ``ValueError`` when it is None)."""
    if not reject.any():
        return y_pred
    _check_outlier_label(reject, outlier_label_)
    dtype = y_pred.dtype if y_pred.dtype == object else np.append(y_pred[:1], outlier_label_).dtype
    y_pred = y_pred.astype(dtype)
    y_pred[reject] = outlier_label_
    return y_pred


def reject_probabilities(proba: np.ndarray, reject: np.ndarray, classes: np.ndarray, outlier_label_) -> np.ndarray:
    """``proba`` with rejected rows all 0, or 1 in the column of ``outlier_label_`` if it is a class."""
    if not reject.any():
        return proba
    _check_outlier_label(reject, outlier_label_)
    proba[reject] = 0.0
    proba[np.ix_(reject, classes == outlier_label_)] = 1.0
    return proba


def _check_outlier_label(reject: np.ndarray, outlier_label_) -> None:
    if outlier_label_ is None:
        raise ValueError(
            f"No gallery match reaches threshold_ for the queries {np.flatnonzero(reject).tolist()}; "
            "give a label for them (outlier_label=...), lower the threshold, or use threshold=None."
        )
