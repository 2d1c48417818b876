"""Retrieval metrics as pure functions of a ranking.

Every metric accepts one of two input forms and reduces it to the same representation, a
:class:`_Ranking`: which of the first ranks of each query hold a relevant gallery item, and
how many relevant items each query has in the whole gallery. Each metric is then written
once, as a function of that representation returning one value per query.

- Dense form: ``y_true`` (binary relevance) and ``y_score`` (similarity, larger is more
  similar), both ``(n_queries, n_gallery)``. The ranking sorts ``y_score`` descending with a
  stable sort, so tied items keep gallery order (the lower gallery index ranks first).
- Label form: ``query_labels``, ``gallery_labels`` and ``ranked_indices`` (gallery indices
  best first, as ``kneighbors(X, return_distance=False)`` returns them). A gallery item is
  relevant to a query when their labels are equal. No ``(n_queries, n_gallery)`` matrix is
  built: relevant items are counted per label.

A query with no relevant item in the gallery scores 0 in every metric (as in
``sklearn.metrics.ndcg_score`` and mmpretrain's ``RetrievalRecall``). It stays in the mean,
which scales the mean of every candidate model alike and so never changes which one ranks
first. pytorch-metric-learning's ``AccuracyCalculator`` instead drops such "lone" queries;
to reproduce its numbers, pass only the queries whose label occurs in the gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_array, column_or_1d


class _Ranking(NamedTuple):
    """Relevance of the ranked lists: the one representation every metric reads.

    hits : bool ndarray of shape (n_queries, n_ranked)
        ``hits[q, i]``: the item at rank ``i + 1`` of query ``q`` is relevant.
    n_relevant : int ndarray of shape (n_queries,)
        Relevant items of each query in the whole gallery (R).
    """

    hits: np.ndarray
    n_relevant: np.ndarray


_FORMS_DOC = """\
y_true : array-like of shape (n_queries, n_gallery), default=None
        Dense form: binary relevance of every gallery item to every query. Give it with
        ``y_score``, or give the three label-form arguments instead.
    y_score : array-like of shape (n_queries, n_gallery), default=None
        Dense form: similarity of every gallery item to every query, larger is more
        similar. Ties rank the lower gallery index first.
    query_labels : array-like of shape (n_queries,), default=None
        Label form: label of each query. A gallery item is relevant to a query when their
        labels are equal.
    gallery_labels : array-like of shape (n_gallery,), default=None
        Label form: label of each gallery item.
    ranked_indices : array-like of int of shape (n_queries, n_ranked), default=None
        Label form: gallery indices of each query's ranked list, best first, as returned by
        ``kneighbors(X, return_distance=False)``."""


def _fill_doc(func):
    func.__doc__ = func.__doc__.replace("%(forms)s", _FORMS_DOC)
    return func


# --------------------------------------------------------------------------------------------
# Input forms -> _Ranking


def _to_ranking(
    y_true, y_score, query_labels, gallery_labels, ranked_indices, *, depth: int | None, caller: str
) -> _Ranking:
    """Reduce either input form to the first ``depth`` ranks (None: the largest R)."""
    dense = {"y_true": y_true, "y_score": y_score}
    labelled = {
        "query_labels": query_labels,
        "gallery_labels": gallery_labels,
        "ranked_indices": ranked_indices,
    }
    given = [name for name, value in {**dense, **labelled}.items() if value is not None]
    if set(given) == set(dense):
        return _dense_ranking(y_true, y_score, depth)
    if set(given) == set(labelled):
        return _label_ranking(query_labels, gallery_labels, ranked_indices, depth, caller=caller)
    raise ValueError(
        f"{caller} takes either the dense form (y_true and y_score) or the label form "
        f"(query_labels, gallery_labels and ranked_indices, all three as keywords); "
        f"got {', '.join(given) if given else 'none of them'}."
    )


def _dense_ranking(y_true, y_score, depth: int | None) -> _Ranking:
    y_true = check_array(y_true, dtype=None, input_name="y_true")
    y_score = check_array(y_score, dtype=np.float64, input_name="y_score")
    if y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true has shape {y_true.shape} but y_score has shape {y_score.shape}; both must "
            f"be (n_queries, n_gallery)."
        )
    if not np.isin(y_true, (0, 1)).all():
        found = np.unique(y_true[~np.isin(y_true, (0, 1))])[:5]
        raise ValueError(
            f"y_true must be binary relevance (0/1 or bool); found values such as "
            f"{found.tolist()}. Threshold graded relevance first, e.g. y_true > 0."
        )
    y_true = y_true.astype(bool)
    n_relevant = y_true.sum(axis=1)
    depth = _cap_depth(depth, n_relevant, y_true.shape[1])
    order = np.argsort(-y_score, axis=1, kind="stable")[:, :depth]
    return _Ranking(np.take_along_axis(y_true, order, axis=1), n_relevant)


def _label_ranking(
    query_labels,
    gallery_labels,
    ranked_indices,
    depth: int | None,
    *,
    caller: str,
    n_relevant: np.ndarray | None = None,
) -> _Ranking:
    query_labels = column_or_1d(query_labels, input_name="query_labels")
    gallery_labels = column_or_1d(gallery_labels, input_name="gallery_labels")
    ranked_indices = check_array(
        ranked_indices, dtype=None, ensure_min_features=0, input_name="ranked_indices"
    )
    n_gallery = len(gallery_labels)
    if not np.issubdtype(ranked_indices.dtype, np.integer):
        raise ValueError(
            f"ranked_indices must hold integer gallery indices; got dtype {ranked_indices.dtype}."
        )
    if len(ranked_indices) != len(query_labels):
        raise ValueError(
            f"ranked_indices has {len(ranked_indices)} rows but query_labels has "
            f"{len(query_labels)} labels; give one ranked list per query."
        )
    if ranked_indices.size and (ranked_indices.min() < 0 or ranked_indices.max() >= n_gallery):
        raise ValueError(
            f"ranked_indices must lie in [0, {n_gallery}) (gallery_labels has {n_gallery} "
            f"items); found values from {ranked_indices.min()} to {ranked_indices.max()}."
        )
    if n_relevant is None:
        n_relevant = _count_relevant(query_labels, gallery_labels)
    depth = _cap_depth(depth, n_relevant, n_gallery)
    n_ranked = ranked_indices.shape[1]
    if n_ranked < depth:
        what = (
            "the largest R (gallery items sharing a query's label)"
            if caller in ("map_at_r", "r_precision")
            else "k"
        )
        raise ValueError(
            f"{caller} needs the first {depth} ranks ({what}), but ranked_indices has only "
            f"{n_ranked} column(s); retrieve more, e.g. kneighbors(X, n_neighbors={depth}, "
            f"return_distance=False)."
        )
    hits = gallery_labels[ranked_indices[:, :depth]] == query_labels[:, None]
    return _Ranking(np.asarray(hits, dtype=bool), n_relevant)


def _count_relevant(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Gallery items sharing each query's label, from label counts (no dense matrix)."""
    if len(gallery_labels) == 0:
        return np.zeros(len(query_labels), dtype=np.intp)
    classes, counts = np.unique(gallery_labels, return_counts=True)
    position = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    return np.where(classes[position] == query_labels, counts[position], 0)


def _cap_depth(depth: int | None, n_relevant: np.ndarray, n_gallery: int) -> int:
    """Ranks needed: ``depth`` or the largest R, never more than the gallery holds."""
    if depth is None:
        depth = int(n_relevant.max(initial=0))
    return min(depth, n_gallery)


def _check_k(k, caller: str) -> int:
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k of {caller} must be a positive int; got {k!r}.")
    return int(k)


def _check_mode(mode) -> None:
    if mode not in ("IR", "integrate"):
        raise ValueError(f'mode must be "IR" or "integrate"; got {mode!r}.')


# --------------------------------------------------------------------------------------------
# Metrics on a _Ranking: one value per query


def _precision_curve(hits: np.ndarray) -> np.ndarray:
    """P(i): share of relevant items among the first i ranks."""
    return np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (queries without relevant items)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _recall(ranking: _Ranking, k: int) -> np.ndarray:
    return ranking.hits[:, :k].any(axis=1).astype(np.float64)


def _precision(ranking: _Ranking, k: int) -> np.ndarray:
    return ranking.hits[:, :k].sum(axis=1) / k


def _average_precision(ranking: _Ranking, k: int, mode: str = "IR") -> np.ndarray:
    hits = ranking.hits[:, :k]
    precision = _precision_curve(hits)
    if mode == "integrate":
        found = np.cumsum(hits, axis=1)  # j at the rank of the j-th relevant item
        before = np.ones_like(precision)  # (j - 1) / (r - 1), 1 at rank 1
        ranks = np.arange(2, hits.shape[1] + 1)
        before[:, 1:] = (found[:, 1:] - 1) / (ranks - 1)
        precision = (before + precision) / 2
    return _safe_divide((precision * hits).sum(axis=1), ranking.n_relevant)


def _within_r(ranking: _Ranking) -> np.ndarray:
    """hits restricted to each query's first R ranks."""
    ranks = np.arange(1, ranking.hits.shape[1] + 1)
    return ranking.hits & (ranks <= ranking.n_relevant[:, None])


def _map_at_r(ranking: _Ranking, k: None = None) -> np.ndarray:
    hits = _within_r(ranking)
    return _safe_divide((_precision_curve(hits) * hits).sum(axis=1), ranking.n_relevant)


def _r_precision(ranking: _Ranking, k: None = None) -> np.ndarray:
    return _safe_divide(_within_r(ranking).sum(axis=1), ranking.n_relevant)


def _ndcg(ranking: _Ranking, k: int) -> np.ndarray:
    hits = ranking.hits[:, :k]  # min(k, n_gallery) columns, so at least min(k, R) of them
    discount = 1 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = hits @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(ranking.n_relevant, k)]
    return _safe_divide(dcg, ideal)


# --------------------------------------------------------------------------------------------
# Public functions


@_fill_doc
def recall_at_k(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    k: int | Sequence[int],
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> float | list[float]:
    """Recall@k (hit rate): share of queries with a relevant item among their top k.

    As mmpretrain's ``RetrievalRecall``, as a fraction instead of a percentage::

        recall@k = (1 / n_queries) * sum_q 1[rel_q(i) = 1 for some rank i <= k]

    where ``rel_q(i)`` is 1 when the item at rank ``i`` of query ``q`` is relevant. A query
    without any relevant item counts 0.

    Parameters
    ----------
    %(forms)s
    k : int or sequence of int
        Ranks looked at; a sequence computes several recalls from one ranking.

    Returns
    -------
    recall : float or list of float
        In [0, 1]; a list in the order of ``k`` when ``k`` is a sequence.

    See Also
    --------
    precision_at_k : Share of relevant items among the top k.

    Examples
    --------
    >>> from skretrieval.metrics import recall_at_k
    >>> y_true = [[1, 0, 0], [0, 0, 1]]
    >>> y_score = [[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]]
    >>> recall_at_k(y_true, y_score, k=(1, 3))
    [0.5, 1.0]
    >>> recall_at_k(query_labels=["a", "b"], gallery_labels=["a", "b", "b"],
    ...             ranked_indices=[[1, 0], [2, 0]], k=1)
    0.5
    """
    several = not isinstance(k, Integral)
    ks = [_check_k(value, "recall_at_k") for value in (k if several else [k])]
    if not ks:
        raise ValueError("k of recall_at_k must be a positive int or a non-empty sequence of them.")
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=max(ks),
        caller="recall_at_k",
    )
    recalls = [float(_recall(ranking, value).mean()) for value in ks]
    return recalls if several else recalls[0]


@_fill_doc
def precision_at_k(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    k: int,
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> float:
    """Precision@k: mean share of relevant items among the top k of each query.

    ::

        precision@k = (1 / n_queries) * sum_q (1 / k) * sum_{i <= k} rel_q(i)

    The division is by ``k`` even when the gallery holds fewer than ``k`` items or a query
    fewer than ``k`` relevant ones, as in pytorch-metric-learning's ``precision_at_k``.

    Parameters
    ----------
    %(forms)s
    k : int
        Ranks looked at.

    Returns
    -------
    precision : float
        In [0, 1].

    Examples
    --------
    >>> from skretrieval.metrics import precision_at_k
    >>> y_true = [[1, 0, 1], [0, 0, 1]]
    >>> y_score = [[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]]
    >>> precision_at_k(y_true, y_score, k=2)  # (1/2 + 0/2) / 2
    0.25
    """
    k = _check_k(k, "precision_at_k")
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=k,
        caller="precision_at_k",
    )
    return float(_precision(ranking, k).mean())


@_fill_doc
def average_precision_at_k(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    k: int,
    mode: str = "IR",
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> np.ndarray:
    """Average precision within the top k, per query, as mmpretrain's ``RetrievalAveragePrecision``.

    With ``P_q(i) = (1 / i) * sum_{j <= i} rel_q(j)`` and ``n_q`` the number of items
    relevant to query ``q`` in the whole gallery (not only in the top k)::

        mode="IR":         AP_q@k = (1 / n_q) * sum_{i <= k} rel_q(i) * P_q(i)
        mode="integrate":  AP_q@k = (1 / n_q) * sum_{i <= k} rel_q(i) * (P'_q(i) + P_q(i)) / 2

    where, for the j-th relevant item found at rank ``r``, ``P'_q(r) = (j - 1) / (r - 1)``
    (1 when ``r = 1``): "integrate" averages the two precisions around each recall step,
    the convention of the Revisited Oxford/Paris benchmarks. A query without any relevant
    item scores 0. mmpretrain reports percentages; this returns fractions.

    Parameters
    ----------
    %(forms)s
    k : int
        Ranks looked at.
    mode : {"IR", "integrate"}, default="IR"
        How precision is accumulated, see above.

    Returns
    -------
    average_precision : ndarray of shape (n_queries,)
        In [0, 1].

    See Also
    --------
    mean_average_precision_at_k : The mean over queries.

    Examples
    --------
    >>> from skretrieval.metrics import average_precision_at_k
    >>> y_true = [[1, 0, 1, 1], [0, 1, 0, 0]]
    >>> y_score = [[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]]
    >>> average_precision_at_k(y_true, y_score, k=3).round(4)  # [(1 + 2/3) / 3, (1/2) / 1]
    array([0.5556, 0.5   ])
    """
    k = _check_k(k, "average_precision_at_k")
    _check_mode(mode)
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=k,
        caller="average_precision_at_k",
    )
    return _average_precision(ranking, k, mode)


@_fill_doc
def mean_average_precision_at_k(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    k: int,
    mode: str = "IR",
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> float:
    """mAP@k: the mean over queries of :func:`average_precision_at_k`.

    ::

        mAP@k = (1 / n_queries) * sum_q AP_q@k

    Parameters
    ----------
    %(forms)s
    k : int
        Ranks looked at.
    mode : {"IR", "integrate"}, default="IR"
        See :func:`average_precision_at_k`.

    Returns
    -------
    map : float
        In [0, 1].

    Examples
    --------
    >>> from skretrieval.metrics import mean_average_precision_at_k
    >>> y_true = [[1, 0, 1, 0, 0, 1, 0, 0, 1, 1]]
    >>> y_score = [[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]
    >>> round(mean_average_precision_at_k(y_true, y_score, k=10), 6)  # mmpretrain: 62.22...
    0.622222
    """
    k = _check_k(k, "mean_average_precision_at_k")
    _check_mode(mode)
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=k,
        caller="mean_average_precision_at_k",
    )
    return float(_average_precision(ranking, k, mode).mean())


@_fill_doc
def map_at_r(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> float:
    """MAP@R, as pytorch-metric-learning's ``mean_average_precision_at_r``.

    With ``R_q`` the number of gallery items relevant to query ``q`` and
    ``P_q(i) = (1 / i) * sum_{j <= i} rel_q(j)``::

        MAP@R = (1 / n_queries) * sum_q (1 / R_q) * sum_{i <= R_q} P_q(i) * rel_q(i)

    A query with ``R_q = 0`` scores 0 (pytorch-metric-learning leaves it out of the mean).

    Parameters
    ----------
    %(forms)s
        It needs at least ``max_q R_q`` columns.

    Returns
    -------
    map_at_r : float
        In [0, 1].

    See Also
    --------
    r_precision : The share of relevant items among the first R.

    Examples
    --------
    >>> from skretrieval.metrics import map_at_r
    >>> # R = 3 items labelled 0; ranked labels 0, 1, 0: (1/1 + 2/3) / 3
    >>> round(map_at_r(query_labels=[0], gallery_labels=[0, 1, 0, 0],
    ...                ranked_indices=[[0, 1, 2, 3]]), 4)
    0.5556
    """
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=None,
        caller="map_at_r",
    )
    return float(_map_at_r(ranking).mean())


@_fill_doc
def r_precision(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> float:
    """R-precision, as pytorch-metric-learning's ``r_precision``.

    With ``R_q`` the number of gallery items relevant to query ``q``::

        R-precision = (1 / n_queries) * sum_q (1 / R_q) * sum_{i <= R_q} rel_q(i)

    A query with ``R_q = 0`` scores 0 (pytorch-metric-learning leaves it out of the mean).

    Parameters
    ----------
    %(forms)s
        It needs at least ``max_q R_q`` columns.

    Returns
    -------
    r_precision : float
        In [0, 1].

    Examples
    --------
    >>> from skretrieval.metrics import r_precision
    >>> # R = 3 items labelled 0; ranked labels 0, 1, 0: 2 of the first 3
    >>> round(r_precision(query_labels=[0], gallery_labels=[0, 1, 0, 0],
    ...                   ranked_indices=[[0, 1, 2, 3]]), 4)
    0.6667
    """
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=None,
        caller="r_precision",
    )
    return float(_r_precision(ranking).mean())


@_fill_doc
def ndcg_at_k(
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    *,
    k: int,
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ranked_indices: ArrayLike | None = None,
) -> float:
    """NDCG@k with binary gains and a log2 discount.

    With ``n_q`` the number of items relevant to query ``q``::

        DCG_q@k  = sum_{i <= k} rel_q(i) / log2(i + 1)
        IDCG_q@k = sum_{i <= min(k, n_q)} 1 / log2(i + 1)
        NDCG@k   = (1 / n_queries) * sum_q DCG_q@k / IDCG_q@k

    A query without any relevant item scores 0. Without ties in ``y_score`` this equals
    ``sklearn.metrics.ndcg_score(y_true, y_score, k=k)``, which averages tied items instead
    of ranking the lower index first.

    Parameters
    ----------
    %(forms)s
    k : int
        Ranks looked at.

    Returns
    -------
    ndcg : float
        In [0, 1].

    Examples
    --------
    >>> from skretrieval.metrics import ndcg_at_k
    >>> # relevant at ranks 2 and 3: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    >>> round(ndcg_at_k([[0, 1, 1]], [[0.9, 0.5, 0.1]], k=3), 4)
    0.6934
    """
    k = _check_k(k, "ndcg_at_k")
    ranking = _to_ranking(
        y_true,
        y_score,
        query_labels,
        gallery_labels,
        ranked_indices,
        depth=k,
        caller="ndcg_at_k",
    )
    return float(_ndcg(ranking, k).mean())
