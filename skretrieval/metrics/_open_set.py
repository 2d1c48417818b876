"""Open-set metrics: verification from genuine/impostor scores, and open-set identification.

A *genuine* score is the similarity of a query to a match that should be accepted (same
class, or a query whose class is in the gallery); an *impostor* score is one that should be
rejected (a stranger's best match). A similarity is accepted when it is at least the
threshold (``s >= t``), as :meth:`ImageRetriever.find_duplicates` links items and as
:func:`sklearn.metrics.roc_curve` counts a score at a threshold as positive, so every rate
here equals the false-positive or false-negative rate of ``roc_curve``/``det_curve`` at
the same threshold. Scores and thresholds are compared in float32, the dtype of the
retriever's similarities.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.metrics import roc_curve
from sklearn.utils.validation import column_or_1d


def _scores(values, name: str, *, allow_empty: bool = False) -> np.ndarray:
    values = column_or_1d(values, input_name=name).astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite values; give finite similarity scores.")
    if not allow_empty and values.size == 0:
        raise ValueError(f"{name} is empty; the rate is undefined without scores.")
    return values


def _rate(value, name: str) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}.")
    return float(value)


def _threshold_at_rate(impostor_scores, rate: float) -> float:
    """The smallest float32 threshold that accepts at most ``rate`` of ``impostor_scores``.

    With ``m = floor(rate * n)`` impostors allowed, the threshold lies just above the
    ``(m + 1)``-th largest impostor score, so scores tied with it are all rejected and the
    rate observed on these scores never exceeds ``rate``. Any lower threshold would
    accept more than ``m``; so it is also the threshold of the lowest FNMR at that FMR.
    """
    scores = np.sort(_scores(impostor_scores, "impostor_scores"))[::-1]
    allowed = int(np.floor(_rate(rate, "rate") * len(scores) + 1e-9))
    if allowed >= len(scores):
        return -np.inf  # every impostor may be accepted: so may every genuine score
    return float(np.nextafter(scores[allowed], np.float32(np.inf)))


def false_match_rate(impostor_scores, threshold: float) -> float:
    """Share of impostor scores accepted at ``threshold`` (FMR, the false-positive rate).

    Parameters
    ----------
    impostor_scores : array-like of shape (n_impostors,)
        Similarities that should be rejected.
    threshold : float
        Accept a score ``s`` when ``s >= threshold`` (in float32).

    Returns
    -------
    fmr : float
        In [0, 1].

    Examples
    --------
    >>> from skretrieval.metrics import false_match_rate
    >>> false_match_rate([0.1, 0.5, 0.7, 0.9], threshold=0.7)
    0.5
    """
    scores = _scores(impostor_scores, "impostor_scores")
    return float(np.mean(scores >= np.float32(threshold)))


def false_non_match_rate(genuine_scores, threshold: float) -> float:
    """Share of genuine scores rejected at ``threshold`` (FNMR, the false-negative rate).

    Parameters
    ----------
    genuine_scores : array-like of shape (n_genuine,)
        Similarities that should be accepted.
    threshold : float
        A score ``s`` is rejected when ``s < threshold`` (in float32).

    Returns
    -------
    fnmr : float
        In [0, 1].

    Examples
    --------
    >>> from skretrieval.metrics import false_non_match_rate
    >>> false_non_match_rate([0.6, 0.7, 0.8, 0.95], threshold=0.7)
    0.25
    """
    scores = _scores(genuine_scores, "genuine_scores")
    return float(np.mean(scores < np.float32(threshold)))


def fnmr_at_fmr(genuine_scores, impostor_scores, fmr: float = 0.01) -> float:
    """The false non-match rate at the threshold that keeps the false match rate within ``fmr``.

    The threshold is the smallest one at which at most ``fmr`` of the impostor scores are
    accepted (the rule of ``ImageRetriever(threshold="auto")``); it equals the smallest
    false-negative rate of :func:`sklearn.metrics.det_curve` among its points whose
    false-positive rate is at most ``fmr``.

    Parameters
    ----------
    genuine_scores : array-like of shape (n_genuine,)
        Similarities that should be accepted.
    impostor_scores : array-like of shape (n_impostors,)
        Similarities that should be rejected.
    fmr : float, default=0.01
        Largest accepted share of impostors, in [0, 1].

    Returns
    -------
    fnmr : float

    Examples
    --------
    >>> from skretrieval.metrics import fnmr_at_fmr
    >>> fnmr_at_fmr([0.6, 0.8, 0.9, 0.95], [0.1, 0.3, 0.5, 0.85], fmr=0.25)
    0.0
    >>> fnmr_at_fmr([0.6, 0.8, 0.9, 0.95], [0.1, 0.3, 0.5, 0.85], fmr=0.0)
    0.5
    """
    return false_non_match_rate(genuine_scores, _threshold_at_rate(impostor_scores, fmr))


def equal_error_rate(genuine_scores, impostor_scores) -> float:
    """The rate at which the false match and false non-match rates are equal (EER).

    Read from :func:`sklearn.metrics.roc_curve` (all thresholds kept): between the last
    point where FNMR exceeds FMR and the first where it does not, the curve is taken as the
    straight segment between them, and the EER is where that segment crosses FMR = FNMR.

    Parameters
    ----------
    genuine_scores : array-like of shape (n_genuine,)
        Similarities that should be accepted.
    impostor_scores : array-like of shape (n_impostors,)
        Similarities that should be rejected.

    Returns
    -------
    eer : float
        In [0, 1]; 0 when every genuine score is above every impostor score.

    Examples
    --------
    >>> from skretrieval.metrics import equal_error_rate
    >>> round(equal_error_rate([0.9, 0.8, 0.4], [0.7, 0.3, 0.1]), 4)
    0.3333
    """
    genuine = _scores(genuine_scores, "genuine_scores")
    impostor = _scores(impostor_scores, "impostor_scores")
    y_true = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    fpr, tpr, _ = roc_curve(y_true, np.r_[genuine, impostor], drop_intermediate=False)
    gap = (1 - tpr) - fpr  # FNMR - FMR: from 1 at the strictest threshold down to -1
    i = int(np.argmax(gap <= 0))  # first point where FNMR no longer exceeds FMR
    share = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + share * (fpr[i] - fpr[i - 1]))


def _known(y_true, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    y_true = column_or_1d(y_true, input_name="y_true")
    return y_true, np.isin(y_true, column_or_1d(gallery_labels, input_name="gallery_labels"))


def detection_identification_rate(
    y_true, y_pred, y_score, *, gallery_labels, false_alarm_rate: float = 0.01
) -> float:
    """Open-set identification: share of known queries both accepted and correctly labelled.

    Queries whose label is not in ``gallery_labels`` are unknown. The threshold is the
    smallest at which at most ``false_alarm_rate`` of the unknown queries' best-match scores
    are accepted (the rule of ``ImageRetriever(threshold="auto")``); the
    detection-and-identification rate (DIR, at rank 1) is the share of the known queries
    whose score is at least that threshold and whose ``y_pred`` equals ``y_true``.
    ``1 - DIR`` is the false negative identification rate (FNIR) at that false positive
    identification rate (FPIR).

    Parameters
    ----------
    y_true : array-like of shape (n_queries,)
        Query labels; at least one known and one unknown.
    y_pred : array-like of shape (n_queries,)
        The closed-set prediction of each query (e.g. its best match's label).
    y_score : array-like of shape (n_queries,)
        Best-match similarity of each query.
    gallery_labels : array-like
        The labels the gallery holds (e.g. ``retriever.classes_``).
    false_alarm_rate : float, default=0.01
        Largest accepted share of unknown queries, in [0, 1].

    Returns
    -------
    dir : float

    Examples
    --------
    >>> from skretrieval.metrics import detection_identification_rate
    >>> y_true = ["a", "a", "b", "z", "z"]       # "z" is not in the gallery
    >>> y_pred = ["a", "b", "b", "a", "b"]
    >>> y_score = [0.9, 0.8, 0.4, 0.5, 0.3]
    >>> detection_identification_rate(y_true, y_pred, y_score, gallery_labels=["a", "b"],
    ...                               false_alarm_rate=0.0)
    0.3333333333333333
    """
    y_true, known = _known(y_true, gallery_labels)
    y_pred = column_or_1d(y_pred, input_name="y_pred")
    scores = _scores(y_score, "y_score")
    if not len(y_true) == len(y_pred) == len(scores):
        raise ValueError(
            f"y_true, y_pred and y_score must have one entry per query; got {len(y_true)}, "
            f"{len(y_pred)} and {len(scores)}."
        )
    if known.all() or not known.any():
        raise ValueError(
            "detection_identification_rate needs queries of both kinds: labels in "
            f"gallery_labels (known) and labels not in it (unknown); got {int(known.sum())} "
            f"known and {int((~known).sum())} unknown."
        )
    threshold = _threshold_at_rate(scores[~known], false_alarm_rate)
    hits = (scores[known] >= np.float32(threshold)) & (y_pred[known] == y_true[known])
    return float(hits.mean())


def open_set_accuracy(y_true, y_pred, *, gallery_labels, outlier_label) -> float:
    """Share of queries answered right: their label when known, a rejection when unknown.

    A query whose label is in ``gallery_labels`` is right when ``y_pred`` equals its label; a
    query whose label is not is right when ``y_pred`` is ``outlier_label`` (the
    answer of ``ImageRetriever(threshold=..., outlier_label=...).predict`` for a rejected
    query). It is :func:`sklearn.metrics.accuracy_score` with every unknown label replaced
    by ``outlier_label``, so an ``outlier_label`` that is also a gallery label cannot tell a
    rejection from that answer.

    Parameters
    ----------
    y_true : array-like of shape (n_queries,)
        Query labels.
    y_pred : array-like of shape (n_queries,)
        Predictions, ``outlier_label`` for rejected queries.
    gallery_labels : array-like
        The labels the gallery holds (e.g. ``retriever.classes_``).
    outlier_label : scalar
        The label of a rejection.

    Returns
    -------
    accuracy : float

    Examples
    --------
    >>> from skretrieval.metrics import open_set_accuracy
    >>> open_set_accuracy(["a", "b", "z", "z"], ["a", "unknown", "unknown", "b"],
    ...                   gallery_labels=["a", "b"], outlier_label="unknown")
    0.5
    """
    y_true, known = _known(y_true, gallery_labels)
    y_pred = column_or_1d(y_pred, input_name="y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}; they must match.")
    expected = np.where(known, y_true.astype(object), outlier_label)
    return float(np.mean(expected == y_pred.astype(object)))
