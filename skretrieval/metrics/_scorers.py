"""Scorers: retrieval metrics of a fitted retriever, for ``GridSearchCV(scoring=...)``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, column_or_1d

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

SCORER_PATTERNS = ("recall@K", "precision@K", "map@K", "ndcg@K", "mapr", "r_precision")

# metric of a _Ranking -> one value per query; "@K" names take k, the others look at R ranks
_AT_K = {"recall": _recall, "precision": _precision, "map": _average_precision, "ndcg": _ndcg}
_AT_R = {"mapr": _map_at_r, "r_precision": _r_precision}
_NAME = re.compile(r"(?P<metric>[a-z_]+)(?:@(?P<k>[1-9][0-9]*))?")


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


def get_scorer(name: str) -> _RetrievalScorer:
    """A scorer for :class:`~sklearn.model_selection.GridSearchCV` from a retrieval metric name.

    The scorer ``scorer(estimator, X, y) -> float`` queries the fitted retriever with the
    held-out items ``X`` and judges a gallery item relevant when its label
    (``estimator.prototype_labels_``) equals the query's label in ``y``:

    - ``"recall@K"``, ``"precision@K"``, ``"map@K"``, ``"ndcg@K"`` (``K`` a positive int):
      :func:`recall_at_k`, :func:`precision_at_k`, :func:`mean_average_precision_at_k`
      (mode "IR") and :func:`ndcg_at_k` on ``estimator.kneighbors(X, n_neighbors=K,
      return_distance=False)``, whatever the estimator's ``topk`` (at most the gallery size);
    - ``"mapr"``, ``"r_precision"``: :func:`map_at_r` and :func:`r_precision` on the first
      ``max R`` neighbours, ``R`` being the number of gallery items sharing a query's label.

    A query whose label has no item in the gallery scores 0, as in the metric functions.
    When ``estimator`` is a :class:`~sklearn.pipeline.Pipeline`, ``X`` goes through all
    steps but the last, which is queried.

    Parameters
    ----------
    name : str
        One of ``"recall@K"``, ``"precision@K"``, ``"map@K"``, ``"ndcg@K"``, ``"mapr"``,
        ``"r_precision"`` (case-insensitive).

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
    if match is not None:
        metric, k = match["metric"], match["k"]
        if k is not None and metric in _AT_K:
            return _RetrievalScorer(f"{metric}@{k}", _AT_K[metric], int(k))
        if k is None and metric in _AT_R:
            return _RetrievalScorer(metric, _AT_R[metric], None)
    raise ValueError(
        f"Unknown retrieval scorer {name!r}; accepted: {', '.join(SCORER_PATTERNS)} "
        f"with K a positive int, e.g. 'recall@1' or 'map@10'."
    )


def _query_ranking(
    estimator, X, y, ks: Sequence[int | None], *, embedded: bool = False, vote: bool = False
):
    """One search deep enough for every ``k`` (None: the largest R).

    Returns the ranking; with ``vote``, ``(ranking, y_pred)``, ``y_pred`` being the
    retriever's ``predict`` of the same queries, voted from the same neighbours.
    """
    if y is None:
        raise ValueError(
            "Retrieval scorers judge relevance by label, so they need y, the labels of the "
            "queries X; pass y to fit/GridSearchCV."
        )
    retriever = estimator
    if isinstance(estimator, Pipeline):
        retriever = estimator[-1]
        if len(estimator) > 1 and not embedded:
            X = estimator[:-1].transform(X)
    check_is_fitted(retriever, "prototype_labels_")
    gallery_labels = np.asarray(retriever.prototype_labels_)
    y = column_or_1d(y, input_name="y")
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
