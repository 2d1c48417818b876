"""Blocked exact radius search: every gallery row within a distance of each query."""

from __future__ import annotations

import numpy as np
import torch

from ._gallery import (
    candidates,
    exact_scores,
    mask_lower,
    mask_self,
    prepare_search,
    query_blocks,
    score_block,
    score_buffer,
)
from ._similarity import Similarity


def radius_search(
    queries,
    gallery,
    radius: float,
    similarity: Similarity,
    *,
    exclude_self: bool = False,
    sort_results: bool = False,
    working_memory: float | None = None,
    device="cpu",
    dtype=torch.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Gallery rows whose distance to each query is at most ``radius``.

    Distances are those of ``kneighbors`` (``similarity.to_distance`` of the float32 score),
    compared as ``distance <= radius``; reduced-precision products only select candidates.

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
    gallery : array-like, tensor or SearchGallery of shape (n_gallery, n_features)
    radius : float
    similarity : Similarity
    exclude_self : bool, default=False
        Queries are the gallery itself: query ``i`` never matches gallery row ``i``. The
        built-in similarities are symmetric, so then only the pairs ``i < j`` are scored
        (half the work) and each is given to both rows.
    sort_results : bool, default=False
        Sort each query's neighbours by distance (ties by index); otherwise by index.
    working_memory : float, default=None
    device : str or torch.device, default="cpu"
    dtype : torch.dtype, default=torch.float32

    Returns
    -------
    distances : ndarray of shape (n_queries,), dtype=object
        One float32 array of distances per query.
    indices : ndarray of shape (n_queries,), dtype=object
        One int64 array of gallery rows per query.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.search import get_similarity, radius_search
    >>> distances, indices = radius_search([[0.0]], [[0.0], [1.0], [3.0]], 1.5, get_similarity("euclidean"))
    >>> indices[0]
    array([0, 1])
    """
    gallery, n_queries, query_block, gallery_block = prepare_search(
        queries, gallery, similarity, dtype, device, working_memory
    )
    # The smallest score within the radius, nudged down one float32 step: the exact
    # distance test below decides; this only has to keep every pair that could pass.
    min_score = float(np.nextafter(np.float32(similarity.from_distance(np.float32(radius))), -np.inf))
    rows_all, cols_all, scores_all = [], [], []
    # One score buffer for the whole search, and a query block's pairs joined: a buffer per
    # query block, or three small tensors kept per score block, let glibc (whose mmap
    # threshold rises to a freed block's size) serve the next block from a heap the kept
    # pairs had split: a million images against themselves grew to 22 GB (OOM-killed).
    buffer = score_buffer(gallery, min(query_block, n_queries), gallery_block)
    # The built-in similarities score (i, j) and (j, i) alike, bit for bit (an elementwise
    # product or difference, then the same reduction): a self-search scores i < j only.
    upper = exclude_self and similarity.is_matmul
    for q0, qb in query_blocks(queries, gallery, query_block):
        exact_threshold = similarity.proxy_threshold(
            torch.full((len(qb),), min_score, device=qb.device), (qb * qb).sum(dim=1)
        )
        threshold = gallery.lower(exact_threshold, gallery.margin(qb))
        qb_low = qb.to(gallery.dtype)
        rows_block, cols_block, scores_block = [], [], []
        for g0, exact, low in gallery.blocks(gallery_block, start=q0 + 1 if upper else 0):
            out = None if buffer is None else buffer[: len(qb) * len(low)].view(len(qb), len(low))
            scores = score_block(gallery, qb_low, g0, low, out)
            if upper:
                mask_lower(scores, q0, g0)
            elif exclude_self:
                mask_self(scores, q0, g0)
            rows, cols = candidates(scores, threshold)
            cols += g0
            if exclude_self:  # a -inf threshold (an infinite radius) keeps even masked pairs
                keep = cols > rows + q0 if upper else cols != rows + q0
                rows, cols = rows[keep], cols[keep]
            values = exact_scores(gallery, qb, scores, rows, cols, g0, exact)
            rows_block.append(rows), cols_block.append(cols), scores_block.append(values)
        if not rows_block:  # a self-search's last rows: no gallery row after them
            continue
        rows_all.append(torch.cat(rows_block) + q0)
        cols_all.append(torch.cat(cols_block)), scores_all.append(torch.cat(scores_block))
    if upper:  # each pair was found for its lower row: the higher row has it too
        rows_all, cols_all, scores_all = rows_all + cols_all, cols_all + rows_all, scores_all * 2
    return _per_query(similarity, radius, n_queries, rows_all, cols_all, scores_all, sort_results)


def _per_query(similarity, radius, n_queries, rows, cols, scores, sort_results):
    rows = torch.cat(rows).cpu().numpy() if rows else np.empty(0, np.int64)
    cols = torch.cat(cols).cpu().numpy() if cols else np.empty(0, np.int64)
    scores = torch.cat(scores).cpu().numpy() if scores else np.empty(0, np.float32)
    distances = np.asarray(similarity.to_distance(scores), dtype=np.float32)
    inside = distances <= radius
    rows, cols, distances = rows[inside], cols[inside], distances[inside]
    keys = (cols, distances, rows) if sort_results else (cols, rows)
    order = np.lexsort(keys)
    rows, cols, distances = rows[order], cols[order], distances[order]
    splits = np.searchsorted(rows, np.arange(1, n_queries))
    out_dist = np.empty(n_queries, dtype=object)
    out_ind = np.empty(n_queries, dtype=object)
    for i, (d, c) in enumerate(zip(np.split(distances, splits), np.split(cols, splits))):
        out_dist[i], out_ind[i] = d, c
    return out_dist, out_ind
