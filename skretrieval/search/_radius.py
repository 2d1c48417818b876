"""Blocked exact radius search: every gallery row within a distance of each query."""

from __future__ import annotations

import numpy as np
import torch

from ._gallery import (
    candidates,
    exact_scores,
    mask_self,
    prepare_search,
    score_block,
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
        Queries are the gallery itself: query ``i`` never matches gallery row ``i``.
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
    gallery, q, query_block, gallery_block = prepare_search(
        queries, gallery, similarity, dtype, device, working_memory
    )
    n_queries = len(q)
    # The smallest score within the radius, nudged down one float32 step: the exact
    # distance test below decides; this only has to keep every pair that could pass.
    min_score = float(np.nextafter(np.float32(similarity.from_distance(np.float32(radius))), -np.inf))
    rows_all, cols_all, scores_all = [], [], []
    # One score buffer for every block. A block allocated and freed each time let glibc
    # (whose mmap threshold rises to the block's size after the first free) take the next
    # one from a heap where the pairs kept so far split the freed space: memory grew by up
    # to ~1 MB per block, 22 GB for a million images against themselves.
    buffer = torch.empty(query_block * gallery_block, dtype=gallery.low.dtype, device=gallery.device)
    for q0 in range(0, n_queries, query_block):
        qb = q[q0 : q0 + query_block]
        exact_threshold = similarity.proxy_threshold(
            torch.full((len(qb),), min_score, device=q.device), (qb * qb).sum(dim=1)
        )
        threshold = gallery.lower(exact_threshold, gallery.margin(qb))
        qb_low = qb.to(gallery.dtype)
        # A query block's pairs are joined: three tensors per query block stay alive, not
        # three per score block (720,000 small tensors for a million images).
        rows_block, cols_block, scores_block = [], [], []
        for g0 in range(0, gallery.n_gallery, gallery_block):
            g1 = min(g0 + gallery_block, gallery.n_gallery)
            scores = score_block(gallery, qb_low, g0, g1, buffer)
            if exclude_self:
                mask_self(scores, q0, g0)
            rows, cols = candidates(scores, threshold)
            cols += g0
            if exclude_self:
                keep = rows + q0 != cols
                rows, cols = rows[keep], cols[keep]
            values = exact_scores(gallery, qb, scores, rows, cols, g0)
            rows_block.append(rows), cols_block.append(cols), scores_block.append(values)
        rows_all.append(torch.cat(rows_block) + q0)
        cols_all.append(torch.cat(cols_block)), scores_all.append(torch.cat(scores_block))
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
