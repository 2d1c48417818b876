"""Approximate top-k search with faiss: an inverted-file (``"ivf"``) or graph (``"hnsw"``) index.

The exact blocked engine (:mod:`._topk`, ``algorithm="brute"``) stays the default. With
``ImageRetriever(algorithm="ivf" | "hnsw")`` an index of faiss (``IndexIVFFlat``,
``IndexHNSWFlat``) is built from the gallery on the first query and kept. faiss only
*proposes* candidates: every returned pair is scored again in float32 by
:meth:`Similarity.exact`, as the exact engine scores its own, so a pair both find has the same
score in both, and the results follow the exact engine's conventions: best first, ties to the
lower gallery index, ``-1`` / ``-inf`` in the slots left unfilled, and no row its own match
when the gallery searches itself. What is approximate is only *which* gallery rows are found.

cosine searches the normalised vectors by inner product, dot the raw ones by inner product,
euclidean by L2; a callable similarity has no index. faiss is an optional dependency
(``pip install "skretrieval[ann]"``), imported here only, and only once an index is needed.
"""

from __future__ import annotations

from math import sqrt
from numbers import Integral

import numpy as np
import torch

from ._gallery import default_working_memory
from ._similarity import Similarity
from ._topk import best_first

ALGORITHMS = ("brute", "ivf", "hnsw")
APPROXIMATE = ("ivf", "hnsw")
INSTALL = 'pip install "skretrieval[ann]"'
# Options of each algorithm; the search-time ones change no index (set per search).
_OPTIONS = {"brute": (), "ivf": ("nlist", "nprobe"), "hnsw": ("M", "efConstruction", "efSearch")}
_SEARCH_OPTIONS = ("nprobe", "efSearch")
_HNSW_DEFAULTS = {"M": 32, "efConstruction": 80, "efSearch": 64}
# Candidates are re-scored in pieces below torch's parallel grain size (32768 elements), which
# torch runs on the calling thread: right after a search, faiss's OpenMP threads still spin
# and starved torch's thread pool (12 ms per small op on 2 cores, 20x the inline time; a
# piece of exactly 32768 is already parallel).
_RESCORE_FLOATS = 2**14
_BUILD_ROWS = 65536  # gallery rows prepared and added to an index at a time
# k-means trains on at most this many rows per cell: faiss warns below 39 and samples 256.
# A quarter of faiss's sample (and of its training time) lost little: recall@10 at the default
# nprobe 1.000 vs 1.000 (clustered) and 0.398 vs 0.407 (uniform), 100,000 x 64.
_TRAIN_PER_CELL = 64


def import_faiss():
    """The ``faiss`` module, or an ImportError naming the install command."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            f"algorithm='ivf' and algorithm='hnsw' search with faiss, which is not installed; "
            f"install it with: {INSTALL} (or use the exact algorithm='brute')."
        ) from error
    return faiss


def check_algorithm(algorithm: str, params, similarity: Similarity) -> None:
    """Validate ``algorithm_params`` for ``algorithm`` (``fit`` calls this before encoding).

    Raises a ValueError for an option the algorithm does not take, a value that is not a
    positive int, or a callable similarity with an approximate algorithm, and the
    ImportError of :func:`import_faiss` when faiss is missing.
    """
    allowed = _OPTIONS[algorithm]
    unknown = sorted(set(params or {}) - set(allowed))
    if unknown:
        takes = f"only {list(allowed)}" if allowed else "none (it is the exact search)"
        raise ValueError(f"algorithm_params {unknown} are not options of algorithm={algorithm!r}, which takes {takes}.")
    for name, value in (params or {}).items():
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"algorithm_params[{name!r}] must be a positive int; got {value!r}.")
    if algorithm in APPROXIMATE:
        if not similarity.is_matmul:
            raise ValueError(
                f"algorithm={algorithm!r} indexes inner products or euclidean distances; a callable "
                "similarity_fn has no index: use algorithm='brute' with it."
            )
        import_faiss()


def resolve_params(algorithm: str, params, n_gallery: int) -> dict:
    """Every option of ``algorithm``: the given ones, and defaults derived from the gallery size.

    ``"ivf"``: ``nlist`` (cells) ``4 sqrt(n)``, at most ``n / 39`` (faiss's k-means wants 39
    points per centroid; at least 1), ``nprobe`` (cells searched per query) ``sqrt(nlist)``
    rounded up, at most ``nlist``. ``"hnsw"``: ``M=32``, ``efConstruction=80``,
    ``efSearch=64`` (raised to the ``2 k`` candidates at search time).

    Examples
    --------
    >>> from skretrieval.search._approximate import resolve_params
    >>> resolve_params("ivf", None, 1_000_000)
    {'nlist': 4000, 'nprobe': 64}
    >>> resolve_params("hnsw", {"efSearch": 128}, 1000)
    {'M': 32, 'efConstruction': 80, 'efSearch': 128}
    """
    params = dict(params or {})
    if algorithm == "hnsw":
        return {**_HNSW_DEFAULTS, **params}
    if algorithm != "ivf":
        return params
    nlist = params.get("nlist", max(1, min(round(4 * sqrt(n_gallery)), n_gallery // 39)))
    if nlist > n_gallery:
        raise ValueError(
            f"algorithm_params nlist={nlist} exceeds the {n_gallery} gallery items; each of the "
            "nlist cells needs at least one: lower nlist (or leave it to the default)."
        )
    nprobe = params.get("nprobe", int(np.ceil(sqrt(nlist))))
    return {"nlist": nlist, "nprobe": min(nprobe, nlist)}


def build_key(algorithm: str, params) -> tuple:
    """What an index depends on besides the gallery and similarity: not the search-time options."""
    built = sorted((name, value) for name, value in (params or {}).items() if name not in _SEARCH_OPTIONS)
    return algorithm, tuple(built)


class ApproximateIndex:
    """A faiss index of a gallery, searched with the exact engine's conventions.

    Parameters
    ----------
    gallery : ndarray of shape (n_gallery, n_features)
        Copied into the index, prepared (normalised for cosine); the candidates are
        re-scored from that copy.
    similarity : Similarity
        Not a callable's.
    algorithm : {"ivf", "hnsw"}
    params : dict or None
        ``algorithm_params`` (see :func:`resolve_params`); the search-time options
        (``nprobe``, ``efSearch``) are given again to :meth:`search`.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.search import get_similarity
    >>> from skretrieval.search._approximate import ApproximateIndex
    >>> gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], np.float32)
    >>> index = ApproximateIndex(gallery, get_similarity("cosine"), "hnsw", None)
    >>> index.search(gallery, 1, exclude_self=True)[1]
    array([[2],
           [2],
           [0]])
    """

    def __init__(self, gallery, similarity: Similarity, algorithm: str, params):
        faiss = import_faiss()
        self.similarity, self.algorithm = similarity, algorithm
        self.n_gallery = len(gallery)
        built = resolve_params(algorithm, params, self.n_gallery)
        self.built = {name: value for name, value in built.items() if name not in _SEARCH_OPTIONS}
        self.index, self.rows = _build(faiss, gallery, similarity, algorithm, built)

    def search(self, queries, k: int, *, exclude_self: bool = False, params=None, working_memory=None):
        """The ``k`` best matches found for every query, as :func:`topk_search` returns them.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features)
            With ``exclude_self``, the gallery itself, in order.
        k : int
            ``1 <= k <= n_gallery`` (``n_gallery - 1`` with ``exclude_self``).
        exclude_self : bool, default=False
            Query ``i`` never matches gallery row ``i`` (one more is searched, the row
            itself dropped).
        params : dict, default=None
            ``algorithm_params``, whose ``nprobe`` / ``efSearch`` apply to this search.
        working_memory : float, default=None
            MiB the re-scored candidates of a query block may take.

        Returns
        -------
        scores : ndarray of shape (n_queries, k), float32
            Exact float32 similarities of the rows found, descending (ties: lower index
            first); ``-inf`` where fewer than ``k`` were found.
        indices : ndarray of shape (n_queries, k), int64
            Gallery rows; ``-1`` where fewer than ``k`` were found.
        """
        queries = np.asarray(queries)
        limit = self.n_gallery - 1 if exclude_self else self.n_gallery
        if not 1 <= k <= limit:
            raise ValueError(f"k={k} neighbours requested, but only {limit} gallery items can be returned.")
        # faiss ranks by its own float32 products, which differ from the re-scoring by
        # rounding: k spare candidates keep such near-ties from dropping a neighbour at the
        # k-th place. faiss returns at most ntotal.
        wanted = min(2 * k + int(exclude_self), self.index.ntotal)
        chosen = {name: value for name, value in (params or {}).items() if name in _SEARCH_OPTIONS}
        options = resolve_params(self.algorithm, {**self.built, **chosen}, self.n_gallery)
        search_params = _search_parameters(self.algorithm, options, wanted)
        budget = (working_memory if working_memory is not None else default_working_memory()) * 2**20
        # a query block's prepared queries, candidate ids, rows and scores
        block = max(1, int(budget // (4 * queries.shape[1] + 20 * max(wanted, 1))))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        indices = np.full((len(queries), k), -1, np.int64)
        for q0 in range(0, len(queries), block):
            q = _prepared(self.similarity, queries[q0 : q0 + block], _RESCORE_FLOATS)
            ids = self._found(q.numpy(), wanted, search_params)
            found = ids if self.rows is None else np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)
            if exclude_self:
                ids[found == np.arange(q0, q0 + len(q))[:, None]] = -1
            values = self._rescore(q, ids)
            scores[q0 : q0 + len(q)], indices[q0 : q0 + len(q)] = best_first(values, found, k)
        return scores, indices

    def _found(self, queries: np.ndarray, wanted: int, search_params) -> np.ndarray:
        """faiss ids proposed per query (``-1``: none)."""
        if wanted < 1:  # nothing indexed (every gallery row held a NaN)
            return np.full((len(queries), 0), -1, np.int64)
        return self.index.search(queries, wanted, params=search_params)[1]

    def _rescore(self, queries: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        """Float32 scores of the proposed pairs, as the exact engine computes them; -inf for none.

        The rows come from the index's copy, the exact float32 rows it was given: ``prepare``
        is row-wise, so they equal the rows of the prepared gallery the exact engine holds.
        """
        values = np.full(ids.shape, -np.inf, np.float32)
        rows, slots = np.nonzero(ids >= 0)
        per_piece = max(1, _RESCORE_FLOATS // queries.shape[1])
        for p0 in range(0, len(rows), per_piece):
            r, s = rows[p0 : p0 + per_piece], slots[p0 : p0 + per_piece]
            candidates = torch.from_numpy(self.index.reconstruct_batch(ids[r, s]))
            exact = self.similarity.exact(queries.index_select(0, torch.from_numpy(r)), candidates).numpy()
            values[r, s] = np.where(exact > -np.inf, exact, -np.inf)  # NaN never matches
        return values


def _prepared(similarity: Similarity, x, piece: int | None = None) -> torch.Tensor:
    """Float32 rows as the exact engine prepares them (C-contiguous, as faiss needs).

    ``piece``: prepared that many floats at a time (row-wise, so the same values), inline.
    """
    tensor = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    rows = len(tensor) if piece is None else max(1, piece // max(tensor.shape[1], 1))
    if rows >= len(tensor):
        return similarity.prepare(tensor).contiguous()
    return torch.cat([similarity.prepare(tensor[i : i + rows]) for i in range(0, len(tensor), rows)])


def _build(faiss, gallery, similarity: Similarity, algorithm: str, params: dict):
    """The faiss index of the gallery's prepared rows, and the gallery row of each id (None: all).

    Rows are prepared and added ``_BUILD_ROWS`` at a time, so the build's memory beside
    faiss's own copy is one such block (and the k-means sample), never a prepared copy of the
    whole gallery. Rows holding a NaN or inf never match (as in the exact engine) and would
    spoil k-means: they stay out of the index, whose ids then map back through ``rows``.
    """
    d = gallery.shape[1]
    metric = faiss.METRIC_L2 if similarity.name == "euclidean" else faiss.METRIC_INNER_PRODUCT
    if algorithm == "ivf":
        sample = _finite(_prepared(similarity, gallery[_training_rows(len(gallery), params["nlist"])]).numpy())
        index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, min(params["nlist"], max(len(sample), 1)), metric)
        index.cp.min_points_per_centroid = 1  # nlist <= n is checked; no faiss warning on small galleries
        if len(sample):
            index.train(sample)
        del sample
    else:
        index = faiss.IndexHNSWFlat(d, params["M"], metric)
        index.hnsw.efConstruction = params["efConstruction"]
    kept = [np.empty(0, np.int64)]
    for start in range(0, len(gallery), _BUILD_ROWS):
        block = _prepared(similarity, gallery[start : start + _BUILD_ROWS]).numpy()
        finite = np.isfinite(block).all(axis=1)
        kept.append(start + np.flatnonzero(finite))
        if finite.any():
            index.add(block if finite.all() else block[finite])
    if algorithm == "ivf":
        index.make_direct_map()  # id -> stored vector, for the re-scoring (8 bytes per item)
    rows = np.concatenate(kept)
    return index, None if len(rows) == len(gallery) else rows


def _training_rows(n: int, nlist: int) -> np.ndarray:
    """Sorted gallery rows k-means trains on: all, or ``_TRAIN_PER_CELL * nlist`` of them drawn
    with a fixed seed (one gallery always gives the same index)."""
    size = _TRAIN_PER_CELL * nlist
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(1234).choice(n, size, replace=False))


def _finite(vectors: np.ndarray) -> np.ndarray:
    finite = np.isfinite(vectors).all(axis=1)
    return vectors if finite.all() else vectors[finite]


def _search_parameters(algorithm: str, params: dict, k: int):
    """faiss's per-search options (thread-safe: the index itself is never modified)."""
    faiss = import_faiss()
    if algorithm == "ivf":
        return faiss.SearchParametersIVF(nprobe=params["nprobe"])
    return faiss.SearchParametersHNSW(efSearch=max(params["efSearch"], k))
