"""Blocked exact top-k search, in two passes.

1. The gallery is scored block by block against a block of queries (matrix products, in
   the gallery's dtype), and each block leaves only the maximum of every chunk of
   ``_CHUNK`` columns: one reduction per block, no sort, no per-pair work. A block is
   computed as ``_CHUNK`` products, one per column of its chunks (see
   :func:`_score_chunks`), so each product stays in a CPU's cache while the block, and
   the selection ops that run once per block, are ``_CHUNK`` times larger.
2. The k-th largest chunk maximum of a query bounds its exact k-th score from below (k
   distinct pairs reach it, within the product's error bound), so only the chunks whose
   maximum reaches that bound, lowered by the error bound again, can hold a neighbour
   (about k of them per query on well-spread data). The bound only rises from block to
   block, so after the first block only the chunks reaching the last bound are looked at
   again (a scan of 128 maxima at a time, then a short list per query). Their pairs are
   scored again from the float32 gallery, the few that can still make the top-k are
   scored exactly and merged.

A gallery kept resident (a :class:`SearchGallery`) of at least 65,536 finite rows, searched
with float32 or bfloat16 products of a dot or cosine similarity, is first tried through its tail bound
(see ``._bounds``): the same two passes over products of a quarter of the features, then the
chunks whose bound reaches a query's k-th score bounded pair by pair and the survivors scored
exactly. Where the bound prunes too little (more than 2% of the chunks would be looked into, as
on uniform random vectors), the full scan answers, and the gallery keeps to it from then on.

The scan is the product plus a reduction at cache speed, whatever the data: clustered data,
where many gallery rows nearly tie, only widens the second pass, which reads the candidate
chunks' rows once. Extra memory is one score block, the chunk maxima of a query block
(``n_gallery / _CHUNK`` floats per query) and the second pass's batches, all within
``working_memory``.

Determinism: returned scores are computed pair by pair in float32 (:meth:`Similarity.exact`),
never from a block's matrix product, so they do not depend on block sizes, thread count or
precision mode; ties go to the lower gallery index. Two gallery rows whose float32 scores
differ only by rounding may still swap places between machines or torch versions.
"""

from __future__ import annotations

import numpy as np
import torch

from ._bounds import CHUNK as BOUND_CHUNK
from ._gallery import (
    SearchGallery,
    candidates,
    default_working_memory,
    mask_self,
    prepare_search,
    query_blocks,
    score_block,
    score_buffer,
)
from ._similarity import Similarity

_CHUNK = 16  # gallery columns per maximum: the second pass reads ~k chunks of rows per query
# The scan through the tail bound (see ._bounds) is tried from galleries of this size, on a
# probe of this many queries first; it gives way to the full scan when it would score more
# than this share of the gallery pair by pair (a gathered row costs several times a product's).
_MIN_BOUND_GALLERY = 65536
_PROBE_QUERIES = 64
_MAX_BOUND_SHARE = 0.02


def topk_search(
    queries,
    gallery,
    k: int,
    similarity: Similarity,
    *,
    exclude_self: bool = False,
    working_memory: float | None = None,
    device="cpu",
    dtype=torch.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar gallery rows for every query, best first.

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
    gallery : array-like, tensor or SearchGallery of shape (n_gallery, n_features)
        A :class:`SearchGallery` is used as it is (kept resident by the caller).
    k : int
        Neighbours per query, ``1 <= k <= n_gallery`` (``n_gallery - 1`` with
        ``exclude_self``).
    similarity : Similarity
        From :func:`get_similarity`.
    exclude_self : bool, default=False
        Queries are the gallery itself, in order: query ``i`` never matches gallery row ``i``
        (a duplicate row elsewhere still does).
    working_memory : float, default=None
        MiB the search's blocks may take; scikit-learn's global setting when None.
    device : str or torch.device, default="cpu"
    dtype : torch.dtype, default=torch.float32
        Matrix-product dtype (see :func:`resolve_precision`); the result is the float32
        top-k in any case.

    Returns
    -------
    scores : ndarray of shape (n_queries, k), float32
        Similarities, descending; ties keep the lower gallery index first. ``-inf`` in a
        slot that could not be filled.
    indices : ndarray of shape (n_queries, k), int64
        Gallery row of each score; ``-1`` in a slot that could not be filled.

    Notes
    -----
    A resident :class:`SearchGallery` of 65,536 rows or more, searched with float32 or bfloat16
    products of ``"dot"`` or ``"cosine"``, keeps a tail bound (a quarter of its memory more; with
    bfloat16 products, an eighth more again) that lets the search skip most of a clustered
    gallery; the result is the same, bit for bit.

    A pair whose float32 score is NaN or ``-inf`` is never returned: a query row holding a
    NaN matches nothing and gets ``k`` slots of ``-1`` / ``-inf``, and gallery rows holding a
    NaN never appear (so a query may fill fewer than ``k`` slots). Every index is a gallery
    row or ``-1``, never a placeholder past the gallery.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.search import get_similarity, topk_search
    >>> gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> scores, indices = topk_search([[1.0, 0.1]], gallery, 2, get_similarity("dot"))
    >>> indices
    array([[2, 0]])
    >>> topk_search([[np.nan, 0.0]], np.eye(2), 1, get_similarity("dot"))
    (array([[-inf]], dtype=float32), array([[-1]]))
    """
    resident = isinstance(gallery, SearchGallery)  # kept between searches: the bound's build pays
    gallery, n_queries, query_block, gallery_block = prepare_search(
        queries, gallery, similarity, dtype, device, working_memory, products=_CHUNK
    )
    device = gallery.device
    n_gallery = gallery.n_gallery
    limit = n_gallery - 1 if exclude_self else n_gallery
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} neighbours requested, but only {limit} gallery items can be returned.")
    budget = (working_memory if working_memory is not None else default_working_memory(device)) * 2**20
    out_scores = torch.empty((n_queries, k), dtype=torch.float32, device=device)
    out_indices = torch.empty((n_queries, k), dtype=torch.int64, device=device)
    # Read once: another thread's search may decline it meanwhile.
    bound, probe = gallery.tail_bound if resident and _bound_serves(gallery, k) else None, _PROBE_QUERIES
    for q0, qb in query_blocks(queries, gallery, query_block):
        # A query holding a NaN matches nothing: the full scan's rules answer for its block.
        finite = bound is not None and bool(torch.isfinite(qb).all())
        found = _bounded_topk(gallery, bound, qb, q0, k, exclude_self, budget, probe) if finite else None
        if finite and found is None:  # the bound prunes too little on these data to pay
            gallery.decline_tail_bound()
            bound = None
        probe = None  # the first block told
        s, i = found or _query_block_topk(gallery, qb, q0, k, gallery_block, exclude_self, budget)
        out_scores[q0 : q0 + len(qb)], out_indices[q0 : q0 + len(qb)] = s, i
    unfilled = out_indices >= n_gallery  # placeholders no pair replaced
    out_scores[unfilled], out_indices[unfilled] = -torch.inf, -1
    return out_scores.cpu().numpy(), out_indices.cpu().numpy()


def _bound_serves(gallery: SearchGallery, k: int) -> bool:
    """Whether to try the scan through the tail bound: a gallery large enough for its steps to
    pay, and one that has a bound (see :attr:`SearchGallery.tail_bound`)."""
    return (
        gallery.n_gallery >= _MIN_BOUND_GALLERY
        and BOUND_CHUNK * (k + 1) <= _MAX_BOUND_SHARE * gallery.n_gallery  # the seeds' share
        and gallery.tail_bound is not None
    )


def _bounded_topk(gallery: SearchGallery, bound, qb, q0, k, exclude_self, budget, probe=None):
    """The top-k of a query block through the gallery's tail ``bound`` (see ``._bounds``), or
    None where it prunes too little to pay (``probe`` queries, if given, tell first)."""
    rows = max(1, min(len(qb), int(budget // (4 * bound.block + 8 * len(bound.order)))))  # scores, maxima
    buffer = torch.empty(rows * bound.block, dtype=bound.dtype, device=qb.device)
    starts = [0, *range(min(probe or rows, rows), len(qb), rows)]
    found = []
    for s0, s1 in zip(starts, [*starts[1:], len(qb)]):
        part = _bounded_part(gallery, bound, qb[s0:s1], q0 + s0, k, exclude_self, budget, buffer)
        if part is None:
            return None
        found.append(part)
    return tuple(torch.cat(column) for column in zip(*found))


def _bounded_part(gallery: SearchGallery, bound, qb, q0, k, exclude_self, budget, buffer):
    n, device = len(qb), qb.device
    heads = bound.rows(qb)
    maxima = bound.maxima(heads, buffer)
    # The k + 1 pairs with the largest bounds in the k + 1 chunks with the largest maxima are
    # k real pairs besides the query's own row: the k-th of their scores, lowered by the
    # error bound (they are scored here as a product, not one by one), is reached by the
    # query's k-th neighbour.
    seeds = torch.topk(maxima, k + 1, dim=1).indices.view(-1)
    seed_rows = torch.arange(n, device=device).repeat_interleave(k + 1)
    cols, bounds = _chunk_bounds(bound, heads, seed_rows, seeds, q0, exclude_self)
    pick = torch.topk(bounds.view(n, -1), k + 1, dim=1).indices
    cols = cols.view(n, -1).gather(1, pick)
    scores = torch.bmm(gallery.exact[cols], qb[:, :, None]).squeeze(2)  # (n, k + 1)
    scores[cols < 0] = -torch.inf  # past the gallery, or the query's own row
    fp32, margin = torch.float32, gallery.margin(qb, torch.float32)
    kth = gallery.floor(torch.topk(scores, k, dim=1).values[:, -1], margin, fp32)
    # A pair scoring at least kth has a chunk maximum, and a float32 bound, of at least these.
    rows, chunks = candidates(maxima, gallery.lower(kth, bound.margin(heads), bound.dtype))
    if len(rows) > _MAX_BOUND_SHARE * maxima.numel():
        return None
    threshold = gallery.lower(kth, margin, fp32)
    cols, bounds = _chunk_bounds(bound, heads, rows, chunks, q0, exclude_self)
    hit = torch.nonzero((bounds >= threshold[rows][:, None]).view(-1)).squeeze(1)
    rows, cols = rows.index_select(0, hit // BOUND_CHUNK), cols.view(-1).index_select(0, hit)
    values = _exact_values(gallery, qb, rows, cols, None, gallery.exact, 0, budget)
    keep = values >= kth[rows]
    return merge_topk(*_placeholders(n, k, gallery.n_gallery, device), rows[keep], cols[keep], values[keep])


def _chunk_bounds(bound, heads, rows, chunks, q0, exclude_self):
    """``(cols, bounds)``, each ``(len(chunks), CHUNK)``: the gallery rows of the chunks
    ``chunks`` of the bound's scan, and the bounds of query ``rows[i]`` against those of chunk
    ``i``, recomputed pair by pair; ``cols`` is -1 and the bound ``-inf`` past the gallery and
    at a query's own row."""
    cols = bound.order.index_select(0, chunks)
    if exclude_self:
        cols = torch.where(cols == rows[:, None] + q0, -1, cols)
    bounds = torch.bmm(bound.chunk_rows(chunks), heads.index_select(0, rows)[:, :, None]).squeeze(2)
    return cols, bounds.masked_fill_(cols < 0, -torch.inf)


def _query_block_topk(gallery: SearchGallery, qb, q0, k, gallery_block, exclude_self, budget):
    n, device = len(qb), qb.device
    margin = gallery.margin(qb)
    qb_low = qb.to(gallery.dtype)
    top_maxima = torch.full((n, k), -torch.inf, device=device)  # k largest chunk maxima so far
    best = _placeholders(n, k, gallery.n_gallery, device)
    pending, n_pending = [], 0
    max_pending = max(4 * n * k, int(budget // (12 * gallery.n_features)))
    buffer = score_buffer(gallery, n, gallery_block)
    threshold = torch.full((n,), -torch.inf, device=device)
    for g0, exact, low in gallery.blocks(gallery_block):
        strided, rest = _score_chunks(gallery, qb_low, q0, g0, low, buffer, exclude_self)
        maxima = _chunk_maxima(strided, rest)
        top_maxima, threshold, rows, chunks = _select_chunks(gallery, maxima, top_maxima, threshold, margin)
        candidates = _block_candidates(strided, rest, rows, chunks, threshold, g0)
        if gallery.streamed:
            # The block's rows are at hand only now: its candidates reaching the running
            # threshold (more than the final one keeps) are scored exactly with it.
            candidates = _reaching(*candidates, threshold=threshold, q0=q0, exclude_self=exclude_self)
            candidates = (*candidates, _exact_values(gallery, qb, *candidates, exact, g0, budget))
        pending.append(candidates)
        n_pending += len(candidates[0])
        if n_pending > max_pending:  # many near-ties: settle them to bound the memory
            best = _settle(gallery, qb, q0, best, pending, threshold, exclude_self, budget)
            pending, n_pending = [], 0
    return _settle(gallery, qb, q0, best, pending, threshold, exclude_self, budget)


def _placeholders(n, k, n_gallery, device):
    """``(scores, indices)`` of k placeholders per row (-inf, an index past the gallery) that
    any real pair beats."""
    return (torch.full((n, k), -torch.inf, device=device),
            torch.full((n, k), n_gallery, dtype=torch.int64, device=device))


def _select_chunks(gallery: SearchGallery, maxima, top, threshold, margin):
    """Merge a block's chunk maxima into the ``top`` maxima so far (k per query, descending);
    returns the new top, the new threshold, and ``(rows, chunks)`` of the block's chunks
    whose maximum reaches it (a NaN maximum, from a NaN gallery row, is looked into: the
    chunk's other rows may be neighbours)."""
    n, k = top.shape
    # NaN maxima are rare: one row reduction tells whether this block needs the copies.
    has_nan = bool(torch.isnan(maxima.amax(dim=1)).any())
    scan = maxima.nan_to_num(nan=torch.inf) if has_nan else maxima
    first = bool(torch.isneginf(threshold).all())  # nothing to compare with yet
    if first:  # the block's own top-k enters
        ranked = maxima.nan_to_num(nan=-torch.inf) if has_nan else maxima
        entering = torch.topk(ranked, min(k, maxima.shape[1]), dim=1).values
    else:
        # The threshold only rises, so the chunks reaching the last one hold every chunk
        # that can enter the top or reach the new threshold: only they are looked at again.
        rows, chunks = candidates(scan, threshold)
        values = maxima[rows, chunks]
        entering = _by_row(rows, values.nan_to_num(nan=-torch.inf), n)
    top = torch.topk(torch.cat([top, entering], dim=1), k, dim=1).values
    threshold = _threshold(gallery, top[:, -1], margin)
    if first:
        return top, threshold, *candidates(scan, threshold)
    keep = torch.nonzero(~(values < threshold[rows])).squeeze(1)
    return top, threshold, rows[keep], chunks[keep]


def _by_row(rows, values, n):
    """``values`` laid out one row per query (row-major ``rows``), padded with -inf: merged
    with a top-k, this ran ~4x faster on a CPU than sorting the list."""
    counts = torch.bincount(rows, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    out = torch.full((n, int(counts.max())), -torch.inf, device=values.device)
    out[rows, torch.arange(len(rows), device=values.device) - starts[rows]] = values
    return out


def _score_chunks(gallery: SearchGallery, qb_low, q0, g0, low, buffer, exclude_self):
    """Scores of the gallery block ``low`` (rows from ``g0``), laid out by chunk:
    ``strided[i, :, j]`` is column ``j + i * m`` of the block (``m = width // _CHUNK``), so
    chunk ``j`` is ``strided[:, :, j]``; ``rest`` holds the ``width % _CHUNK`` last columns,
    the gallery's partial chunk (or None).

    Each ``strided[i]`` is its own product of ``m`` gallery rows, in ``buffer``: products
    of ~1M scores ran ~10% faster than 4M on a CPU (cache), and the chunk maxima of the
    whole block are one elementwise maximum over the ``_CHUNK`` products, so the selection
    runs once per ``_CHUNK`` products.
    """
    n, m = len(qb_low), len(low) // _CHUNK
    strided = buffer[: _CHUNK * n * m].view(_CHUNK, n, m) if buffer is not None else None
    parts = [
        score_block(gallery, qb_low, g0 + i * m, low[i * m : (i + 1) * m], None if strided is None else strided[i])
        for i in range(_CHUNK)
    ]
    strided = torch.stack(parts) if strided is None else strided  # a callable's own tensors
    tail = _CHUNK * m
    rest = score_block(gallery, qb_low, g0 + tail, low[tail:]) if len(low) > tail else None
    if exclude_self:
        for i in range(_CHUNK):
            mask_self(strided[i], q0, g0 + i * m)
        if rest is not None:
            mask_self(rest, q0, g0 + tail)
    return strided, rest


def _chunk_maxima(strided, rest):
    """Maxima of the block's chunks (see :func:`_score_chunks`), float32: one elementwise
    maximum over the products, ~10x faster than a reduction over 16 adjacent columns."""
    maxima = strided.amax(dim=0)
    if rest is not None:  # the gallery's last, partial chunk: adjacent columns
        maxima = torch.cat([maxima, rest.amax(dim=1, keepdim=True)], dim=1)
    return maxima.float()


def _chunk_columns(chunks, width):
    """``(len(chunks), _CHUNK)`` columns of a block of ``width`` columns in each chunk
    (clamped), and which exist: chunk ``j`` of the ``m = width // _CHUNK`` whole ones holds
    ``j + i * m``, and a partial one after them ``m * _CHUNK + i``."""
    m = width // _CHUNK
    i = torch.arange(_CHUNK, device=chunks.device)
    cols = torch.where((chunks < m)[:, None], chunks[:, None] + i * m, m * _CHUNK + i)
    return cols.clamp_max(width - 1), cols < width


def _threshold(gallery: SearchGallery, kth_maximum, margin):
    """The proxy a pair needs to possibly be a neighbour, given the k-th chunk maximum.

    The k-th largest chunk maximum ``t`` is reached by k distinct pairs, whose exact
    proxies are at least ``floor(t)``; so is the exact k-th, and a neighbour's computed
    proxy is at least ``lower(floor(t))``. NaN for a query holding a NaN (it matches nothing).
    """
    return gallery.lower(gallery.floor(kth_maximum, margin), margin)


def _block_candidates(strided, rest, rows, chunks, threshold, g0):
    """``(rows, gallery rows, proxies)`` of the pairs of a block (from gallery row ``g0``, laid
    out by :func:`_score_chunks`) reaching ``threshold``, looking only into ``(rows, chunks)``."""
    m = strided.shape[2]
    width = _CHUNK * m + (0 if rest is None else rest.shape[1])
    cols, exists = _chunk_columns(chunks, width)
    values = strided.view(_CHUNK, -1).index_select(1, rows * m + chunks.clamp_max(m - 1)).T if m else None
    if rest is not None:
        partial = rest[rows[:, None], (cols - _CHUNK * m).clamp(0, rest.shape[1] - 1)]
        values = partial if values is None else torch.where((chunks < m)[:, None], values, partial)
    hit = torch.nonzero((exists & (values >= threshold.to(values.dtype)[rows][:, None])).view(-1)).squeeze(1)
    pair_rows = rows.index_select(0, hit // _CHUNK)  # hit indexes the (chunks, _CHUNK) columns
    return pair_rows, cols.view(-1).index_select(0, hit) + g0, values.reshape(-1).index_select(0, hit).float()


def _reaching(rows, cols, proxies, *values, threshold, q0, exclude_self):
    """The candidates whose proxy still reaches ``threshold``: never ``-inf``, never a
    query's own row (``exclude_self``); ``values`` (their exact scores) filtered alike."""
    keep = (proxies >= threshold[rows]) & (proxies > -torch.inf)
    if exclude_self:
        keep &= rows + q0 != cols
    return tuple(part[keep] for part in (rows, cols, proxies, *values))


def _exact_values(gallery: SearchGallery, qb, rows, cols, proxies, exact, g0, budget):
    """Float32 scores of candidate pairs; ``exact`` holds the prepared gallery rows from ``g0``
    (the resident copy, or a streamed block), gathered in batches within ``budget``
    (``proxies``, a callable's block scores, are its exact ones)."""
    if not gallery.similarity.is_matmul:  # a callable's block scores are its exact scores
        return proxies
    per_batch = max(1, int(budget // (12 * gallery.n_features)))  # gathered rows, product
    return torch.cat([
        gallery.similarity.exact(qb.index_select(0, rows[b0 : b0 + per_batch]), exact.index_select(0, cols[b0 : b0 + per_batch] - g0))
        for b0 in range(0, len(rows), per_batch)
    ] or [torch.empty(0, device=rows.device)])


def _settle(gallery: SearchGallery, qb, q0, best, pending, threshold, exclude_self, budget):
    """Merge the pending candidates still reaching ``threshold`` into ``best``, scored exactly
    (a streamed gallery's were scored with their block)."""
    if not pending:
        return best
    parts = [torch.cat(part) for part in zip(*pending)]
    rows, cols, proxies, *values = _reaching(*parts, threshold=threshold, q0=q0, exclude_self=exclude_self)
    values = values[0] if values else _exact_values(gallery, qb, rows, cols, proxies, gallery.exact, 0, budget)
    keep = values > -torch.inf  # NaN and -inf never match
    return merge_topk(*best, rows[keep], cols[keep], values[keep])


def merge_topk(best_scores, best_indices, rows, cols, values):
    """Merge candidate pairs ``(rows, cols, values)`` into each row's top-k.

    Order: score descending, then gallery index ascending (three stable sorts of the few
    entries involved), and the first k of each row are kept.
    """
    n, k = best_scores.shape
    device = best_scores.device
    all_rows = torch.cat([torch.arange(n, device=device).repeat_interleave(k), rows])
    all_scores = torch.cat([best_scores.reshape(-1), values])
    all_indices = torch.cat([best_indices.reshape(-1), cols])
    order = torch.argsort(all_indices, stable=True)
    order = order[torch.argsort(all_scores[order], descending=True, stable=True)]
    order = order[torch.argsort(all_rows[order], stable=True)]
    counts = torch.bincount(all_rows, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=device) - starts[all_rows[order]]
    chosen = order[rank < k]
    return all_scores[chosen].view(n, k), all_indices[chosen].view(n, k)


def best_first(values: np.ndarray, found: np.ndarray, k: int):
    """Each row's ``k`` best of ``(values, found)`` pairs (numpy), the order of :func:`merge_topk`:
    score descending, then index ascending; ``-1`` / ``-inf`` after (a ``-inf`` pair is none)."""
    found = np.where(values > -np.inf, found, -1)
    key = np.where(found >= 0, found, np.iinfo(np.int64).max)
    order = np.lexsort((key, -values), axis=1)[:, :k]
    scores = np.full((len(found), k), -np.inf, np.float32)
    indices = np.full((len(found), k), -1, np.int64)
    width = order.shape[1]
    scores[:, :width] = np.take_along_axis(values, order, axis=1)
    indices[:, :width] = np.take_along_axis(found, order, axis=1)
    return scores, indices
