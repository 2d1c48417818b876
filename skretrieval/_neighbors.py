"""The gallery and the queries against it, written once for every retriever.

:class:`GalleryMixin` holds what every retriever does with a fitted gallery: labels, ids
and classes, adding and removing items, turning queries into features, rows of unreadable queries,
``search``/``kneighbors``/``radius_neighbors``, their graphs, ``find_duplicates`` and the
label vote. A retriever says only how its gallery is stored and searched (the split of
scikit-learn's ``NeighborsBase``/``KNeighborsMixin``/``KNeighborsClassifier``):

* ``_settings``: the estimator whose ``similarity_fn``, ``topk``, ``vote``,
  ``working_memory`` and encoder apply (the retriever itself, or the one a sharded gallery
  wraps);
* ``_n_gallery()``: the number of gallery rows;
* ``_gallery_topk(queries, k)``: similarities and rows of the ``k`` best matches of each
  query (``queries`` None: the gallery against itself, no row its own match);
* ``_gallery_radius(queries, radius, sort_results)``: as ``radius_neighbors``;
* ``_append_gallery(features)``: store embedded rows after the existing ones;
* ``_remove_gallery(rows)``: drop the rows ``rows`` (sorted, unique, not all).

The representation rule
-----------------------
``fit`` takes images or features in the encoder's space. Every query method takes what
``fit`` takes: images, or a 2-D matrix of encoder features, which a fitted head then
projects. ``transform`` returns the embedding, the space of ``prototype_``. Embeddings
(``transform``'s output, or ``prototype_`` rows) are searched with ``embedded=True`` of
``search``, ``kneighbors`` and ``radius_neighbors``, which skips encoding and the head.
Without a head the two spaces are one, and ``embedded`` changes nothing.
"""

from __future__ import annotations

import os
import time
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._open_set import (
    duplicate_threshold,
    label_rejected,
    reject_probabilities,
    rejected,
    resolve_outlier_label,
)
from ._vote import class_probabilities, plurality_vote, vote_weights
from .io._stats import UNKNOWN, file_stats
from .search import get_similarity


class GalleryMixin:
    """Fitted gallery state and every query against it (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval._neighbors import GalleryMixin
    >>> retriever = ImageRetriever("precomputed", topk=1).fit(np.eye(2), ["a", "b"])
    >>> isinstance(retriever, GalleryMixin), retriever.predict([[0.9, 0.1]])
    (True, array(['a'], dtype='<U1'))
    """

    @property
    def _settings(self):
        return self

    # -- queries -----------------------------------------------------------------------------

    def transform(self, X):
        """Feature vectors of ``X``, as the gallery was encoded: the embedding with a head.

        Parameters
        ----------
        X : images or features
            Any input :meth:`fit` accepts.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), float32
            Rows of unreadable images (``on_error="skip"``/``"warn"``) are all NaN. Search
            these rows with ``embedded=True``; passed without it, they would be projected
            by a head a second time.
        """
        check_is_fitted(self)
        return self._query_features(X)

    def search(self, X=None, k=None, *, embedded=False):
        """The ``k`` most similar gallery items per query: similarities, best first.

        The similarity view of :meth:`kneighbors` (the origin's ``matching``): larger means
        more similar, sorted descending; ties go to the lower gallery index.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, excluding each item itself.
        k : int, default=None
            Items per query; ``topk`` when None, ``-1`` for all.
        embedded : bool, default=False
            ``X`` already is embeddings (:meth:`transform`'s output): searched as they are,
            neither encoded nor projected by the head.

        Returns
        -------
        similarities : ndarray of shape (n_queries, k), float32
            ``-inf`` in the rows of unreadable queries.
        indices : ndarray of shape (n_queries, k), int64
            Rows of ``prototype_``; ``prototype_ids_[indices]`` names the items. ``-1`` in
            the rows of unreadable queries.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed").fit(np.eye(3))
        >>> similarities, indices = retriever.search([[0.0, 1.0, 0.0]], k=2)
        >>> similarities.round(3), indices
        (array([[1., 0.]], dtype=float32), array([[1, 0]]))
        """
        check_is_fitted(self)
        queries = None if X is None else self._query_features(X, embedded=embedded)
        return self._search(queries, k)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True, *, embedded=False):
        """Nearest gallery items of each query, as ``NearestNeighbors.kneighbors``.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, and no item is its own
            neighbour.
        n_neighbors : int, default=None
            Neighbours per query; ``topk`` when None, ``-1`` for all.
        return_distance : bool, default=True
            Whether to return the distances too.
        embedded : bool, default=False
            ``X`` already is embeddings (:meth:`transform`'s output), searched as they are.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors), float32
            Ascending distances: ``1 - cos`` (cosine), ``||a - b||`` (euclidean), ``-a.b``
            (dot), ``-s`` (callable); ``inf`` in the rows of unreadable queries. Only when
            ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors), int64
            Rows of ``prototype_``; ``-1`` in the rows of unreadable queries.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.kneighbors(n_neighbors=1)
        (array([[1.],
               [1.],
               [2.]], dtype=float32), array([[1],
               [0],
               [1]]))
        """
        similarities, indices = self.search(X, n_neighbors, embedded=embedded)
        if not return_distance:
            return indices
        return self._similarity().to_distance(similarities), indices

    def radius_neighbors(
        self, X=None, radius=None, return_distance=True, sort_results=False, *, embedded=False
    ):
        """Gallery items within a distance of each query, as ``NearestNeighbors.radius_neighbors``.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, and no item is its own
            neighbour.
        radius : float
            Largest distance returned, as :meth:`kneighbors` defines distances (``1 - cos``
            for cosine, ``||a - b||`` for euclidean, ``-a.b`` for dot, ``-s`` for a callable).
        return_distance : bool, default=True
            Whether to return the distances too.
        sort_results : bool, default=False
            Sort each query's neighbours by distance (ties by index); otherwise by index.
        embedded : bool, default=False
            ``X`` already is embeddings (:meth:`transform`'s output), searched as they are.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries,), dtype=object
            One float32 array of distances per query (empty for an unreadable query). Only
            when ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries,), dtype=object
            One int64 array of ``prototype_`` rows per query.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.radius_neighbors([[0.5]], radius=1.0, return_distance=False)[0]
        array([0, 1])
        """
        check_is_fitted(self)
        if radius is None:
            raise ValueError("radius_neighbors needs a radius (a distance, as kneighbors returns).")
        queries = None if X is None else self._query_features(X, embedded=embedded)
        if queries is None:
            distances, indices = self._gallery_radius(None, float(radius), sort_results)
        else:
            valid = _readable(queries)
            distances, indices = _empty_rows(len(queries), np.float32), _empty_rows(len(queries), np.int64)
            if valid.any():
                distances[valid], indices[valid] = self._gallery_radius(
                    queries[valid], float(radius), sort_results
                )
        return (distances, indices) if return_distance else indices

    def kneighbors_graph(self, X=None, n_neighbors=None, mode="connectivity"):
        """Sparse graph of each query's nearest gallery items, as ``NearestNeighbors``.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None: the gallery against itself, without self-loops.
        n_neighbors : int, default=None
            Neighbours per query; ``topk`` when None.
        mode : {"connectivity", "distance"}, default="connectivity"
            Ones, or the distances of :meth:`kneighbors`.

        Returns
        -------
        graph : sparse matrix of shape (n_queries, n_gallery), CSR
            Rows of unreadable queries are empty.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.kneighbors_graph(n_neighbors=1).toarray()
        array([[0., 1., 0.],
               [1., 0., 0.],
               [0., 1., 0.]])
        """
        _check_graph_mode(mode)
        distances, indices = self.kneighbors(X, n_neighbors)
        found = indices >= 0
        values = distances[found] if mode == "distance" else None
        return _csr_graph(found.sum(axis=1), indices[found], values, self._n_gallery())

    def radius_neighbors_graph(self, X=None, radius=None, mode="connectivity", sort_results=False):
        """Sparse graph of the gallery items within ``radius`` of each query.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None: the gallery against itself, without self-loops.
        radius : float
            Largest distance, as in :meth:`radius_neighbors`.
        mode : {"connectivity", "distance"}, default="connectivity"
            Ones, or the distances.
        sort_results : bool, default=False
            Store each row's entries by increasing distance (``mode="distance"`` only).

        Returns
        -------
        graph : sparse matrix of shape (n_queries, n_gallery), CSR

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.radius_neighbors_graph(radius=1.5).toarray()
        array([[0., 1., 0.],
               [1., 0., 0.],
               [0., 0., 0.]])
        """
        _check_graph_mode(mode)
        if sort_results and mode != "distance":
            raise ValueError("sort_results=True needs mode='distance', as in scikit-learn.")
        distances, indices = self.radius_neighbors(X, radius, sort_results=sort_results)
        counts = np.fromiter((len(i) for i in indices), dtype=np.int64, count=len(indices))
        columns = np.concatenate([*indices, np.empty(0, np.int64)])
        values = np.concatenate([*distances, np.empty(0)]) if mode == "distance" else None
        return _csr_graph(counts, columns, values, self._n_gallery())

    def find_duplicates(
        self, X=None, min_similarity: float | str = 0.9, *, embedded: bool = False,
        return_similarity: bool = False,
    ):
        """Near-identical items: groups within the gallery, or the gallery items new ones duplicate.

        Two items are linked when their similarity is at least ``min_similarity`` (exactly,
        in float32). With ``X=None`` a group is a connected component of the links between
        gallery items (so two members may be less similar, through a chain), found with
        :func:`scipy.sparse.csgraph.connected_components`. With new items ``X``, each new
        item gets the gallery items it is linked to, as :meth:`radius_neighbors` finds them
        (the same query path, unreadable queries included); new items are not linked to
        each other (their own duplicates: ``find_duplicates`` of a retriever fitted on them).

        Memory: no ``n x n`` object is formed. The gallery is searched against itself in
        blocks of ``working_memory`` (:func:`~skretrieval.search.radius_search`); what
        grows is the list of linked pairs, the sparse graph and the component labels, so
        the extra memory is O(n_gallery + pairs found) plus the working memory: at most
        ``4 n d`` bytes (the normalised search copy of the gallery, unless built already)
        + 0.5 KB per gallery item + 0.5 KB per linked pair + ``working_memory`` + tens
        of MB of allocator slack (tested in a subprocess by ``tests/test_duplicates.py``;
        see the user guide's "Large galleries").

        Parameters
        ----------
        X : images or features, default=None
            New items to match against the gallery; None finds the groups within it.
        min_similarity : float or "auto", default=0.9
            On the scale of ``similarity_fn`` (``-distance`` for euclidean). ``"auto"``:
            the rule of ``threshold="auto"`` leaving gallery items out (whatever the
            labels): at most ``false_match_rate`` of the gallery items are linked to their
            best match, the most similar first. Duplicates count in that share, so set
            ``false_match_rate`` above the share of items you expect to have one.
        embedded : bool, default=False
            ``X`` already is embeddings (:meth:`transform`'s output), searched as they are.
        return_similarity : bool, default=False
            With ``X``: also return the similarity of each match.

        Returns
        -------
        groups : list of ndarray of int64
            With ``X=None``: rows of ``prototype_``, ascending within a group; groups
            ordered by their first row. Items without a duplicate are left out.
        similarities : ndarray of shape (n_queries,), dtype=object
            With ``X`` and ``return_similarity=True``: one float32 array per new item,
            aligned with ``matches`` (exactly the float32 scores when ``min_similarity``
            is at least 0.5 for cosine, and for the other similarities).
        matches : ndarray of shape (n_queries,), dtype=object
            With ``X``: one int64 array per new item of the ``prototype_`` rows it
            duplicates, most similar first (ties by row); empty for a new item without a
            duplicate, and for an unreadable one (``on_error="skip"``/``"warn"``).

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> gallery = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.0, 2.0], [1.0, 1.0]]
        >>> retriever = ImageRetriever("precomputed").fit(gallery)
        >>> retriever.find_duplicates(min_similarity=0.99)
        [array([0, 2]), array([1, 3])]
        >>> matches = retriever.find_duplicates([[0.0, 3.0], [1.0, -1.0]], 0.99)
        >>> matches[0], matches[1]
        (array([1, 3]), array([], dtype=int64))
        """
        from scipy.sparse.csgraph import connected_components

        check_is_fitted(self)
        if isinstance(X, (Real, str)):  # find_duplicates(0.95): the threshold came first once
            raise TypeError(
                f"find_duplicates takes the new items to match first (None: the gallery itself), "
                f"got X={X!r}; pass the threshold by name: find_duplicates(min_similarity={X!r})."
            )
        if isinstance(min_similarity, str) and min_similarity == "auto":
            rate = self._settings.false_match_rate
            min_similarity = duplicate_threshold(rate, self._search_rows, self._n_gallery())
        similarity = self._similarity()
        radius = float(similarity.to_distance(np.float32(min_similarity)))
        if X is not None:
            distances, matches = self.radius_neighbors(X, radius, sort_results=True, embedded=embedded)
            if not return_similarity:
                return matches
            similarities = np.empty(len(distances), dtype=object)
            for i, d in enumerate(distances):
                similarities[i] = np.asarray(similarity.from_distance(d), dtype=np.float32)
            return similarities, matches
        graph = self.radius_neighbors_graph(radius=radius)
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component)
        order = np.argsort(component, kind="stable")
        groups = np.split(order, np.cumsum(sizes)[:-1])
        return [group for group in groups if len(group) > 1]

    def predict(self, X):
        """Label of each query by a vote of its ``topk`` most similar gallery items.

        Parameters
        ----------
        X : images or features
            Queries.

        Returns
        -------
        y_pred : ndarray of shape (n_queries,)
            Labels from ``classes_``; gallery indices when fitted without ``y``. An
            unreadable query (``on_error``) gets None (the result then has dtype object).
            With a ``threshold``, ``outlier_label_`` for the queries whose best match is
            below ``threshold_``.

        Examples
        --------
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0], [0.0, 1.0]], ["a", "b"])
        >>> retriever.predict([[0.2, 0.8]])
        array(['b'], dtype='<U1')
        """
        check_is_fitted(self)
        return self._predict_neighbours(*self._search(self._query_features(X), None))

    def _predict_neighbours(self, similarities, indices):
        """``predict`` from each query's ranked neighbours (``search``'s output)."""
        codes, weights = self._vote_weights(similarities, indices)
        missing = codes[:, 0] < 0
        if not missing.any():
            y_pred = self.classes_[plurality_vote(codes, weights)]
        else:
            y_pred = np.full(len(codes), None, dtype=object)
            if not missing.all():
                y_pred[~missing] = self.classes_[plurality_vote(codes[~missing], weights[~missing])]
        reject = rejected(similarities[:, 0], self.threshold_) & ~missing
        return label_rejected(y_pred, reject, self.outlier_label_)

    def predict_proba(self, X):
        """Vote shares of every class among the ``topk`` neighbours.

        Parameters
        ----------
        X : images or features
            Queries.

        Returns
        -------
        proba : ndarray of shape (n_queries, n_classes)
            Rows sum to 1; columns follow ``classes_`` (the gallery items when fitted
            without ``y``). An unreadable query's row is NaN. The row of a rejected query
            (see ``threshold``) is 1 in the column of ``outlier_label_`` when it is one of
            ``classes_``, as in :class:`~sklearn.neighbors.RadiusNeighborsClassifier`, and
            all 0 otherwise.

        Examples
        --------
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", topk=2).fit([[1.0, 0.0], [0.0, 1.0]], ["a", "b"])
        >>> retriever.predict_proba([[0.2, 0.8]])
        array([[0.5, 0.5]])
        """
        check_is_fitted(self)
        similarities, indices = self._search(self._query_features(X), None)
        codes, weights = self._vote_weights(similarities, indices)
        missing = codes[:, 0] < 0
        if not missing.any():
            proba = class_probabilities(codes, weights, len(self.classes_))
        else:
            proba = np.full((len(codes), len(self.classes_)), np.nan)
            if not missing.all():
                proba[~missing] = class_probabilities(codes[~missing], weights[~missing], len(self.classes_))
        reject = rejected(similarities[:, 0], self.threshold_) & ~missing
        return reject_probabilities(proba, reject, self.classes_, self.outlier_label_)

    @available_if(lambda self: self._settings.threshold is not None)
    def decision_function(self, X):
        """Best-match similarity minus ``threshold_``: a query is accepted when it is >= 0.

        As for outlier detectors (``IsolationForest``, ``OneClassSVM``), positive means
        inlier: ``predict`` answers with a gallery label exactly where this is >= 0 (the
        subtraction is done in float32, so its sign is the comparison's). Only available
        with a ``threshold``.

        Parameters
        ----------
        X : images or features
            Queries.

        Returns
        -------
        scores : ndarray of shape (n_queries,), float64
            ``-inf`` for a query skipped as unreadable (``on_error``).

        Examples
        --------
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", topk=1, threshold=0.8, outlier_label=-1)
        >>> retriever = retriever.fit([[1.0, 0.0], [0.0, 1.0]])
        >>> retriever.decision_function([[1.0, 0.0], [0.6, 0.8]]).round(3)
        array([0.2, 0. ])
        >>> retriever.predict([[1.0, 0.0], [0.6, 0.8], [0.7, 0.7]])
        array([ 0,  1, -1])
        """
        check_is_fitted(self)
        best = self._search(self._query_features(X), 1)[0][:, 0]
        return (best - np.float32(self.threshold_)).astype(np.float64)

    # -- the gallery -------------------------------------------------------------------------

    def add(self, X, y=None):
        """Append items to the gallery, encoding only the new ones.

        Unreadable image files (``on_error="skip"``/``"warn"``) are left out, as in
        :meth:`fit`, and listed at the end of ``skipped_`` (their index is within this
        ``X``); ``y`` stays aligned.

        Parameters
        ----------
        X : images or features
            New gallery items, in any form :meth:`fit` accepts.
        y : array-like of shape (n_new,), default=None
            Their labels. Needed when the gallery was fitted with labels (unless ``X``
            carries them); a gallery fitted without labels (``labels_are_rows_``) continues its
            row numbers.

        Returns
        -------
        self : object
            ``prototype_labels_``, ``prototype_ids_`` and ``classes_`` are extended (and
            the gallery features); the result equals fitting on the concatenated gallery,
            except that ``threshold_`` is kept as it is (an ``"auto"`` one is not
            re-estimated).

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0]], ["a"])
        >>> retriever.add([[0.0, 1.0]], ["b"]).predict([[0.1, 0.9]])
        array(['b'], dtype='<U1')
        """
        check_is_fitted(self)
        started = time.time_ns()
        features, labels, ids, skipped = self._encode_items(X)
        n_old, n_new = self._n_gallery(), len(features)
        if y is not None:
            labels = _aligned_labels(y, n_new, skipped)
        if labels is None and not self._labels_are_rows():
            raise ValueError(
                "the gallery was fitted with labels, so add needs y for the new items too; "
                "pass the labels of the new items (add(X, y))."
            )
        ids = np.arange(n_old, n_old + n_new) if ids is None else np.asarray(ids)
        self._append_gallery(features)
        self._set_gallery(
            None if labels is None else _concatenate(self.prototype_labels_, np.asarray(labels)),
            _concatenate(self.prototype_ids_, ids),
        )
        self._extend_file_stats(n_old, file_stats(ids, changed_since_ns=started))
        self.skipped_ = [*getattr(self, "skipped_", []), *skipped]
        return self

    def _encode_items(self, X):
        """New gallery items as ``fit`` encodes them: ``(embedded features, labels, ids, skipped)``."""
        settings = self._settings
        features, labels, ids, skipped = settings._encode_input(X, reset=False, keep_rows=False)
        if not len(features):  # every file unreadable: nothing to embed, whatever the width
            return np.empty((0, self._n_features()), np.float32), labels, ids, skipped
        return self._check_width(settings._embed(features)), labels, ids, skipped

    def remove(self, ids=None, *, rows=None):
        """Remove items from the gallery, named by ``prototype_ids_`` or by row.

        Parameters
        ----------
        ids : array-like or scalar, default=None
            Values of ``prototype_ids_`` (file paths, exactly as stored, for a gallery of
            files); every row holding one of them goes.
        rows : array-like of int or int, default=None
            Rows of ``prototype_`` (``kneighbors``' indices). Give ``ids`` or ``rows``,
            not both.

        Returns
        -------
        self : object
            The result equals fitting on the gallery without those items:
            ``prototype_labels_``, ``prototype_ids_`` and ``classes_`` lose them (a class
            left without items leaves ``classes_``), later rows move up, and labels and ids
            that are the row numbers (``labels_are_rows_``: fitted without ``y``; ids of items
            that are no files) are numbered anew, ``0`` to ``n - 1``; labels given as ``y``
            are kept as they are, even when they are ``0`` to ``n - 1``. As in :meth:`add`,
            ``threshold_`` is kept as it is (an ``"auto"`` one is not re-estimated). An
            unknown id or row raises a ``ValueError`` naming it, and nothing is removed; so
            does removing every item.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", topk=1).fit(np.eye(3), ["a", "b", "c"])
        >>> retriever.remove(rows=[1]).predict([[0.0, 1.0, 0.2]])
        array(['c'], dtype='<U1')
        >>> retriever.classes_
        array(['a', 'c'], dtype='<U1')
        """
        check_is_fitted(self)
        rows = self._rows_to_remove(ids, rows)
        n = self._n_gallery()
        if len(rows) == n:
            raise ValueError(
                f"remove would take all {n} items out of the gallery, which cannot be empty; "
                "fit a new gallery instead."
            )
        if len(rows) == 0:
            return self
        keep = np.ones(n, dtype=bool)
        keep[rows] = False
        self._remove_gallery(rows)
        labels = None if self._labels_are_rows() else self.prototype_labels_[keep]
        self._set_gallery(labels, _kept_ids(self.prototype_ids_, keep))
        stats = getattr(self, "prototype_file_stats_", None)
        if stats is not None:
            self.prototype_file_stats_ = stats[keep]
        return self

    def _rows_to_remove(self, ids, rows) -> np.ndarray:
        """The sorted, unique gallery rows ``remove`` is asked to drop, all checked to exist."""
        if (ids is None) == (rows is None):
            raise ValueError(
                "remove takes ids (values of prototype_ids_) or rows (rows of prototype_), "
                f"exactly one of them; got {'both' if ids is not None else 'neither'}."
            )
        n = self._n_gallery()
        if rows is not None:
            rows = np.atleast_1d(np.asarray(rows)).ravel()
            if rows.size and (rows.dtype.kind not in "iu"):
                raise ValueError(f"rows must be integer rows of the gallery, 0 to {n - 1}; got dtype {rows.dtype}.")
            rows = rows.astype(np.int64)
            wrong = rows[(rows < 0) | (rows >= n)]
            if wrong.size:
                raise ValueError(
                    f"rows {_listed(wrong)} are not in the gallery, whose rows are 0 to {n - 1}; "
                    "nothing was removed."
                )
            return np.unique(rows)
        wanted = _values(ids)
        gallery = self.prototype_ids_
        hit, found = _isin(gallery, wanted), _isin(wanted, gallery)
        if not found.all():
            raise ValueError(
                f"ids {_listed(wanted[~found])} are not in prototype_ids_ (which holds e.g. "
                f"{_listed(gallery[:3])}); nothing was removed. Pass values of prototype_ids_, "
                "or rows=."
            )
        return np.flatnonzero(hit)

    def _extend_file_stats(self, n_old: int, stats) -> None:
        """``prototype_file_stats_`` after ``add``: kept while some gallery item is a file."""
        old = getattr(self, "prototype_file_stats_", None)
        if old is None and stats is None:
            return
        if old is None:  # the first files of a gallery of other items
            old = np.full((n_old, 2), UNKNOWN, np.int64)
        if stats is None:  # items that are no files, after files
            stats = np.full((self._n_gallery() - n_old, 2), UNKNOWN, np.int64)
        self.prototype_file_stats_ = np.concatenate([old, stats])

    def _set_gallery(self, labels, ids) -> None:
        """Labels (None: the row numbers, ``labels_are_rows_``) and ids of the gallery as it is now."""
        self.labels_are_rows_ = labels is None
        self.prototype_labels_ = np.arange(self._n_gallery()) if labels is None else np.asarray(labels)
        self.prototype_ids_ = np.asarray(ids)
        self.classes_, self._label_codes = np.unique(self.prototype_labels_, return_inverse=True)
        self.outlier_label_ = resolve_outlier_label(self._settings.outlier_label, self.classes_, self._label_codes)

    def _labels_are_rows(self) -> bool:
        """Whether the gallery was fitted without labels, so that its labels are its row numbers
        (continued by ``add``, numbered anew by ``remove``). A model saved before
        ``labels_are_rows_`` existed: labels equal to the row numbers are taken for them."""
        recorded = getattr(self, "labels_are_rows_", None)
        if recorded is not None:
            return bool(recorded)
        labels = self.prototype_labels_
        return labels.dtype.kind in "iu" and np.array_equal(labels, np.arange(len(labels)))

    # -- internals ---------------------------------------------------------------------------

    def _similarity(self):
        return get_similarity(self._settings.similarity_fn)

    def _query_features(self, X, *, embedded: bool = False) -> np.ndarray:
        """Queries as gallery-space rows; unreadable images' rows are all NaN."""
        settings = self._settings
        if embedded:
            features = settings._encode_input(X, reset=False, embedded=True)[0]
        else:
            features = settings._encode_input(X, reset=False)[0]
            valid = _readable(features)
            if valid.all():
                features = settings._embed(features)
            else:  # a head never sees the NaN rows of unreadable queries
                rows = settings._embed(features[valid]) if valid.any() else None
                width = self._n_features() if rows is None else rows.shape[1]
                features = np.full((len(features), width), np.nan, np.float32)
                if rows is not None:
                    features[valid] = rows
        return self._check_width(features)

    def _check_width(self, features: np.ndarray) -> np.ndarray:
        if features.shape[1] != self._n_features():
            raise ValueError(
                f"X has {features.shape[1]} features, but the gallery of {type(self).__name__} has "
                f"{self._n_features()}; query with the same encoder (or feature size) as fit"
                " (and embedded=True only for embeddings, transform's output)."
            )
        return features

    def _search(self, queries, k):
        exclude_self = queries is None
        k = self._resolve_k(self._settings.topk if k is None else k, exclude_self)
        if exclude_self:
            return self._gallery_topk(None, k)
        valid = _readable(queries)
        if valid.all():
            return self._gallery_topk(queries, k)
        similarities = np.full((len(queries), k), -np.inf, np.float32)
        indices = np.full((len(queries), k), -1, np.int64)
        if valid.any():
            similarities[valid], indices[valid] = self._gallery_topk(queries[valid], k)
        return similarities, indices

    def _search_rows(self, rows: np.ndarray, k: int):
        """The ``k`` best matches of gallery rows ``rows`` (``threshold="auto"``; own rows may count).

        The gallery searched against itself, without each row's own match; a retriever
        that holds its gallery's features queries the rows directly instead.
        """
        similarities, indices = self._search(None, min(k, self._n_gallery() - 1))
        return similarities[rows], indices[rows]

    def _resolve_k(self, k, exclude_self: bool) -> int:
        available = self._n_gallery() - int(exclude_self)
        if not isinstance(k, Integral) or isinstance(k, bool) or (k < 1 and k != -1):
            raise ValueError(f"n_neighbors must be a positive int or -1 (all); got {k!r}.")
        k = available if k == -1 else int(k)
        if k > available:
            whose = "the gallery minus the query itself" if exclude_self else "the gallery"
            raise ValueError(
                f"{k} neighbours requested (topk/n_neighbors), but {whose} holds only {available} "
                f"item(s); lower topk or n_neighbors, or use -1 for all."
            )
        if k < 1:
            raise ValueError("the gallery holds a single item, which has no neighbour but itself.")
        return k

    def _vote_weights(self, similarities, indices):
        """Class codes and vote weights of ranked neighbours; codes -1 for unreadable queries."""
        codes = np.where(indices < 0, -1, self._label_codes[np.maximum(indices, 0)])
        return codes, vote_weights(self._settings.vote, np.where(indices < 0, 0, similarities))


def _readable(features: np.ndarray) -> np.ndarray:
    """Rows that are not the NaN placeholders of unreadable queries."""
    return ~np.isnan(features).any(axis=1)


def _empty_rows(n: int, dtype) -> np.ndarray:
    """An object array of ``n`` empty arrays (radius results of unreadable queries)."""
    rows = np.empty(n, dtype=object)
    for i in range(n):
        rows[i] = np.empty(0, dtype)
    return rows


def _aligned_labels(y, n: int, skipped) -> np.ndarray:
    """``y`` of ``n`` kept items: labels of skipped files removed when ``y`` covered them."""
    labels = column_or_1d(y, warn=True)
    if skipped and len(labels) == n + len(skipped):
        labels = np.delete(labels, [index for index, _, _ in skipped])
    if len(labels) != n:
        raise ValueError(f"X has {n} samples but y has {len(labels)}; they must match.")
    check_classification_targets(labels)
    return labels


def _kept_ids(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Ids of the ``keep`` rows; row numbers (the ids of items that are no files) are numbered anew."""
    if values.dtype.kind in "iu" and np.array_equal(values, np.arange(len(values))):
        return np.arange(int(keep.sum()))
    return values[keep]


def _values(ids) -> np.ndarray:
    """``ids`` as a 1-D array, paths as strings; objects when the kinds are mixed (never ``'1'`` for 1)."""
    items = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in np.ravel(np.asarray(ids, dtype=object)).tolist()]
    return np.asarray(items, dtype=None if len({type(i) for i in items}) <= 1 else object)


def _isin(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin``, by Python equality when the kinds differ (paths never equal numbers)."""
    kinds = {values.dtype.kind, wanted.dtype.kind}
    if kinds <= {"i", "u", "f", "b"} or kinds <= {"U"}:
        return np.isin(values, wanted)
    wanted = set(wanted.tolist())
    return np.fromiter((value in wanted for value in values.tolist()), dtype=bool, count=len(values))


def _listed(values, at_most: int = 5) -> str:
    """The first few values, for an error message."""
    values = list(np.asarray(values).tolist())
    more = f" and {len(values) - at_most} more" if len(values) > at_most else ""
    return f"{values[:at_most]!r}{more}"


def _csr_graph(counts, columns, distances, n_gallery: int) -> sp.csr_matrix:
    """The CSR graph of both graph methods: ``counts[i]`` entries in row ``i``, their gallery
    ``columns`` row after row, valued by ``distances`` (None: ones, connectivity)."""
    data = np.ones(len(columns)) if distances is None else distances
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((data, columns, indptr), shape=(len(counts), n_gallery))


def _check_graph_mode(mode) -> None:
    if mode not in ("connectivity", "distance"):
        raise ValueError(f"mode={mode!r} is not supported; use 'connectivity' or 'distance'.")


def _concatenate(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Append labels or ids; mixed kinds (e.g. paths after integers) become objects."""
    if old.dtype.kind != new.dtype.kind and not {old.dtype.kind, new.dtype.kind} <= {"i", "u"}:
        old, new = old.astype(object), new.astype(object)
    return np.concatenate([old, new])
