"""RetrievalDisplay: each query image next to its best gallery matches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._retriever import _image_array
from ..io import list_image_files

CORRECT_COLOR = "tab:green"
WRONG_COLOR = "tab:red"


class RetrievalDisplay:
    """Query images and their top-k gallery matches, one row per query.

    Create it with :meth:`from_estimator` or :meth:`from_predictions`; :meth:`plot` draws
    it. Each row shows the query, then its matches best first with their similarity (and
    label) in the title. When the labels of both are known, a match is framed in green when
    its label equals the query's, in red otherwise.

    Parameters
    ----------
    query_images : list of ndarray of shape (H, W, 3)
        Query images, floats in [0, 1].
    match_images : list of list of ndarray of shape (H, W, 3)
        ``match_images[q][r]`` is the gallery image at rank ``r + 1`` of query ``q``.
    similarities : ndarray of shape (n_queries, k)
        Similarity of each match, best first.
    query_labels : ndarray of shape (n_queries,), default=None
        Labels of the queries.
    match_labels : ndarray of shape (n_queries, k), default=None
        Labels of the matches.

    Attributes
    ----------
    axes_ : ndarray of matplotlib Axes of shape (n_queries, k + 1)
        Column 0 holds the queries, column ``r`` the matches at rank ``r``.
    figure_ : matplotlib Figure
        The figure holding the axes.
    correct_ : ndarray of bool of shape (n_queries, k) or None
        Whether each match has the query's label; None when labels are unknown.

    See Also
    --------
    RecallAtKDisplay : Recall@k curves of one or several retrievers.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np, torch
    >>> from skretrieval import ImageEncoder, ImageRetriever
    >>> from skretrieval.plotting import RetrievalDisplay
    >>> rng = np.random.default_rng(0)
    >>> images = rng.random((6, 8, 8, 3))
    >>> images[3:, ..., 0] = 1.0  # the last three are reddish
    >>> pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> retriever = ImageRetriever(ImageEncoder(pool, preprocessing="none", device="cpu"))
    >>> retriever = retriever.fit(images, [0, 0, 0, 1, 1, 1])
    >>> display = RetrievalDisplay.from_estimator(retriever, images[[0, 4]], [0, 1], topk=2)
    >>> display.axes_.shape
    (2, 3)
    >>> display.correct_.tolist()
    [[True, True], [True, True]]
    """

    def __init__(self, query_images, match_images, similarities, *, query_labels=None, match_labels=None):
        self.query_images = query_images
        self.match_images = match_images
        self.similarities = similarities
        self.query_labels = query_labels
        self.match_labels = match_labels

    def plot(self, ax=None, *, image_size: float = 1.6):
        """Draw the queries and their matches.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            None creates a figure. One Axes is divided into the grid (it stays as an empty
            frame around it); an array gives one Axes per image, ``n_queries * (k + 1)`` of
            them in row order.
        image_size : float, default=1.6
            Inches per image when a figure is created.

        Returns
        -------
        display : RetrievalDisplay
            With ``axes_``, ``figure_`` and ``correct_`` set.
        """
        import matplotlib.pyplot as plt

        similarities = np.asarray(self.similarities)
        n_queries, k = similarities.shape
        self.axes_ = _axes_grid(plt, ax, n_queries, k + 1, image_size)
        self.figure_ = self.axes_[0, 0].figure
        self.correct_ = None
        if self.query_labels is not None and self.match_labels is not None:
            query_labels = np.asarray(self.query_labels)
            self.correct_ = np.asarray(self.match_labels) == query_labels[:, None]
        for q in range(n_queries):
            query_ax = self.axes_[q, 0]
            _show(query_ax, self.query_images[q])
            label = "" if self.query_labels is None else f"\n{self.query_labels[q]}"
            query_ax.set_title(f"query{label}", fontsize="small", fontweight="bold")
            for r in range(k):
                match_ax = self.axes_[q, r + 1]
                _show(match_ax, self.match_images[q][r])
                label = "" if self.match_labels is None else f"\n{self.match_labels[q][r]}"
                match_ax.set_title(f"#{r + 1}  {similarities[q, r]:.3f}{label}", fontsize="small")
                if self.correct_ is not None:
                    color = CORRECT_COLOR if self.correct_[q, r] else WRONG_COLOR
                    for spine in match_ax.spines.values():
                        spine.set_edgecolor(color)
                        spine.set_linewidth(4)
        return self

    @classmethod
    def from_predictions(
        cls,
        X_query,
        similarities,
        indices,
        gallery,
        *,
        y_query=None,
        gallery_labels=None,
        ax=None,
    ):
        """Plot given search results: ``similarities, indices = retriever.search(X_query)``.

        Parameters
        ----------
        X_query : images
            The queries: a numpy array ``(N, H, W[, C])``, a torch tensor ``(N, C, H, W)``,
            a list of paths, PIL images or arrays, a directory, or a torch ``Dataset``.
        similarities : array-like of shape (n_queries, k)
            Similarity of each match, best first.
        indices : array-like of int of shape (n_queries, k)
            Gallery index of each match.
        gallery : images
            The gallery, indexed by ``indices``, in any form ``X_query`` accepts (a
            directory lists its images in the order ``fit`` read them).
        y_query : array-like of shape (n_queries,), default=None
            Labels of the queries; with ``gallery_labels``, frames show correct matches.
        gallery_labels : array-like of shape (n_gallery,), default=None
            Labels of the gallery, e.g. ``retriever.prototype_labels_``, shown in the titles.
        ax : matplotlib Axes or array-like of Axes, default=None
            Where to draw; see :meth:`plot`.

        Returns
        -------
        display : RetrievalDisplay

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from skretrieval.plotting import RetrievalDisplay
        >>> gallery = np.zeros((3, 4, 4)); gallery[1] = 0.5; gallery[2] = 1.0
        >>> display = RetrievalDisplay.from_predictions(
        ...     gallery[[2]], [[1.0, 0.7]], [[2, 1]], gallery, y_query=["w"],
        ...     gallery_labels=["b", "g", "w"])
        >>> [ax.get_title() for ax in display.axes_[0]]
        ['query\\nw', '#1  1.000\\nw', '#2  0.700\\ng']
        """
        similarities, indices = np.asarray(similarities), np.asarray(indices)
        if similarities.ndim != 2 or similarities.shape != indices.shape:
            raise ValueError(
                f"similarities {similarities.shape} and indices {indices.shape} must both be "
                "(n_queries, k), as retriever.search(X_query, k) returns them."
            )
        queries, gallery = _image_items(X_query), _image_items(gallery)
        if len(queries) != len(indices):
            raise ValueError(
                f"X_query holds {len(queries)} images but the results cover {len(indices)} "
                "queries; they must match."
            )
        if y_query is not None and gallery_labels is None:
            raise ValueError(
                "give both y_query and gallery_labels to frame matches as correct or wrong (y_query alone "
                "cannot be compared with anything)."
            )
        shown = {int(i): _item_image(gallery, int(i), "gallery item") for i in np.unique(indices)}
        query_images = [_item_image(queries, q, "query") for q in range(len(queries))]
        match_images = [[shown[int(i)] for i in row] for row in indices]
        match_labels = None if gallery_labels is None else np.asarray(gallery_labels)[indices]
        if y_query is not None:
            y_query = np.asarray(y_query)
            if len(y_query) != len(indices):
                raise ValueError(f"y_query has {len(y_query)} labels for {len(indices)} queries.")
        display = cls(
            query_images, match_images, similarities, query_labels=y_query, match_labels=match_labels
        )
        return display.plot(ax=ax)

    @classmethod
    def from_estimator(cls, estimator, X_query, y_query=None, *, topk: int = 5, ax=None):
        """Search with a fitted retriever and plot each query's ``topk`` best matches.

        Gallery images are read from where :meth:`ImageRetriever.fit` got them: the files
        in ``prototype_ids_``, or the array, tensor, list or Dataset it was given (kept by
        reference). A retriever fitted on features has no images to show.

        Parameters
        ----------
        estimator : ImageRetriever
            A fitted retriever, fitted on images.
        X_query : images
            A few queries, in any form :meth:`from_predictions` accepts; one row each.
        y_query : array-like of shape (n_queries,), default=None
            Labels of the queries; matches are then framed green (same label as the
            query) or red.
        topk : int, default=5
            Matches shown per query.
        ax : matplotlib Axes or array-like of Axes, default=None
            Where to draw; see :meth:`plot`.

        Returns
        -------
        display : RetrievalDisplay
        """
        similarities, indices = estimator.search(X_query, k=topk)
        gallery_labels = None if y_query is None else estimator.prototype_labels_
        return cls.from_predictions(
            X_query, similarities, indices, _RetrieverGallery(estimator),
            y_query=y_query, gallery_labels=gallery_labels, ax=ax,
        )


class _RetrieverGallery:
    """The gallery of a fitted retriever, indexable: ``gallery[i]`` is an (H, W, 3) array."""

    def __init__(self, retriever):
        self.retriever = retriever

    def __getitem__(self, i):
        return self.retriever._gallery_image(i)

    def __len__(self):
        return len(self.retriever.prototype_ids_)


def _image_items(X):
    """``X`` as something indexable by image number."""
    if isinstance(X, (str, os.PathLike)):
        return list_image_files(X) if Path(X).is_dir() else [str(X)]
    if isinstance(X, torch.utils.data.DataLoader):
        return X.dataset
    return X


def _item_image(items, i: int, what: str) -> np.ndarray:
    item = items[i]
    if isinstance(item, (tuple, list)) and len(item) == 2:  # a Dataset's (image, label)
        item = item[0]
    return _image_array(item, f"{what} {i}")


def _axes_grid(plt, ax, n_rows: int, n_cols: int, image_size: float) -> np.ndarray:
    """A (n_rows, n_cols) array of Axes: new, carved out of one Axes, or the ones given."""
    if ax is None:
        _, axes = plt.subplots(
            n_rows, n_cols, figsize=(n_cols * image_size, n_rows * (image_size + 0.4)), squeeze=False
        )
        return axes
    if hasattr(ax, "get_subplotspec") and not isinstance(ax, np.ndarray):
        from matplotlib.gridspec import GridSpecFromSubplotSpec

        ax.set_axis_off()
        grid = GridSpecFromSubplotSpec(n_rows, n_cols, subplot_spec=ax.get_subplotspec())
        figure = ax.figure
        return np.array([[figure.add_subplot(grid[r, c]) for c in range(n_cols)] for r in range(n_rows)])
    axes = np.asarray(ax, dtype=object).ravel()
    if axes.size != n_rows * n_cols:
        raise ValueError(
            f"ax holds {axes.size} Axes but {n_rows} queries x {n_cols} images need "
            f"{n_rows * n_cols}; pass one Axes, {n_rows * n_cols} Axes, or None."
        )
    return axes.reshape(n_rows, n_cols)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.clip(image, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])
