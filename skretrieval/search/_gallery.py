"""The gallery as the search engine holds it, and the blocked scan that finds candidates.

A :class:`SearchGallery` is prepared once (normalised, moved to the device, copied to the
matrix-product dtype) and can be kept resident between searches. :func:`candidates` finds the
pairs of a score block whose proxy reaches a per-query threshold (the radius search's scan):
whole chunks of ``_CHUNK`` columns are discarded by their maximum first, so most of a block is
never looked at element by element. The error bounds that keep reduced-precision products exact
are :meth:`SearchGallery.margin`, :meth:`~SearchGallery.lower` and :meth:`~SearchGallery.floor`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn import get_config
from torch.nn import functional as F

from ._bounds import DTYPES as _BOUND_DTYPES
from ._bounds import MIN_FEATURES as _MIN_BOUND_FEATURES
from ._bounds import TailBound
from ._precision import finite_max, matmul_error_bound, max_rounding, product_margin, unit_roundoff
from ._similarity import Similarity
from ._storage import RowStore, read_blocks, rows_at_once, streamed

_CHUNK = 128  # columns whose max is compared with the threshold before any element is
_MAX_QUERY_BLOCK = 1024
_MAX_GALLERY_BLOCK = 16384  # larger blocks stop helping the product and hurt the cache
# On a CPU a score block should stay in the last-level cache: 1000 x 16384 blocks (64 MiB) ran
# the 1000 x 200000 x 512 product ~15% slower than 1000 x 1024 ones, while each block also costs
# a few small selection ops, which a loaded machine makes slow; ~4M scores (16 MiB) balance the
# two. GPUs take the budget's blocks.
_CPU_BLOCK_SCORES = 2**22
# A block computed as several products (top-k) keeps each product near 1M scores (4 MiB):
# 1000 x 1024 products ran the 1000 x 200000 x 512 fp32 scan 8-10% faster than 1000 x 4096
# ones on a 2-core AMD EPYC, and the block's selection ops run once for all its products.
_CPU_PRODUCT_SCORES = 2**20


class SearchGallery:
    """A gallery prepared for search on ``device`` with products in ``dtype``.

    A float32 gallery in memory is prepared once (normalised for cosine, moved to the
    device, copied to the product dtype) and held resident. A float16 or memory-mapped
    gallery is *streamed* (:func:`~skretrieval.search._storage.streamed`): it stays as it
    is stored, and the scan reads, upcasts and prepares one block of rows at a time; its
    norm statistics come from one pass at construction. Only ``sqnorm`` (4 bytes a row)
    is then resident.

    Parameters
    ----------
    gallery : array-like or tensor of shape (n_gallery, n_features)
    similarity : Similarity
    dtype : torch.dtype, default=torch.float32
        Dtype of the matrix products (``torch.bfloat16``, ``torch.float16`` select
        candidates only; scores are float32).
    device : str or torch.device, default="cpu"

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.search import SearchGallery, get_similarity
    >>> SearchGallery(np.eye(3), get_similarity("cosine")).n_gallery
    3
    >>> SearchGallery(np.eye(3, dtype=np.float16), get_similarity("cosine")).streamed
    True
    """

    def __init__(self, gallery, similarity: Similarity, dtype=torch.float32, device="cpu"):
        self.similarity = similarity
        self.device = torch.device(device)
        self.dtype = dtype if similarity.is_matmul else torch.float32
        if streamed(gallery):
            self.store = RowStore(gallery, self.device)
            self.exact = self.low = None
            self.n_gallery, self.n_features = gallery.shape
            self._scan_statistics()
            return
        self.store = None
        self.exact = similarity.prepare(_as_float32(gallery, self.device))
        self.low = self.exact if self.dtype == torch.float32 else self.exact.to(self.dtype)
        self.n_gallery, self.n_features = self.exact.shape
        norms = torch.linalg.vector_norm(self.exact, dim=1)
        self.sqnorm = norms * norms
        # Rows with NaN or inf never match (their scores are NaN); they must not void the bound.
        self.max_norm = finite_max(norms)
        self.max_rounding = max_rounding(self.exact, self.low)

    @functools.cached_property
    def tail_bound(self) -> TailBound | None:
        """The :class:`~skretrieval.search._bounds.TailBound` of a resident gallery (a quarter
        of its memory more), built on first use and kept with it; None when streamed, when
        the proxy is not a plain product (euclidean, a callable), when a row is not finite,
        or once declined."""
        plain_product = self.similarity.is_matmul and self.similarity.proxy_scale == 1.0
        small = self.n_features < _MIN_BOUND_FEATURES
        if self.streamed or not plain_product or small or self.dtype not in _BOUND_DTYPES:
            return None
        bound = TailBound(self.exact, self.dtype)
        return bound if bound.finite else None

    def decline_tail_bound(self) -> None:
        """Free the tail bound and search this gallery by the full scan from now on: the bound
        pruned too little on its data to pay."""
        self.__dict__["tail_bound"] = None  # what functools.cached_property reads first

    @property
    def streamed(self) -> bool:
        """Whether blocks are read from the stored rows (a candidate is then scored while
        its block is at hand) rather than sliced from a resident prepared copy."""
        return self.store is not None

    @property
    def bytes_per_row(self) -> int:
        """Memory a block of a streamed gallery takes per row: the row as stored (the read
        buffer), upcast to float32 (prepared in place) and in the product dtype."""
        if not self.streamed:
            return 0
        low = 0 if self.dtype == torch.float32 else _itemsize(self.dtype)
        return self.n_features * (self.store.itemsize + 4 + low)

    def blocks(self, rows: int, start: int = 0):
        """Yield ``(g0, exact, low)`` for consecutive blocks of ``rows`` gallery rows, from row ``start``.

        ``exact`` is the prepared float32 block, ``low`` the same in the product dtype;
        both views of the resident copy, or (streamed) valid until the next block.
        """
        if not self.streamed:
            for g0 in range(start, self.n_gallery, rows):
                yield g0, self.exact[g0 : g0 + rows], self.low[g0 : g0 + rows]
            return
        shape = (min(rows, self.n_gallery), self.n_features)
        low = None if self.dtype == torch.float32 else torch.empty(shape, dtype=self.dtype, device=self.device)
        for g0, block in self.store.blocks(rows, start):
            exact = self.similarity.prepare_(block)
            yield g0, exact, exact if low is None else low[: len(exact)].copy_(exact)

    def _scan_statistics(self) -> None:
        """``sqnorm``, ``max_norm`` and ``max_rounding`` of a streamed gallery, in one pass."""
        sqnorm = torch.empty(self.n_gallery, device=self.device)
        self.max_norm = self.max_rounding = 0.0
        rows = rows_at_once(self.n_features)
        for g0, exact, low in self.blocks(rows):
            norms = torch.linalg.vector_norm(exact, dim=1)
            sqnorm[g0 : g0 + len(norms)] = norms * norms
            self.max_norm = max(self.max_norm, finite_max(norms))
            self.max_rounding = max(self.max_rounding, max_rounding(exact, low))
        self.sqnorm = sqnorm

    def margin(self, queries: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per query, a bound on ``|proxy - exact proxy|`` before the output rounding.

        For a product, ``q~.g~ - q.g = q.(g~ - g) + (q~ - q).g~``, so the measured rounding
        norms bound it (Cauchy-Schwarz), plus the float32 accumulation of the exact products
        of bf16/fp16 numbers. The euclidean proxy, with more roundings, uses the a-priori
        bound of :func:`matmul_error_bound`. ``dtype`` is the product's (the gallery's when
        None; float32 for products of the float32 copy).
        """
        if not self.similarity.is_matmul:
            return torch.zeros(len(queries), device=self.device)
        dtype = self.dtype if dtype is None else dtype
        if self.similarity.proxy_scale != 1.0:
            q_norm = torch.linalg.vector_norm(queries, dim=1)
            bound = matmul_error_bound(dtype, self.n_features)
            scale = self.similarity.proxy_scale
            # The euclidean proxy also subtracts ||b||^2 and compares with ||a||^2 - d^2,
            # where d, re-scored in float32, is off by up to ~d u ||a - b||.
            squares = 2.0 * scale * (self.max_norm**2 + q_norm * q_norm)
            return bound * (scale * q_norm * self.max_norm + squares)
        return product_margin(queries, self.max_norm, self.max_rounding, dtype, self.n_features)

    def lower(self, threshold: torch.Tensor, margin: torch.Tensor, dtype: torch.dtype | None = None):
        """The proxy threshold that keeps every pair whose exact proxy reaches ``threshold``.

        Rounding the product's output is monotone, so a pair with exact proxy ``>= t`` has a
        computed proxy ``>= fl(t - margin) >= (t - margin) - u * abs(t - margin)``.
        """
        lowered = threshold - margin
        return lowered - 1.01 * unit_roundoff(self.dtype if dtype is None else dtype) * lowered.abs()

    def floor(self, threshold: torch.Tensor, margin: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The least exact proxy of a pair whose computed proxy reaches ``threshold``.

        The converse of :meth:`lower`: a computed proxy ``c >= t`` comes from a value within
        ``u * abs(c)`` of it (output rounding), itself within ``margin`` of the exact proxy.
        Infinite thresholds stay as they are.
        """
        floored = threshold - margin - 1.01 * unit_roundoff(self.dtype if dtype is None else dtype) * threshold.abs()
        return torch.where(torch.isinf(threshold), threshold, floored)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _as_float32(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device)


def block_sizes(
    n_queries: int,
    n_gallery: int,
    working_memory: float | None,
    bytes_per_score: int = 4,
    device=None,
    *,
    bytes_per_query: int = 0,
    products: int = 1,
    bytes_per_row: int = 0,
) -> tuple[int, int]:
    """Rows of queries and gallery scored at once so one score block fits the budget.

    ``working_memory`` is in MiB, as scikit-learn's ``working_memory``. When None, the budget
    is a quarter of the free memory of a CUDA ``device`` (``torch.cuda.mem_get_info``), and
    scikit-learn's global setting elsewhere. Gallery blocks are whole chunks of 128 columns
    (in each of the ``products``) when they can be; on a CPU a block holds at most ~4M
    scores (top-k: ``products`` of ~1M each), so what one product writes stays in cache.

    Parameters
    ----------
    n_queries, n_gallery : int
        Rows to search.
    working_memory : float or None
        The budget of one score block, in MiB.
    bytes_per_score : int, default=4
        Memory each score of a block takes (the search counts its product dtype and a mask byte).
    device : str or torch.device, default=None
        Where the search runs (for the CUDA budget and block shape).
    bytes_per_query : int, default=0
        Memory each query row of a block keeps for the whole scan (top-k: its chunk maxima),
        taken from the same budget.
    bytes_per_row : int, default=0
        Memory each gallery row of a block takes besides its scores (a streamed gallery's
        block buffers), taken from the same budget.
    products : int, default=1
        Matrix products a block is computed as (top-k: one per chunk column, see
        ``topk_search``); on a CPU each product, not the block, stays in cache.

    Returns
    -------
    query_rows, gallery_rows : int
        Rows of a block: at least one each, and at most ``n_queries``, ``n_gallery``.

    Examples
    --------
    >>> from skretrieval.search import block_sizes
    >>> block_sizes(10, 1000, working_memory=1)
    (10, 1000)
    """
    budget_mib = working_memory if working_memory is not None else default_working_memory(device)
    budget = max(1, int(budget_mib * 2**20))
    per_query = bytes_per_score + bytes_per_query  # with a single gallery row
    query_block = max(1, min(n_queries, _MAX_QUERY_BLOCK, (budget - bytes_per_row) // per_query))
    rest = max(1, budget - query_block * bytes_per_query)
    gallery_block = max(1, min(n_gallery, _MAX_GALLERY_BLOCK, rest // (query_block * bytes_per_score + bytes_per_row)))
    if device is None or torch.device(device).type != "cuda":
        per_product = _CPU_BLOCK_SCORES if products == 1 else _CPU_PRODUCT_SCORES
        gallery_block = min(gallery_block, max(_CHUNK, products * (per_product // query_block)))
    # Whole chunks of 128 columns, in each product when a block is several.
    for unit in (_CHUNK * products, _CHUNK):
        if unit < gallery_block < n_gallery:
            gallery_block -= gallery_block % unit
            break
    return query_block, gallery_block


def prepare_search(queries, gallery, similarity, dtype, device, working_memory, bytes_per_query=0, products=1):
    """What every blocked search starts with (top-k and radius alike).

    Returns the :class:`SearchGallery` (built unless one is given), the number of queries,
    and the query and gallery block sizes for ``working_memory`` (``bytes_per_query``,
    ``products``: see :func:`block_sizes`; a streamed gallery's block buffers count in the
    budget too).
    """
    if not isinstance(gallery, SearchGallery):
        gallery = SearchGallery(gallery, similarity, dtype, device)
    bytes_per_score = _itemsize(gallery.dtype) + 1
    blocks = block_sizes(
        len(queries), gallery.n_gallery, working_memory, bytes_per_score, gallery.device,
        bytes_per_query=bytes_per_query, bytes_per_row=gallery.bytes_per_row, products=products,
    )
    return gallery, len(queries), *blocks


def query_blocks(queries, gallery: SearchGallery, rows: int):
    """Yield ``(q0, prepared float32 queries q0:q0+rows)`` on the gallery's device.

    Numpy queries are converted a block at a time (memory-mapped ones read as a streamed
    gallery is: a gallery searched against itself); others once.
    """
    prepare = gallery.similarity.prepare
    if isinstance(queries, np.ndarray):  # memory-mapped or float16 ones are not copied whole
        for q0, block in read_blocks(queries, rows):
            yield q0, prepare(_as_float32(block, gallery.device))
        return
    q = prepare(_as_float32(queries, gallery.device))
    for q0 in range(0, len(q), rows):
        yield q0, q[q0 : q0 + rows]


def default_working_memory(device=None) -> float:
    """MiB a score block may take when the caller sets no budget."""
    device = None if device is None else torch.device(device)
    if device is not None and device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return free_bytes / 4 / 2**20  # leave room for the gallery, queries and top-k buffers
    return get_config()["working_memory"]


def score_buffer(gallery: SearchGallery, n_queries: int, gallery_block: int) -> torch.Tensor | None:
    """Memory that every score block of a query block is written into, or None (a callable).

    A fresh block per product costs the allocator's page faults on every block: reusing one
    ran the 1000 x 200000 x 512 fp32 product ~20% faster on a CPU.
    """
    if not gallery.similarity.is_matmul:
        return None
    return torch.empty(n_queries * gallery_block, dtype=gallery.dtype, device=gallery.device)


def score_block(gallery: SearchGallery, queries_low: torch.Tensor, g0: int, low, out=None) -> torch.Tensor:
    """Proxy scores of a query block against the gallery block ``low`` of rows from ``g0``,
    written into ``out`` (a contiguous ``(len(queries_low), len(low))`` tensor, e.g. a view
    of a :func:`score_buffer`) if given."""
    g1 = g0 + len(low)
    sqnorm = gallery.sqnorm[g0:g1] if gallery.similarity.proxy_scale != 1.0 else None
    return gallery.similarity.block(queries_low, low, sqnorm, out=out)


def mask_self(scores: torch.Tensor, q0: int, g0: int) -> None:
    """Set the score of query ``i`` against gallery row ``i`` to -inf, in place."""
    rows = torch.arange(scores.shape[0], device=scores.device) + q0
    cols = rows - g0
    inside = (cols >= 0) & (cols < scores.shape[1])
    scores[rows[inside] - q0, cols[inside]] = -torch.inf


def mask_lower(scores: torch.Tensor, q0: int, g0: int) -> None:
    """Set the score of query ``i`` against every gallery row ``j <= i`` to -inf, in place:
    a self-search of a symmetric similarity keeps each pair once, as ``i < j``."""
    n, m = scores.shape
    width = min(m, q0 + n - g0)  # the columns some query's own row reaches
    if width <= 0:
        return
    rows = torch.arange(q0, q0 + n, device=scores.device)[:, None]
    cols = torch.arange(g0, g0 + width, device=scores.device)[None, :]
    scores[:, :width].masked_fill_(cols <= rows, -torch.inf)


def candidates(scores: torch.Tensor, threshold: torch.Tensor):
    """``(rows, cols)`` of the entries ``scores >= threshold[row]``, row-major.

    Chunks whose maximum is below the threshold are skipped wholesale.
    """
    n_rows, n_cols = scores.shape
    pad = -n_cols % _CHUNK
    if pad:  # only a last, partial block pays for this copy
        scores = F.pad(scores, (0, pad), value=-torch.inf)
    threshold = threshold.to(scores.dtype)
    chunks = scores.view(n_rows, -1, _CHUNK)
    n_chunks = chunks.shape[1]
    # "not below" rather than ">=": a chunk whose max is NaN (a NaN gallery row) is looked into.
    rows, chunk = torch.nonzero(~(chunks.amax(dim=2) < threshold[:, None]), as_tuple=True)
    hit_chunks = chunks.view(-1, _CHUNK).index_select(0, rows * n_chunks + chunk)
    hit, offset = torch.nonzero(hit_chunks >= threshold[rows][:, None], as_tuple=True)
    rows, cols = rows[hit], chunk[hit] * _CHUNK + offset
    inside = cols < n_cols
    return rows[inside], cols[inside]


def exact_scores(gallery: SearchGallery, queries, scores, rows, cols, g0, exact):
    """Float32 scores of candidate pairs (``cols`` are gallery rows of the block ``exact``
    of prepared float32 rows from ``g0``)."""
    if not gallery.similarity.is_matmul:
        return scores[rows, cols - g0].float()  # a callable's block is exact
    return gallery.similarity.exact(queries[rows], exact[cols - g0])
