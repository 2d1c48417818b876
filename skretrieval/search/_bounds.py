"""Exact top-k through an upper bound that costs a quarter of the product.

Split every prepared vector into its first ``h = n_features / 4`` coordinates, the head, and
the rest, the tail. By Cauchy-Schwarz ``q.g <= q_h.g_h + ||q_t|| ||g_t||``,
which is one matrix product of ``h + 1`` columns, ``[q_h, ||q_t||] . [g_h, ||g_t||]``. Where
a query's neighbours stand out from the rest of the gallery by more than the tail can hide
(clustered embeddings: most of the gallery is far from any one query), the bound of almost
every pair falls below the query's k-th score, so only the few chunks of gallery rows whose
bound reaches it are scored exactly:

1. the bounds of a query block against the whole gallery, kept as chunk maxima (the top-k
   engine's scan: products, one elementwise maximum, no per-pair work);
2. in the ``k + 1`` chunks with the largest maxima, the ``k + 1`` pairs with the largest bounds
   are scored: besides the query's own row they are k real pairs, so their k-th score,
   lowered by the error bound, ``T``, bounds the query's k-th score from below;
3. the pairs of every chunk whose maximum reaches ``T`` (within the products' error bound)
   are bounded one by one, and those still reaching it scored exactly; the best k are the
   answer.

A pair's score is then computed as :func:`~skretrieval.search.topk_search` computes it
(:meth:`Similarity.exact`), and every pair reaching ``T`` is looked at, so the result equals
the full scan's, ties included. Where the bound prunes little (uniform random vectors, the
digits features of ``benchmarks/bench_search.py``, 128-d galleries), step 3 would score much
of the gallery pair by pair: a probe of the first queries finds that out, and the search goes
on with the full scan.
"""

from __future__ import annotations

import torch

from ._precision import finite_max, max_rounding, product_margin, unit_roundoff

MIN_FEATURES = 64  # below this a quarter of the product saves too little to pay the steps
DTYPES = (torch.float32, torch.bfloat16)  # fp16's narrow range could overflow a bound row
CHUNK = 16  # gallery rows per chunk maximum: a candidate chunk's rows are bounded one by one
BLOCK = CHUNK * 1024  # gallery rows per block of the scan: 16 products of 1024 rows


class TailBound:
    """The gallery's bound rows ``[g_h, ||g_t||]``, float32, resident beside it, in the order
    the scan reads them.

    The scan takes blocks of :data:`BLOCK` rows as :data:`CHUNK` products, product ``i`` of a
    block holding its rows ``i * m`` to ``(i + 1) * m`` (``m = BLOCK / CHUNK``), and keeps the
    maximum over the products of each column ``j``: chunk ``j`` is the block's rows
    ``j + i * m``. Stored chunk by chunk, a chunk's rows are adjacent (read at once when its
    pairs are bounded one by one), and product ``i`` is every ``CHUNK``-th stored row from
    ``i``, which a matrix product reads in place. ``n_gallery * (n_features / 4 + 1)``
    floats: a quarter of the gallery's memory more (and half that again for the bfloat16 copy
    of bfloat16 products).

    Parameters
    ----------
    exact : tensor of shape (n_gallery, n_features)
        The prepared float32 gallery (:attr:`SearchGallery.exact`).
    dtype : torch.dtype, default=torch.float32
        Dtype of the scan's products (float32 or bfloat16): a bfloat16 scan keeps a copy of
        the bound rows in it, and its error bound (:meth:`margin`) counts their rounding.

    Attributes
    ----------
    head : int
        Coordinates in the head, ``n_features // 4``.
    block : int
        Rows of a block of the scan, :data:`BLOCK` when built.
    columns : tensor of shape (n_gallery, head + 1)
        Bound rows, stored chunk by chunk.
    low : tensor of shape (n_gallery, head + 1)
        The same in the products' ``dtype`` (``columns`` itself for float32).
    order : tensor of shape (n_chunks, CHUNK)
        The gallery row of each stored row, chunk by chunk; -1 past the gallery.
    finite : bool
        Whether every row is finite (else the bound is not used).
    """

    def __init__(self, exact: torch.Tensor, dtype: torch.dtype = torch.float32):
        n, d = exact.shape
        self.head, self.block, self.dtype, self.n_features = d // 4, BLOCK, dtype, d
        # A float32 norm is within ~(d/2 + 1) roundings of the exact one: inflating it by
        # (d + 4) of them keeps it an upper bound.
        self.inflate = 1.0 + (d + 4) * unit_roundoff(torch.float32)
        pad = -n % CHUNK
        order = torch.arange(n, device=exact.device)
        padded = torch.zeros((n + pad, self.head + 1), device=exact.device)  # whole chunks
        self.columns = padded[:n]
        for g0 in range(0, n, self.block):  # the order only moves rows within a block
            block = exact[g0 : g0 + self.block]
            m = len(block) // CHUNK  # a last, partial chunk stays as it is
            j, i = torch.meshgrid(torch.arange(m, device=exact.device), torch.arange(CHUNK, device=exact.device), indexing="ij")
            order[g0 : g0 + CHUNK * m] = (g0 + j + i * m).reshape(-1)
            self.columns[g0 : g0 + len(block)] = self.rows(block).index_select(0, order[g0 : g0 + len(block)] - g0)
        self.finite = bool(torch.isfinite(self.columns).all())  # a NaN or inf row makes its norm so
        self.low = self.columns if dtype == torch.float32 else self.columns.to(dtype)
        self.max_norm = finite_max(torch.linalg.vector_norm(self.columns, dim=1))
        self.max_rounding = max_rounding(self.columns, self.low)
        self.order = torch.cat([order, order.new_full((pad,), -1)]).view(-1, CHUNK)
        self._chunks = padded.view(-1, CHUNK, self.head + 1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[x_h, ||x_t||]`` of prepared rows: ``rows(q) @ rows(g).T`` bounds ``q @ g.T``."""
        tail = torch.linalg.vector_norm(x[:, self.head :], dim=1, keepdim=True)
        return torch.cat([x[:, : self.head], tail * self.inflate], dim=1)

    def chunk_rows(self, chunks: torch.Tensor) -> torch.Tensor:
        """The stored bound rows of ``chunks``, ``(len(chunks), CHUNK, head + 1)`` (zeros past
        the gallery)."""
        return self._chunks.index_select(0, chunks)

    def margin(self, heads: torch.Tensor) -> torch.Tensor:
        """Per query, how far a computed bound of :meth:`maxima` may fall below the bound of
        the exact products, plus the float32 error of the exact scores it is compared with."""
        return product_margin(heads, self.max_norm, self.max_rounding, self.dtype, self.n_features)

    def maxima(self, heads: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        """Chunk maxima of the bounds of query bound rows ``heads`` against the whole gallery,
        float32 ``(len(heads), n_chunks)``, from products in :attr:`dtype`; ``buffer`` holds
        ``len(heads) * block`` numbers of that dtype."""
        n, found = len(heads), []
        heads = heads.to(self.dtype)
        for g0 in range(0, len(self.low), self.block):
            block = self.low[g0 : g0 + self.block]
            m = len(block) // CHUNK
            by_chunk = block[: CHUNK * m].view(m, CHUNK, block.shape[1])
            products = buffer[: CHUNK * n * m].view(CHUNK, n, m)
            for i in range(CHUNK if m else 0):
                torch.matmul(heads, by_chunk[:, i].T, out=products[i])
            maxima = products.amax(dim=0) if m else heads.new_empty((n, 0))
            if len(block) > CHUNK * m:  # the gallery's last, partial chunk
                maxima = torch.cat([maxima, (heads @ block[CHUNK * m :].T).amax(dim=1, keepdim=True)], dim=1)
            found.append(maxima)
        return torch.cat(found, dim=1).float()
