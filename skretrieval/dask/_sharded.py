"""ShardedRetriever: an ImageRetriever whose gallery lives in blocks on Dask workers."""

from __future__ import annotations

import copy
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from .._neighbors import GalleryMixin
from .._retriever import ImageRetriever
from ..search import get_similarity, radius_search, topk_search
from ..search._topk import best_first


def _shard_topk(queries, shard, offset, k, similarity_fn, working_memory):
    """Local top-k of one shard (the single-machine engine, on the worker's CPU), global indices."""
    k = min(k, len(shard))
    scores, indices = topk_search(
        queries, shard, k, get_similarity(similarity_fn), working_memory=working_memory, device="cpu"
    )
    return scores, np.where(indices < 0, -1, indices + offset)


def _reduces_replicas(dask_scheduler) -> bool:
    """On the scheduler: whether its active memory manager runs a ReduceReplicas policy."""
    amm = dask_scheduler.extensions.get("amm")
    if amm is None:
        return False
    running = amm.running() if callable(amm.running) else amm.running  # a property in newer releases
    return bool(running) and any(type(p).__name__ == "ReduceReplicas" for p in amm.policies)


def _warn_if_replicas_dropped(client, replicas) -> None:
    if client.run_on_scheduler(_reduces_replicas):
        warnings.warn(
            f"replicas={replicas}, but the scheduler's active memory manager runs its ReduceReplicas "
            "policy (distributed's default), which drops the extra copies within seconds, so a lost "
            "worker can still lose shards. Start the cluster inside dask.config.set("
            "{'distributed.scheduler.active-memory-manager.start': False}), or call client.amm.stop().",
            UserWarning,
            stacklevel=3,
        )


def _merge(a, b, k):
    """Merge two (scores, indices) top-k lists: score descending, then lower global index."""
    return best_first(np.concatenate([a[0], b[0]], axis=1), np.concatenate([a[1], b[1]], axis=1), k)


def _shard_radius(queries, query_offset, shard, offset, radius, similarity_fn, working_memory):
    """Matches within ``radius`` in one shard, global indices; ``query_offset`` (queries are
    gallery rows from there on) drops each query's own row."""
    distances, indices = radius_search(
        queries, shard, radius, get_similarity(similarity_fn), working_memory=working_memory, device="cpu"
    )
    for i in range(len(indices)):
        indices[i] = indices[i] + offset
        if query_offset is not None:
            keep = indices[i] != query_offset + i
            distances[i], indices[i] = distances[i][keep], indices[i][keep]
    return distances, indices


class ShardedRetriever(GalleryMixin, ClassifierMixin, BaseEstimator):
    """An :class:`~skretrieval.ImageRetriever` whose gallery is sharded across a Dask cluster.

    The gallery features are split into ``n_shards`` contiguous blocks held in the workers'
    memory. :meth:`kneighbors` sends each block of queries to every shard, where the
    single-machine search engine (:func:`skretrieval.search.topk_search`) finds the local
    top-k; the local lists are merged pairwise in a tree (score descending, ties to the lower
    gallery index), so results are identical to the single-machine retriever's. Everything
    else (labels, ``add``, ``remove``, unreadable queries, the vote, radius queries and graphs) is
    :class:`~skretrieval.ImageRetriever`'s own code. Queries are encoded on the client with
    the fitted retriever; encode large query sets with :func:`skretrieval.dask.encode` (the
    retriever's ``transform``) and pass the result with ``embedded=True``.

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
    prototype_ids_ : ndarray of shape (n_gallery,)
        File path of each gallery item when it came from files, else its row.
    labels_are_rows_ : bool
        As :class:`~skretrieval.ImageRetriever`'s: the labels are the row numbers.
    prototype_file_stats_ : ndarray of shape (n_gallery, 2), int64
        As :class:`~skretrieval.ImageRetriever`'s (only when some item came from a file).
    skipped_ : list of tuple
        ``(index in X, path, reason)`` of each unreadable image file left out by ``fit``
        and ``add``.
    classes_ : ndarray of shape (n_classes,)
    threshold_ : float or None
        The fitted retriever's (``add``/``partial_fit`` keep it); ``predict`` rejects as
        :meth:`ImageRetriever.predict` does.
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

        The same as :meth:`add` (scikit-learn's name for growing a fitted model).

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
        return self.add(X, y)

    # -- internals -------------------------------------------------------------------------

    @property
    def _settings(self):
        return self.retriever_

    def _shard_fitted(self, retriever, client):
        from distributed import default_client

        self._client = client if client is not None else default_client()
        features = retriever.prototype_
        shell = copy.copy(retriever)  # shares the encoder; the gallery goes to the workers
        shell.prototype_ = np.empty((0, features.shape[1]), dtype=np.float32)
        self.retriever_ = shell
        self.n_features_ = features.shape[1]
        self.shards_, self.shard_offsets_ = [], np.zeros(1, np.int64)
        self._append_gallery(features)
        self._set_gallery(None if retriever._labels_are_rows() else retriever.prototype_labels_, retriever.prototype_ids_)
        if hasattr(retriever, "prototype_file_stats_"):
            self.prototype_file_stats_ = retriever.prototype_file_stats_
        self.threshold_ = retriever.threshold_  # kept by add/partial_fit, as ImageRetriever.add
        self.skipped_ = list(getattr(retriever, "skipped_", []))
        return self

    # -- how this gallery is stored and searched (GalleryMixin's hooks) --------------------

    def _n_gallery(self) -> int:
        return int(self.shard_offsets_[-1])

    def _n_features(self) -> int:
        return self.n_features_

    def _gallery_topk(self, queries, k: int):
        return self._search_self(k) if queries is None else self._distributed_topk(queries, k)

    def _gallery_radius(self, queries, radius: float, sort_results: bool):
        settings = self._settings
        sim, wm = settings.similarity_fn, settings.working_memory
        if queries is None:  # every shard's rows against the whole gallery, own rows dropped
            blocks = [(shard.result(), int(offset)) for shard, offset in zip(self.shards_, self.shard_offsets_[:-1])]
        else:
            blocks = [(queries, None)]
        self._check_shards()
        distances, indices = [], []
        for block, query_offset in blocks:
            parts = self._client.gather([
                self._client.submit(_shard_radius, block, query_offset, shard, int(offset), radius, sim, wm, pure=False)
                for shard, offset in zip(self.shards_, self.shard_offsets_[:-1])
            ])
            for row in range(len(block)):  # shards in order: each row's indices ascend
                d = np.concatenate([part[0][row] for part in parts])
                i = np.concatenate([part[1][row] for part in parts])
                if sort_results:
                    order = np.lexsort((i, d))
                    d, i = d[order], i[order]
                distances.append(d)
                indices.append(i)
        return _object_rows(distances), _object_rows(indices)

    def _append_gallery(self, features: np.ndarray) -> None:
        n0, n = int(self.shard_offsets_[-1]), len(features)
        bounds = np.linspace(0, n, self._n_blocks(n) + 1).astype(np.int64)
        self.shards_ = self.shards_ + self._scatter(features, bounds)
        self.shard_offsets_ = np.concatenate([self.shard_offsets_, n0 + bounds[1:]])

    def _remove_gallery(self, rows: np.ndarray) -> None:
        """Each shard drops its rows on its own worker; emptied shards are dropped too."""
        from distributed import wait

        client, shards, sizes, changed = self._client, [], [], []
        self._check_shards()
        for shard, start, stop in zip(self.shards_, self.shard_offsets_[:-1], self.shard_offsets_[1:]):
            local = rows[(rows >= start) & (rows < stop)] - start
            if len(local) == stop - start:
                continue
            if len(local):
                where = client.who_has([shard])[shard.key]
                shard = client.submit(np.delete, shard, local, axis=0, workers=list(where), pure=False)
                changed.append(shard)
            shards.append(shard)
            sizes.append(int(stop - start - len(local)))
        wait(changed)  # finished before any query checks the shards
        if changed and self.replicas > 1:
            client.replicate(changed, n=self.replicas)
            _warn_if_replicas_dropped(client, self.replicas)
        self.shards_ = shards
        self.shard_offsets_ = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

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
            _warn_if_replicas_dropped(self._client, self.replicas)
        return shards

    def _distributed_topk(self, queries, k):
        """Scatter query blocks, local top-k on every shard, tree merge; gathered in order."""
        client = self._client
        self._check_shards()
        results = []
        sim, wm = self._settings.similarity_fn, self._settings.working_memory
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
            s, i = self._distributed_topk(shard.result(), min(k + 1, n))
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


def _object_rows(rows: list) -> np.ndarray:
    """A 1-D object array holding one array per query."""
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out
