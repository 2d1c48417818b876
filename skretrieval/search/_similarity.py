"""Similarity functions: how a block of scores is computed and what distance it maps to.

Every similarity is "larger = more similar". ``kneighbors`` reports distances, so each
similarity also knows its distance: cosine 1 - s, euclidean -s (= ||a - b||), dot and user
callables -s.

The search engine ranks blocks by a *proxy* score, a matrix product that is cheap (and may
run in reduced precision), and keeps the pairs whose proxy could reach the running
threshold; those candidates are re-scored by :meth:`Similarity.exact` in float32, pair by
pair, so the returned scores never depend on block sizes or the matrix-product precision.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

SIMILARITY_NAMES = ("cosine", "cosine_similarity", "dot", "euclidean")


class Similarity:
    """How a ``similarity_fn`` scores: the base class is the dot product, distance ``-s``.

    The blocked search asks a similarity for three things: ``prepare`` (once per vector, e.g.
    L2-normalising for cosine), ``block`` (a proxy score matrix that ranks a query's row as
    the similarity does, computed as a matrix product when ``is_matmul``) and ``exact``
    (float32 scores of the surviving pairs, the values returned). ``to_distance`` and
    ``from_distance`` convert to the distances ``kneighbors`` reports. Get one with
    :func:`get_similarity`.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.search import get_similarity
    >>> cosine = get_similarity("cosine")
    >>> q, g = cosine.prepare(torch.tensor([[3.0, 4.0]])), cosine.prepare(torch.tensor([[1.0, 0.0]]))
    >>> cosine.exact(q, g)
    tensor([0.6000])
    >>> float(cosine.to_distance(0.6))
    0.4
    """

    name = "dot"
    #: The proxy is a matrix product whose error can be bounded (not true of callables).
    is_matmul = True
    #: d proxy / d (q.g): how much a matrix-product error moves the proxy.
    proxy_scale = 1.0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Transform vectors once before any block is scored (e.g. L2-normalise)."""
        return x

    def prepare_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`prepare` in place where it can (the same values): a streamed gallery's blocks."""
        return self.prepare(x)

    def block(self, queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm=None, out=None) -> torch.Tensor:
        """Proxy scores of prepared queries against gallery rows (any float dtype).

        Batched inputs ``(b, n, d)`` and ``(b, m, d)`` give ``(b, n, m)``. ``out``, a
        contiguous ``(n, m)`` tensor of the product's dtype, receives 2-D scores.
        """
        return torch.matmul(queries, gallery.mT, out=out)

    def exact(self, queries: torch.Tensor, gallery_rows: torch.Tensor) -> torch.Tensor:
        """Float32 scores of pairs: ``queries[i]`` against ``gallery_rows[i]``."""
        return (queries * gallery_rows).sum(dim=1)

    def proxy_threshold(self, scores: torch.Tensor, queries_sqnorm: torch.Tensor) -> torch.Tensor:
        """The proxy value of a pair whose exact score is ``scores`` (monotone)."""
        return scores

    def to_distance(self, scores: np.ndarray) -> np.ndarray:
        return -scores

    def from_distance(self, distances: np.ndarray) -> np.ndarray:
        return -distances

    def __repr__(self):
        return f"{type(self).__name__}()"


class CosineSimilarity(Similarity):
    name = "cosine"

    def prepare(self, x):
        return F.normalize(x, dim=1)

    def prepare_(self, x):
        # F.normalize's own steps, dividing in place: bit for bit its result
        return x.div_(x.norm(2, 1, keepdim=True).clamp_min_(1e-12))

    def to_distance(self, scores):
        return 1.0 - scores

    def from_distance(self, distances):
        return 1.0 - distances


class DotSimilarity(Similarity):
    name = "dot"


class EuclideanSimilarity(Similarity):
    """Negative euclidean distance.

    Blocks rank by the proxy ``2 a.b - ||b||^2 = ||a||^2 - ||a - b||^2``, which orders each
    query's row like ``-||a - b||`` without the query norm; candidates are re-scored as
    ``-||a - b||`` from the difference itself, so returned values do not suffer the
    cancellation of the expanded formula.
    """

    name = "euclidean"
    proxy_scale = 2.0

    def block(self, queries, gallery, gallery_sqnorm=None, out=None):
        if gallery_sqnorm is None:
            gallery_sqnorm = (gallery.float() ** 2).sum(dim=-1)
        sqnorm = gallery_sqnorm.unsqueeze(-2).to(queries.dtype)
        if out is not None:  # 2-D: one fused product into the caller's buffer
            return torch.addmm(sqnorm, queries, gallery.mT, beta=-1.0, alpha=2.0, out=out)
        return 2.0 * (queries @ gallery.mT) - sqnorm

    def exact(self, queries, gallery_rows):
        return -torch.linalg.vector_norm(queries - gallery_rows, dim=1)

    def proxy_threshold(self, scores, queries_sqnorm):
        # proxy = ||a||^2 - dist^2 with dist = -score; -inf stays -inf.
        return torch.where(torch.isinf(scores), scores, queries_sqnorm - scores * scores)


class CallableSimilarity(Similarity):
    """A user function ``fn(a, b) -> (n, m)`` similarities, called on torch tensors."""

    name = "callable"
    is_matmul = False

    def __init__(self, fn):
        self.fn = fn

    def block(self, queries, gallery, gallery_sqnorm=None, out=None):
        scores = self.fn(queries, gallery)
        scores = torch.as_tensor(scores, dtype=torch.float32, device=queries.device)
        expected = (queries.shape[0], gallery.shape[0])
        if tuple(scores.shape) != expected:
            raise ValueError(
                f"similarity_fn {getattr(self.fn, '__name__', self.fn)!r} returned shape "
                f"{tuple(scores.shape)} for inputs of {queries.shape[0]} and {gallery.shape[0]} "
                f"rows; it must return (n, m) = {expected}."
            )
        return scores

    def exact(self, queries, gallery_rows):
        raise NotImplementedError("a callable's block scores are its exact scores")

    def __repr__(self):
        return f"CallableSimilarity({self.fn!r})"


def get_similarity(similarity_fn) -> Similarity:
    """The :class:`Similarity` for a ``similarity_fn`` parameter value.

    Parameters
    ----------
    similarity_fn : {"cosine", "cosine_similarity", "dot", "euclidean"}, callable or Similarity
        A name, a function ``(a, b) -> (n, m)`` similarities of torch tensors, or a
        :class:`Similarity` (returned as is).

    Returns
    -------
    similarity : Similarity

    Examples
    --------
    >>> from skretrieval.search import get_similarity
    >>> get_similarity("cosine_similarity").name
    'cosine'
    """
    if isinstance(similarity_fn, Similarity):
        return similarity_fn
    if callable(similarity_fn):
        return CallableSimilarity(similarity_fn)
    if similarity_fn in ("cosine", "cosine_similarity"):
        return CosineSimilarity()
    if similarity_fn == "dot":
        return DotSimilarity()
    if similarity_fn == "euclidean":
        return EuclideanSimilarity()
    raise ValueError(
        f"similarity_fn={similarity_fn!r} is not supported; use one of {SIMILARITY_NAMES} or "
        "a callable (a, b) -> (n, m) similarity matrix (larger = more similar)."
    )
