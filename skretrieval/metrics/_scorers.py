"""Scorers: retrieval metrics of a fitted retriever, for ``GridSearchCV(scoring=...)``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._open_set import _rate, detection_identification_rate, open_set_accuracy
from ._ranking import (
    _average_precision,
    _count_relevant,
    _label_ranking,
    _map_at_r,
    _ndcg,
    _precision,
    _r_precision,
    _Ranking,
    _recall,
)

SCORER_PATTERNS = (
    "recall@K", "precision@K", "map@K", "ndcg@K", "mapr", "r_precision", "open_set_accuracy", "dir@FAR",
)

# metric of a _Ranking -> one value per query; "@K" names take k, the others look at R ranks
_AT_K = {"recall": _recall, "precision": _precision, "map": _average_precision, "ndcg": _ndcg}
_AT_R = {"mapr": _map_at_r, "r_precision": _r_precision}
_NAME = re.compile(r"(?P<metric>[a-z_]+)(?:@(?P<k>[1-9][0-9]*))?")
_DIR = re.compile(r"dir@(?P<far>0|1|0?\.[0-9]+|1\.0*)")


class _RetrievalScorer:
    """``scorer(estimator, X, y) -> float``: one metric of the neighbours of ``X``.

    Built by :func:`get_scorer`, which documents it.
    """

    def __init__(self, name: str, metric: Callable[[_Ranking, int | None], np.ndarray], k):
        self.name = name
        self.metric = metric
        self.k = k

    def __call__(self, estimator, X, y) -> float:
        ranking = _query_ranking(estimator, X, y, [self.k])
        return float(self.metric(ranking, self.k).mean())

    def __repr__(self) -> str:
        return f"get_scorer({self.name!r})"


class _OpenSetScorer:
    """``scorer(estimator, X, y) -> float``: an open-set metric of the queries ``X``.

    Built by :func:`get_scorer`, which documents it; ``false_alarm_rate`` None means
    open-set accuracy.
    """

    def __init__(self, name: str, false_alarm_rate: float | None):
        self.name = name
        self.false_alarm_rate = false_alarm_rate

    def __call__(self, estimator, X, y) -> float:
        retriever, X = _last_step(estimator, X)
        y = _query_labels(y)
        if self.false_alarm_rate is None:
            return open_set_accuracy(
                y, retriever.predict(X), gallery_labels=retriever.classes_,
                outlier_label=retriever.outlier_label_,
            )
        labels, scores = _best_matches(retriever, X, len(y))
        return detection_identification_rate(
            y, labels, scores, gallery_labels=retriever.classes_, false_alarm_rate=self.false_alarm_rate
        )

    def __repr__(self) -> str:
        return f"get_scorer({self.name!r})"


def get_scorer(name: str) -> _RetrievalScorer | _OpenSetScorer:
    """A scorer for :class:`~sklearn.model_selection.GridSearchCV` from a retrieval metric name.

    The scorer ``scorer(estimator, X, y) -> float`` queries the fitted retriever with the
    held-out items ``X`` and judges a gallery item relevant when its label
    (``estimator.prototype_labels_``) equals the query's label in ``y``:

    - ``"recall@K"``, ``"precision@K"``, ``"map@K"``, ``"ndcg@K"`` (``K`` a positive int):
      :func:`recall_at_k`, :func:`precision_at_k`, :func:`mean_average_precision_at_k`
      (mode "IR") and :func:`ndcg_at_k` on ``estimator.kneighbors(X, n_neighbors=K,
      return_distance=False)``, whatever the estimator's ``topk`` (at most the gallery size);
    - ``"mapr"``, ``"r_precision"``: :func:`map_at_r` and :func:`r_precision` on the first
      ``max R`` neighbours, ``R`` being the number of gallery items sharing a query's label;
    - ``"open_set_accuracy"``: :func:`open_set_accuracy` of ``estimator.predict(X)``, with
      the estimator's ``outlier_label_``: the scorer with which ``GridSearchCV`` chooses
      ``threshold`` or ``false_match_rate`` (validate on queries of known and of unknown
      classes, e.g. with :class:`~sklearn.model_selection.PredefinedSplit`; see the
      user guide's open-set page);
    - ``"dir@FAR"`` (``FAR`` a number in [0, 1], e.g. ``"dir@0.01"``):
      :func:`detection_identification_rate` at that false-alarm rate, from each query's best
      match (``estimator.search(X, k=1)``); it sets its own threshold, so it rates the
      embedding, not ``threshold``.

    A query whose label has no item in the gallery scores 0, as in the metric functions.
    When ``estimator`` is a :class:`~sklearn.pipeline.Pipeline`, ``X`` goes through all
    steps but the last, which is queried.

    Parameters
    ----------
    name : str
        One of ``"recall@K"``, ``"precision@K"``, ``"map@K"``, ``"ndcg@K"``, ``"mapr"``,
        ``"r_precision"``, ``"open_set_accuracy"``, ``"dir@FAR"`` (case-insensitive).

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, larger is better. Pass it as ``scoring=``, or
        several in a dict (with ``refit=`` naming one) for multi-metric search.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval.metrics import get_scorer
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 10)
    >>> X = np.eye(3)[y] + 0.3 * rng.normal(size=(30, 3))
    >>> scoring = {name: get_scorer(name) for name in ("recall@1", "map@5")}
    >>> search = GridSearchCV(ImageRetriever("precomputed"), {"topk": [1, 3]},
    ...                       scoring=scoring, refit="recall@1", cv=3).fit(X, y)
    >>> sorted(key for key in search.cv_results_ if key.startswith("mean_test"))
    ['mean_test_map@5', 'mean_test_recall@1']
    """
    match = _NAME.fullmatch(name.lower()) if isinstance(name, str) else None
    if match is not None and match["metric"] == "open_set_accuracy" and match["k"] is None:
        return _OpenSetScorer("open_set_accuracy", None)
    far = _DIR.fullmatch(name.lower()) if isinstance(name, str) else None
    if far is not None and float(far["far"]) <= 1:
        return _OpenSetScorer(name.lower(), _rate(float(far["far"]), "FAR"))
    if match is not None:
        metric, k = match["metric"], match["k"]
        if k is not None and metric in _AT_K:
            return _RetrievalScorer(f"{metric}@{k}", _AT_K[metric], int(k))
        if k is None and metric in _AT_R:
            return _RetrievalScorer(metric, _AT_R[metric], None)
    raise ValueError(
        f"Unknown retrieval scorer {name!r}; accepted: {', '.join(SCORER_PATTERNS)} "
        f"with K a positive int and FAR a rate in [0, 1], e.g. 'recall@1', 'map@10' or 'dir@0.01'."
    )


def open_set_scores(estimator, X, y) -> tuple[np.ndarray, np.ndarray]:
    """Detection inputs of labelled queries: is each query's class in the gallery, and its best match.

    The two arrays are what :meth:`sklearn.metrics.DetCurveDisplay.from_predictions` and
    :meth:`~sklearn.metrics.RocCurveDisplay.from_predictions` (and ``det_curve``,
    ``roc_curve``) take: the curve of rejecting a query when its best match is below a
    threshold, with the false match rate on unknown-class queries as the false-positive
    rate and the false non-match rate on known-class queries as the false-negative rate.
    ``y_score[y_true == 0]`` are the impostor scores and ``y_score[y_true == 1]`` the
    genuine scores of :func:`false_match_rate` and :func:`false_non_match_rate`.

    Parameters
    ----------
    estimator : fitted retriever or Pipeline ending in one
        Anything with ``search`` and ``classes_``; a Pipeline's steps but the last
        transform ``X`` first.
    X : images or features
        The queries.
    y : array-like of shape (n_queries,)
        Their labels; a label missing from the gallery marks an unknown-class query.

    Returns
    -------
    y_true : ndarray of shape (n_queries,), int
        1 for a query whose label is in the gallery (it should be accepted), 0 otherwise.
    y_score : ndarray of shape (n_queries,), float32
        Similarity of each query's best match, in the ``similarity_fn``'s scale.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval.metrics import open_set_scores
    >>> retriever = ImageRetriever("precomputed").fit(np.eye(3)[:2], ["a", "b"])
    >>> y_true, y_score = open_set_scores(retriever, [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], ["a", "c"])
    >>> y_true, y_score.round(2)
    (array([1, 0]), array([1. , 0.6], dtype=float32))
    """
    retriever, X = _last_step(estimator, X)
    y = _query_labels(y)
    _, scores = _best_matches(retriever, X, len(y))
    return np.isin(y, retriever.classes_).astype(int), scores


def _query_labels(y) -> np.ndarray:
    if y is None:
        raise ValueError(
            "Retrieval scorers judge relevance by label, so they need y, the labels of the "
            "queries X; pass y to fit/GridSearchCV."
        )
    return column_or_1d(y, input_name="y")


def _last_step(estimator, X, embedded: bool = False):
    """The retriever to query, and ``X`` through a Pipeline's steps before it (unless embedded)."""
    retriever = estimator
    if isinstance(estimator, Pipeline):
        retriever = estimator[-1]
        if len(estimator) > 1 and not embedded:
            X = estimator[:-1].transform(X)
    check_is_fitted(retriever, "prototype_labels_")
    return retriever, X


def _best_matches(retriever, X, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Label and similarity of each query's best match."""
    similarities, indices = retriever.search(X, k=1)
    if len(indices) != n_labels:
        raise ValueError(f"X has {len(indices)} queries but y has {n_labels} labels; they must match.")
    return np.asarray(retriever.prototype_labels_)[indices[:, 0]], similarities[:, 0]


def _query_ranking(
    estimator, X, y, ks: Sequence[int | None], *, embedded: bool = False, vote: bool = False
):
    """One search deep enough for every ``k`` (None: the largest R).

    Returns the ranking; with ``vote``, ``(ranking, y_pred)``, ``y_pred`` being the
    retriever's ``predict`` of the same queries, voted from the same neighbours.
    """
    y = _query_labels(y)
    retriever, X = _last_step(estimator, X, embedded)
    gallery_labels = np.asarray(retriever.prototype_labels_)
    n_relevant = _count_relevant(y, gallery_labels)
    largest_r = int(n_relevant.max(initial=0))
    depth = min(max([largest_r if k is None else k for k in ks], default=0), len(gallery_labels))
    n_votes = retriever._resolve_k(retriever._settings.topk, False) if vote else 0
    keywords = {"embedded": True} if embedded else {}
    if max(depth, n_votes) == 0:  # no query label occurs in the gallery (or an empty gallery)
        similarities, ranked = None, np.empty((len(y), 0), dtype=np.intp)
    elif vote:
        similarities, ranked = retriever.search(X, max(depth, n_votes), **keywords)
    else:
        ranked = np.asarray(retriever.kneighbors(X, n_neighbors=depth, return_distance=False, **keywords))
    if len(ranked) != len(y):
        raise ValueError(f"X has {len(ranked)} queries but y has {len(y)} labels; they must match.")
    ranking = _label_ranking(
        y, gallery_labels, ranked[:, :depth], depth, caller="scorer", n_relevant=n_relevant
    )
    if not vote:
        return ranking
    return ranking, retriever._predict_neighbours(similarities[:, :n_votes], ranked[:, :n_votes])
