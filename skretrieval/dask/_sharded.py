"""ShardedRetriever: an ImageRetriever whose gallery lives in blocks on Dask workers."""

from __future__ import annotations

import copy
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from .._open_set import label_rejected, rejected, resolve_outlier_label
from .._retriever import ImageRetriever
from .._vote import plurality_vote, vote_weights
from ..search import get_similarity, topk_search


def _shard_topk(queries, shard, offset, k, similarity_fn, working_memory):
    """Local top-k of one shard (the single-machine engine, on the worker's CPU), global indices."""
    k = min(k, len(shard))
    scores, indices = topk_search(
        queries, shard, k, get_similarity(similarity_fn), working_memory=working_memory, device="cpu"
    )
    return scores, indices + offset


def _merge(a, b, k):
    """Merge two (scores, indices) top-k lists: score descending, then lower global index."""
    scores = np.concatenate([a[0], b[0]], axis=1)
    indices = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((indices, -scores), axis=1)[:, :k]
    rows = np.arange(len(scores))[:, None]
    return scores[rows, order], indices[rows, order]


class ShardedRetriever(ClassifierMixin, BaseEstimator):
    """An :class:`~skretrieval.ImageRetriever` whose gallery is sharded across a Dask cluster.

    The gallery features are split into ``n_shards`` contiguous blocks held in the workers'
    memory. :meth:`kneighbors` sends each block of queries to every shard, where the
    single-machine search engine (:func:`skretrieval.search.topk_search`) finds the local
    top-k; the local lists are merged pairwise in a tree (score descending, ties to the lower
    gallery index), so results are identical to the single-machine retriever's. Queries are
    encoded on the client with the fitted retriever; encode large query sets with
    :func:`skretrieval.dask.encode` and pass the features.

    Parameters
    ----------
    retriever : ImageRetriever, default=None
        The estimator (encoder, similarity, ``topk``, ``vote``, ``working_memory``) to fit;
        ``ImageRetriever()`` when None. It is cloned, never modified.
    n_shards : int, default=None
        Gallery blocks; one per worker when None.
    replicas : int, default=1
        Copies of each shard on distinct workers. With 1, losing a worker loses its shards and
        queries raise a ``RuntimeError`` (never a partial result); with 2, Dask reruns the
        lost worker's query tasks on a surviving copy.
    query_block : int, default=4096
        Queries sent to the shards per task.

    Attributes
    ----------
    retriever_ : ImageRetriever
        The fitted retriever without its gallery features (``prototype_`` is empty); it
        encodes queries.
    shards_ : list of distributed.Future
        The gallery blocks, float32 arrays of shape (n_rows, n_features), on the workers.
    shard_offsets_ : ndarray of shape (n_shards + 1,)
        Global gallery row where each shard starts, and the gallery size.
    prototype_labels_ : ndarray of shape (n_gallery,)
    classes_ : ndarray of shape (n_classes,)
    threshold_ : float or None
        The fitted retriever's (``partial_fit`` keeps it).
    outlier_label_ : scalar or None
    n_features_ : int
        Width of the gallery features.

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval.dask import ShardedRetriever
    >>> with LocalCluster(n_workers=2, processes=False,
    ...                   dashboard_address=None) as cluster, Client(cluster) as client:
    ...     sharded = ShardedRetriever(ImageRetriever("precomputed", topk=1)).fit(
    ...         np.eye(4), ["a", "a", "b", "b"], client=client)
    ...     print(sharded.predict([[0.0, 0.0, 1.0, 0.1]]))
    ['b']
    """

    def __init__(self, retriever=None, *, n_shards=None, replicas=1, query_block=4096):
        self.retriever = retriever
        self.n_shards = n_shards
        self.replicas = replicas
        self.query_block = query_block

    def fit(self, X, y=None, *, client=None):
        """Fit a clone of ``retriever`` on the gallery, then shard its features on the cluster.

        Parameters
        ----------
        X : images or features
            The gallery, as :meth:`ImageRetriever.fit` accepts it (encoded on the client; use
            :func:`skretrieval.dask.encode` and ``encoder="precomputed"`` to encode on the
            cluster).
        y : array-like of shape (n_gallery,), default=None
            Gallery labels.
        client : distributed.Client, default=None
            The cluster; the current client when None.

        Returns
        -------
        self : ShardedRetriever
        """
        retriever = clone(self.retriever if self.retriever is not None else ImageRetriever())
        return self._shard_fitted(retriever.fit(X, y), client)

    @classmethod
    def from_retriever(cls, retriever: ImageRetriever, client=None, **params) -> ShardedRetriever:
        """Shard the gallery of an already fitted retriever (which is not modified).

        Parameters
        ----------
        retriever : ImageRetriever
            Fitted.
        client : distributed.Client, default=None
            The cluster; the current client when None.
        **params
            ``n_shards``, ``replicas``, ``query_block``.

        Returns
        -------
        sharded : ShardedRetriever
        """
        check_is_fitted(retriever)
        return cls(retriever, **params)._shard_fitted(retriever, client)

    def partial_fit(self, X, y=None):
        """Append items to the gallery as new shards; existing shards stay where they are.

        Parameters
        ----------
        X : images or features
            New gallery items, encoded like the first gallery.
        y : array-like of shape (n_new,), default=None
            Their labels; needed when the gallery was fitted with labels. New labels extend
            ``classes_``.

        Returns
        -------
        self : ShardedRetriever
        """
        check_is_fitted(self)
        features = self.retriever_._embed(self.retriever_._encode_input(X, reset=False)[0])
        self._check_width(features)
        n0, n = self.shard_offsets_[-1], len(features)
        unlabelled = np.array_equal(self.prototype_labels_, np.arange(n0))
        if y is None and not unlabelled:
            raise ValueError(
                "the gallery was fitted with labels y; pass the labels of the new items too "
                "(partial_fit(X, y))."
            )
        labels = np.arange(n0, n0 + n) if y is None else np.asarray(y)
        if len(labels) != n:
            raise ValueError(f"X has {n} samples but y has {len(labels)}; they must match.")
        labels = np.concatenate([self.prototype_labels_, labels])
        n_new = self._n_blocks(n)
        bounds = np.linspace(0, n, n_new + 1).astype(np.int64)
        self.shards_ = self.shards_ + self._scatter(features, bounds)
        self.shard_offsets_ = np.concatenate([self.shard_offsets_, n0 + bounds[1:]])
        self._set_labels(labels)
        return self

    add = partial_fit

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Nearest gallery items of each query, identical to :meth:`ImageRetriever.kneighbors`.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself (no item is its own neighbour).
        n_neighbors : int, default=None
            Neighbours per query; the retriever's ``topk`` when None, ``-1`` for all.
        return_distance : bool, default=True
            Whether to return the distances too.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors), float32
            Only when ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors), int64
            Global gallery rows.
        """
        similarities, indices = self.search(X, n_neighbors)
        if not return_distance:
            return indices
        return get_similarity(self.retriever_.similarity_fn).to_distance(similarities), indices

    def search(self, X=None, k=None):
        """The ``k`` most similar gallery items per query: similarities, best first.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, excluding each item itself.
        k : int, default=None
            Items per query; ``topk`` when None, ``-1`` for all.

        Returns
        -------
        similarities : ndarray of shape (n_queries, k), float32
        indices : ndarray of shape (n_queries, k), int64
        """
        check_is_fitted(self)
        if X is None:
            return self._search_self(self._resolve_k(k, True))
        return self._search(self._query_features(X), self._resolve_k(k, False))

    def predict(self, X):
        """Label of each query by a vote of its ``topk`` most similar gallery items.

        Parameters
        ----------
        X : images or features
            Queries.

        Returns
        -------
        y_pred : ndarray of shape (n_queries,)
            With a ``threshold``, ``outlier_label_`` for the rejected queries, as
            :meth:`ImageRetriever.predict`.
        """
        similarities, indices = self.search(X)
        weights = vote_weights(self.retriever_.vote, similarities)
        y_pred = self.classes_[plurality_vote(self._label_codes[indices], weights)]
        return label_rejected(y_pred, rejected(similarities[:, 0], self.threshold_), self.outlier_label_)

    def transform(self, X):
        """Feature vectors of ``X`` (encoded on the client), as the gallery was encoded.

        Parameters
        ----------
        X : images or features

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), float32
        """
        check_is_fitted(self)
        return self._query_features(X)

    # -- internals -------------------------------------------------------------------------

    def _shard_fitted(self, retriever, client):
        from distributed import default_client

        self._client = client if client is not None else default_client()
        features = retriever.prototype_
        shell = copy.copy(retriever)  # shares the encoder; the gallery goes to the workers
        shell.prototype_ = np.empty((0, features.shape[1]), dtype=np.float32)
        self.retriever_ = shell
        self.n_features_ = features.shape[1]
        bounds = np.linspace(0, len(features), self._n_blocks(len(features)) + 1).astype(np.int64)
        self.shards_ = self._scatter(features, bounds)
        self.shard_offsets_ = bounds
        self.threshold_ = retriever.threshold_
        self._set_labels(retriever.prototype_labels_)
        return self

    def _n_blocks(self, n):
        workers = len(self._client.nthreads())
        if workers == 0:
            raise RuntimeError("the Dask client has no workers; start some before sharding.")
        return max(1, min(n, self.n_shards or workers))

    def _scatter(self, features, bounds):
        workers = sorted(self._client.nthreads())
        shards = []
        for i in range(len(bounds) - 1):
            # round-robin placement; hash=False so equal blocks stay distinct keys
            block = np.ascontiguousarray(features[bounds[i] : bounds[i + 1]], dtype=np.float32)
            target = workers[(len(self.__dict__.get("shards_", [])) + i) % len(workers)]
            shards.append(self._client.scatter(block, workers=[target], hash=False))
        if self.replicas > 1:
            self._client.replicate(shards, n=self.replicas)
        return shards

    def _set_labels(self, labels):
        self.prototype_labels_ = np.asarray(labels)
        self.classes_, self._label_codes = np.unique(self.prototype_labels_, return_inverse=True)
        self.outlier_label_ = resolve_outlier_label(self.retriever_.outlier_label, self.classes_, self._label_codes)

    def _check_width(self, features):
        if features.shape[1] != self.n_features_:
            raise ValueError(
                f"X has {features.shape[1]} features, but the sharded gallery has "
                f"{self.n_features_}; query with the same encoder (or feature size) as fit."
            )

    def _query_features(self, X):
        features = self.retriever_._embed(self.retriever_._encode_input(X, reset=False)[0])
        self._check_width(features)
        return features

    def _resolve_k(self, k, exclude_self):
        k = self.retriever_.topk if k is None else k
        available = int(self.shard_offsets_[-1]) - int(exclude_self)
        if not isinstance(k, Integral) or isinstance(k, bool) or (k < 1 and k != -1):
            raise ValueError(f"n_neighbors must be a positive int or -1 (all); got {k!r}.")
        k = available if k == -1 else int(k)
        if not 1 <= k <= available:
            raise ValueError(
                f"{k} neighbours requested (topk/n_neighbors), but the gallery"
                f"{' minus the query itself' if exclude_self else ''} holds only {available} "
                "item(s); lower topk or n_neighbors, or use -1 for all."
            )
        return k

    def _search(self, queries, k):
        """Scatter query blocks, local top-k on every shard, tree merge; gathered in order."""
        client = self._client
        self._check_shards()
        results = []
        sim, wm = self.retriever_.similarity_fn, self.retriever_.working_memory
        for q0 in range(0, len(queries), self.query_block):
            block = client.scatter(queries[q0 : q0 + self.query_block], hash=False)
            level = [
                client.submit(_shard_topk, block, shard, int(offset), k, sim, wm, pure=False)
                for shard, offset in zip(self.shards_, self.shard_offsets_[:-1])
            ]
            while len(level) > 1:
                pairs = [
                    client.submit(_merge, level[i], level[i + 1], k, pure=False)
                    for i in range(0, len(level) - 1, 2)
                ]
                level = pairs + level[len(level) - len(level) % 2 :]
            results.append(level[0])
        try:
            parts = client.gather(results)
        except Exception as error:
            self._check_shards()  # a lost shard explains the failure best
            raise RuntimeError(f"the sharded query failed ({error!r}); no partial result is returned.") from error
        if not parts:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_self(self, k):
        """The gallery queried against itself: top-(k+1), then each item's own match removed."""
        n = int(self.shard_offsets_[-1])
        scores, indices = [], []
        for shard, offset in zip(self.shards_, self.shard_offsets_[:-1]):
            s, i = self._search(shard.result(), min(k + 1, n))
            own = np.arange(offset, offset + len(s))[:, None]
            keep = i != own
            # drop the own match, or the (k+1)-th when the own match ranked lower
            keep[keep.all(axis=1), -1] = False
            scores.append(s[keep].reshape(len(s), -1)[:, :k])
            indices.append(i[keep].reshape(len(s), -1)[:, :k])
        return np.concatenate(scores), np.concatenate(indices)

    def _check_shards(self):
        lost = [i for i, shard in enumerate(self.shards_) if shard.status != "finished"]
        if lost:
            raise RuntimeError(
                f"gallery shard(s) {lost} of {len(self.shards_)} were lost with their worker(s); "
                "a query now would return a partial result, so none is returned. Shard the "
                "gallery again (fit or from_retriever), with replicas=2 to survive a worker loss."
            )
