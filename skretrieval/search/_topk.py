"""Blocked exact top-k search.

The gallery is scored block by block against a block of queries, and each block's winners
are merged into a running top-k, so extra memory stays O(query_block x gallery_block +
n_queries x k) whatever the gallery size. Block sizes follow a memory budget.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn import get_config

from ._similarity import Similarity

_BYTES_PER_SCORE = 4
_MAX_QUERY_BLOCK = 1024


def block_sizes(n_queries: int, n_gallery: int, working_memory: float | None) -> tuple[int, int]:
    """Rows of queries and gallery scored at once so one score block fits the budget.

    ``working_memory`` is in MiB, as scikit-learn's ``working_memory`` (its global config
    value when None).
    """
    budget_mib = get_config()["working_memory"] if working_memory is None else working_memory
    budget = max(1, int(budget_mib * 2**20 // _BYTES_PER_SCORE))
    query_block = max(1, min(n_queries, _MAX_QUERY_BLOCK, budget))
    gallery_block = max(1, min(n_gallery, budget // query_block))
    return query_block, gallery_block


def _merge(best_scores, best_indices, scores, indices, k):
    """Keep the k largest scores per row; equal scores go to the lower gallery index."""
    scores = torch.cat([best_scores, scores], dim=1)
    indices = torch.cat([best_indices, indices], dim=1)
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), indices.gather(1, by_score)


def topk_search(
    queries,
    gallery,
    k: int,
    similarity: Similarity,
    *,
    exclude_self: bool = False,
    working_memory: float | None = None,
    device="cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar gallery rows for every query, best first.

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
    gallery : array-like or tensor of shape (n_gallery, n_features)
    k : int
        Neighbours per query, ``1 <= k <= n_gallery`` (``n_gallery - 1`` with
        ``exclude_self``).
    similarity : Similarity
        From :func:`get_similarity`.
    exclude_self : bool, default=False
        Queries are the gallery itself, in order: query ``i`` never matches gallery row ``i``
        (a duplicate row elsewhere still does).
    working_memory : float, default=None
        MiB one score block may take; scikit-learn's global setting when None.
    device : str or torch.device, default="cpu"

    Returns
    -------
    scores : ndarray of shape (n_queries, k), float32
        Similarities, descending; ties keep the lower gallery index first.
    indices : ndarray of shape (n_queries, k), int64
        Gallery row of each score.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.search import get_similarity, topk_search
    >>> gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> scores, indices = topk_search([[1.0, 0.1]], gallery, 2, get_similarity("dot"))
    >>> indices
    array([[2, 0]])
    """
    device = torch.device(device)
    q = similarity.prepare(torch.as_tensor(np.asarray(queries), dtype=torch.float32).to(device))
    g = similarity.prepare(torch.as_tensor(gallery, dtype=torch.float32).to(device))
    n_queries, n_gallery = q.shape[0], g.shape[0]
    limit = n_gallery - 1 if exclude_self else n_gallery
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} neighbours requested, but only {limit} gallery items can be returned.")
    query_block, gallery_block = block_sizes(n_queries, n_gallery, working_memory)
    out_scores = torch.empty((n_queries, k), dtype=torch.float32, device=device)
    out_indices = torch.empty((n_queries, k), dtype=torch.int64, device=device)
    for q0 in range(0, n_queries, query_block):
        qb = q[q0 : q0 + query_block]
        best_scores = torch.full((qb.shape[0], 0), -torch.inf, device=device)
        best_indices = torch.empty((qb.shape[0], 0), dtype=torch.int64, device=device)
        for g0 in range(0, n_gallery, gallery_block):
            scores = similarity.block(qb, g[g0 : g0 + gallery_block])
            if exclude_self:
                _mask_self(scores, q0, g0)
            top_scores, top_pos = _block_topk(scores, min(k, scores.shape[1]))
            best_scores, best_indices = _merge(best_scores, best_indices, top_scores, top_pos + g0, k)
        if getattr(similarity, "ranks_by_proxy", False):
            best_scores, best_indices = _rescore_exact(similarity, qb, g, best_indices)
        out_scores[q0 : q0 + query_block] = best_scores
        out_indices[q0 : q0 + query_block] = best_indices
    return out_scores.cpu().numpy(), out_indices.cpu().numpy()


def _block_topk(scores: torch.Tensor, k: int):
    """The k best of each row; where ties straddle the k-th place, the lower indices win.

    ``torch.topk`` picks an arbitrary subset of tied values, so only rows whose k-th value has
    more ties than were taken (rare outside synthetic data) fall back to a stable sort.
    """
    values, positions = torch.topk(scores, k, dim=1)
    kth = values[:, -1:]
    straddling = (scores == kth).sum(dim=1) > (values == kth).sum(dim=1)
    if straddling.any():
        rows = straddling.nonzero().squeeze(1)
        sorted_values, sorted_positions = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], positions[rows] = sorted_values[:, :k], sorted_positions[:, :k]
    return values, positions


def _mask_self(scores: torch.Tensor, q0: int, g0: int) -> None:
    """Set the score of query i against gallery row i to -inf, in place."""
    rows = torch.arange(scores.shape[0], device=scores.device) + q0
    cols = rows - g0
    inside = (cols >= 0) & (cols < scores.shape[1])
    scores[rows[inside] - q0, cols[inside]] = -torch.inf


def _rescore_exact(similarity, queries, gallery, indices):
    scores = similarity.exact(queries, gallery[indices])
    return _merge(
        scores[:, :0], indices[:, :0], scores, indices, indices.shape[1]
    )
