"""Blocked exact top-k search.

The gallery is scored block by block against a block of queries; a running top-k per query
gives a threshold (its k-th score), and only the pairs of a block whose proxy score may
beat it are looked at (see :func:`~._gallery.candidates`), re-scored in float32 and merged.
Extra memory stays O(query_block x gallery_block + n_queries x k) whatever the gallery
size, and block sizes follow a memory budget.

Determinism: returned scores are computed pair by pair in float32, never from a block's
matrix product, so they do not depend on block sizes, thread count or precision mode; ties
go to the lower gallery index. Two gallery rows whose float32 scores differ only by
rounding may still swap places between machines or torch versions.
"""

from __future__ import annotations

import numpy as np
import torch

from ._gallery import (
    SearchGallery,
    candidates,
    exact_scores,
    mask_self,
    prepare_search,
    score_block,
)
from ._similarity import Similarity


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
        MiB one score block may take; scikit-learn's global setting when None.
    device : str or torch.device, default="cpu"
    dtype : torch.dtype, default=torch.float32
        Matrix-product dtype (see :func:`resolve_precision`); the result is the float32
        top-k in any case.

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
    gallery, q, query_block, gallery_block = prepare_search(
        queries, gallery, similarity, dtype, device, working_memory
    )
    device = gallery.device
    n_queries, n_gallery = q.shape[0], gallery.n_gallery
    limit = n_gallery - 1 if exclude_self else n_gallery
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} neighbours requested, but only {limit} gallery items can be returned.")
    out_scores = torch.empty((n_queries, k), dtype=torch.float32, device=device)
    out_indices = torch.empty((n_queries, k), dtype=torch.int64, device=device)
    for q0 in range(0, n_queries, query_block):
        qb = q[q0 : q0 + query_block]
        s, i = _query_block_topk(gallery, qb, q0, k, gallery_block, exclude_self)
        out_scores[q0 : q0 + len(qb)], out_indices[q0 : q0 + len(qb)] = s, i
    return out_scores.cpu().numpy(), out_indices.cpu().numpy()


def _query_block_topk(gallery: SearchGallery, qb, q0, k, gallery_block, exclude_self):
    n = len(qb)
    device, similarity = gallery.device, gallery.similarity
    # k placeholders per row (-inf, an index past the gallery) that any real pair beats.
    best_scores = torch.full((n, k), -torch.inf, device=device)
    best_indices = torch.full((n, k), gallery.n_gallery, dtype=torch.int64, device=device)
    margin = gallery.margin(qb)
    q_sqnorm = (qb * qb).sum(dim=1)
    qb_low = qb.to(gallery.dtype)
    for g0 in range(0, gallery.n_gallery, gallery_block):
        g1 = min(g0 + gallery_block, gallery.n_gallery)
        scores = score_block(gallery, qb_low, g0, g1)
        if exclude_self:
            mask_self(scores, q0, g0)
        if g0 == 0:
            best_scores = _first_threshold(gallery, qb, scores, k, best_scores)
        kth = similarity.proxy_threshold(best_scores[:, -1], q_sqnorm)
        rows, cols = candidates(scores, gallery.lower(kth, margin))
        cols += g0
        if exclude_self:
            keep = rows + q0 != cols
            rows, cols = rows[keep], cols[keep]
        if len(rows):
            values = exact_scores(gallery, qb, scores, rows, cols, g0)
            # Most reduced-precision candidates fall short once scored exactly.
            beats = values >= best_scores[rows, -1]
            rows, cols, values = rows[beats], cols[beats], values[beats]
            best_scores, best_indices = merge_topk(best_scores, best_indices, rows, cols, values)
    return best_scores, best_indices


def _first_threshold(gallery, qb, scores, k, placeholders):
    """Placeholders whose last score is a first threshold: the exact k-th score of the
    block's k best proxies (a lower bound of the block's exact k-th score).

    Re-scoring k pairs per query costs little and spares the first block a threshold
    lowered by two error bounds.
    """
    if scores.shape[1] < k:
        return placeholders
    proxies, cols = torch.topk(scores, k, dim=1, sorted=False)
    rows = torch.arange(len(qb), device=qb.device)[:, None].expand_as(cols)
    values = exact_scores(gallery, qb, scores, rows.reshape(-1), cols.reshape(-1), 0).view(len(qb), k)
    values[proxies == -torch.inf] = -torch.inf  # pairs masked out (exclude_self)
    out = placeholders.clone()
    out[:, -1] = values.amin(dim=1)
    return out


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
