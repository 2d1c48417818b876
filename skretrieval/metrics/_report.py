"""A text or dict report of several retrieval metrics, from one neighbour search."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.utils.validation import column_or_1d

from ._scorers import _query_ranking, get_scorer


def retrieval_report(
    estimator,
    X,
    y,
    metrics: str | Sequence[str] = ("recall@1", "recall@5", "map@10"),
    *,
    output_dict: bool = False,
    digits: int = 4,
    embedded: bool = False,
) -> str | dict[str, float]:
    """Several retrieval metrics of a fitted retriever, as a text table or a dict.

    The retriever is queried once (the queries are encoded once), for as many neighbours as
    the deepest metric needs (the largest ``K``, the largest ``R`` for ``"mapr"`` and
    ``"r_precision"``, ``topk`` for ``"accuracy"``); every metric reads the first ranks it
    needs of that one result. Each value equals what ``get_scorer(name)(estimator, X, y)``
    (``estimator.score(X, y)`` for ``"accuracy"``) returns.

    Parameters
    ----------
    estimator : fitted retriever or Pipeline ending in one
        Anything :func:`get_scorer` accepts: it has ``kneighbors`` and
        ``prototype_labels_``; for ``"accuracy"``, a skretrieval retriever.
    X : images or features
        The queries.
    y : array-like of shape (n_queries,)
        Labels of the queries; a gallery item is relevant when its label is equal.
    metrics : str or sequence of str, default=("recall@1", "recall@5", "map@10")
        Names accepted by :func:`get_scorer`, and ``"accuracy"`` for the kNN accuracy
        ``estimator.score(X, y)`` (its own ``predict``, which votes over ``topk``).
    output_dict : bool, default=False
        Return ``{name: value}`` instead of text.
    digits : int, default=4
        Decimals in the text table.
    embedded : bool, default=False
        ``X`` already is embeddings of the retriever (its ``transform``'s output), searched
        as they are (see :meth:`ImageRetriever.search`).

    Returns
    -------
    report : str or dict
        A table with one row per metric, then the number of queries and how many of them
        have no relevant gallery item (they score 0); or ``{name: float}`` in the order of
        ``metrics``.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval.metrics import retrieval_report
    >>> gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> retriever = ImageRetriever("precomputed", topk=1).fit(gallery, [0, 0, 1, 1])
    >>> queries, labels = np.array([[1.0, 0.1], [0.6, 0.4]]), [0, 1]
    >>> print(retrieval_report(retriever, queries, labels, ["recall@1", "mapr", "accuracy"]))
               score
    recall@1  0.5000
        mapr  0.5000
    accuracy  0.5000
    <BLANKLINE>
    2 queries, 0 without a relevant gallery item
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("metrics is empty; give at least one name, e.g. ('recall@1', 'map@10').")
    scorers = {name: get_scorer(name) for name in names if name != "accuracy"}
    vote = "accuracy" in names
    ranking = _query_ranking(
        estimator, X, y, [scorer.k for scorer in scorers.values()], embedded=embedded, vote=vote
    )
    if vote:
        ranking, y_pred = ranking
    values = {}
    for name in names:
        if name == "accuracy":
            values[name] = float(np.mean(y_pred == column_or_1d(y)))
        else:
            scorer = scorers[name]
            values[name] = float(scorer.metric(ranking, scorer.k).mean())
    if output_dict:
        return values

    width = max(len(name) for name in values)
    column = max(digits + 2, len("score"))
    lines = [f"{'':>{width}}  {'score':>{column}}"]
    lines += [f"{name:>{width}}  {value:>{column}.{digits}f}" for name, value in values.items()]
    if scorers:
        lonely = int((ranking.n_relevant == 0).sum())
        lines += [
            "",
            f"{len(ranking.n_relevant)} queries, {lonely} without a relevant gallery item",
        ]
    return "\n".join(lines)
