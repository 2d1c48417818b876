"""RecallAtKDisplay: Recall@k against k, for one or several retrievers on one axis."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..metrics import recall_at_k
from ..metrics._ranking import _recall
from ..metrics._scorers import _query_ranking


class RecallAtKDisplay:
    """Recall@k curves: the share of queries with a relevant match among their top k.

    Create it with :meth:`from_estimator` (one or several retrievers, one curve each) or
    :meth:`from_predictions`; :meth:`plot` draws it. Values equal
    :func:`skretrieval.metrics.recall_at_k`.

    Parameters
    ----------
    ks : array-like of int of shape (n_ks,)
        The ranks k on the x axis.
    recalls : array-like of shape (n_curves, n_ks)
        Recall@k of each curve at each k.
    names : list of str, default=None
        Legend entry of each curve; no legend when None.

    Attributes
    ----------
    ax_ : matplotlib Axes
        The axes drawn on.
    figure_ : matplotlib Figure
        The figure holding ``ax_``.
    lines_ : list of matplotlib Line2D
        One line per curve.

    See Also
    --------
    RetrievalDisplay : The retrieved images themselves.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval.plotting import RecallAtKDisplay
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [3.0, 3.0], [0.0, 2.0]])
    >>> y = [0, 0, 1, 1]
    >>> cosine = ImageRetriever("precomputed").fit(X, y)
    >>> dot = ImageRetriever("precomputed", similarity_fn="dot").fit(X, y)
    >>> display = RecallAtKDisplay.from_estimator(
    ...     {"cosine": cosine, "dot": dot}, [[1.0, 0.2], [0.1, 0.9]], [0, 1], ks=[1, 2, 3])
    >>> display.recalls.tolist()
    [[1.0, 1.0, 1.0], [0.5, 1.0, 1.0]]
    >>> [line.get_label() for line in display.lines_]
    ['cosine', 'dot']
    """

    def __init__(self, ks, recalls, *, names=None):
        self.ks = ks
        self.recalls = recalls
        self.names = names

    def plot(self, ax=None, **kwargs):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on (other curves there stay); None creates a figure.
        **kwargs : dict
            Passed to ``ax.plot`` for every curve (e.g. ``linestyle``).

        Returns
        -------
        display : RecallAtKDisplay
            With ``ax_``, ``figure_`` and ``lines_`` set.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        ks, recalls = np.asarray(self.ks), np.atleast_2d(np.asarray(self.recalls, dtype=float))
        names = [None] * len(recalls) if self.names is None else list(self.names)
        kwargs = {"marker": "o", **kwargs}
        self.lines_ = [ax.plot(ks, curve, label=name, **kwargs)[0] for curve, name in zip(recalls, names)]
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k")
        ax.set_ylim(0, 1.02)
        if len(ks) <= 20:
            ax.set_xticks(ks)
        ax.grid(True, alpha=0.3)
        if self.names is not None:
            ax.legend(loc="lower right")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        query_labels,
        gallery_labels,
        ranked_indices,
        *,
        ks: Iterable[int] = range(1, 11),
        name: str | None = None,
        ax=None,
    ):
        """Plot the Recall@k curve of given rankings.

        Parameters
        ----------
        query_labels : array-like of shape (n_queries,)
            Label of each query; a gallery item is relevant when its label is equal.
        gallery_labels : array-like of shape (n_gallery,)
            Label of each gallery item.
        ranked_indices : array-like of int of shape (n_queries, n_ranked)
            Gallery indices of each query, best first, at least ``max(ks)`` of them, as
            ``retriever.kneighbors(X, max(ks), return_distance=False)`` returns them.
        ks : iterable of int, default=range(1, 11)
            The ranks k.
        name : str, default=None
            Legend entry of the curve.
        ax : matplotlib Axes, default=None
            Axes to draw on; None creates a figure.

        Returns
        -------
        display : RecallAtKDisplay

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from skretrieval.plotting import RecallAtKDisplay
        >>> display = RecallAtKDisplay.from_predictions(
        ...     ["a", "b"], ["a", "b", "b"], [[1, 0], [2, 0]], ks=[1, 2])
        >>> display.recalls.tolist()
        [[0.5, 1.0]]
        """
        ks = _check_ks(ks)
        recalls = recall_at_k(
            query_labels=query_labels, gallery_labels=gallery_labels,
            ranked_indices=ranked_indices, k=ks,
        )
        names = None if name is None else [name]
        return cls(np.asarray(ks), np.asarray([recalls]), names=names).plot(ax=ax)

    @classmethod
    def from_estimator(cls, estimators, X, y, *, ks: Iterable[int] = range(1, 11), ax=None):
        """Query fitted retrievers with ``X`` and plot one Recall@k curve each.

        Each retriever is searched once, for ``max(ks)`` neighbours.

        Parameters
        ----------
        estimators : retriever, list of retrievers or dict of {name: retriever}
            Fitted retrievers (or Pipelines ending in one). A list is named by class and
            position, a single retriever by its class.
        X : images or features
            The queries.
        y : array-like of shape (n_queries,)
            Labels of the queries.
        ks : iterable of int, default=range(1, 11)
            The ranks k.
        ax : matplotlib Axes, default=None
            Axes to draw on; None creates a figure.

        Returns
        -------
        display : RecallAtKDisplay
        """
        ks = _check_ks(ks)
        if isinstance(estimators, Mapping):
            named = dict(estimators)
        elif isinstance(estimators, (list, tuple)):
            named = {f"{i}: {type(e).__name__}": e for i, e in enumerate(estimators)}
        else:
            named = {type(estimators).__name__: estimators}
        if not named:
            raise ValueError("estimators is empty; give at least one fitted retriever.")
        recalls = []
        for estimator in named.values():
            ranking = _query_ranking(estimator, X, y, [max(ks)])
            recalls.append([float(_recall(ranking, k).mean()) for k in ks])
        return cls(np.asarray(ks), np.asarray(recalls), names=[str(n) for n in named]).plot(ax=ax)


def _check_ks(ks) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive ranks, e.g. range(1, 11); got {ks}.")
    return ks
