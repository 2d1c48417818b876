"""The top-k scan through the tail bound (search/_bounds.py): an upper bound of every pair,
the same result as the full scan bit for bit, and the full scan where it prunes too little.

The bound serves galleries kept resident (a SearchGallery) from 65,536 rows; these tests
lower that limit (and the share of
the gallery it may score pair by pair, and the rows of a block) so small galleries take it,
in several blocks with a partial last chunk.
"""

import contextlib

import numpy as np
import pytest
import torch
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st

from skretrieval.search import SearchGallery, _bounds, _gallery, _topk, get_similarity, topk_search


@contextlib.contextmanager
def bound_for_any_gallery(share=1.0, block=64):
    """The bound for galleries of any size, scoring up to ``share`` of them pair by pair."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_topk, "_MIN_BOUND_GALLERY", 0)
        patch.setattr(_topk, "_MAX_BOUND_SHARE", share)
        patch.setattr(_gallery, "_MIN_BOUND_FEATURES", 1)
        patch.setattr(_bounds, "BLOCK", block)
        yield


def clustered(rng, centres, n, noise):
    """``n`` rows around random ``centres``."""
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, centres.shape[1]))
    return x.astype(np.float32)


def full_scan(queries, gallery, k, similarity, **options):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_topk, "_MIN_BOUND_GALLERY", np.inf)
        return topk_search(queries, gallery, k, similarity, **options)


@settings(max_examples=40, deadline=None)
@given(
    n_gallery=st.integers(32, 400),
    n_queries=st.integers(1, 20),
    dim=st.integers(1, 40),
    name=st.sampled_from(["cosine", "dot"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    kind=st.sampled_from(["integers", "clustered", "duplicates"]),
    exclude_self=st.booleans(),
    working_memory=st.sampled_from([0.02, None]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_same_result_as_the_full_scan(n_gallery, n_queries, dim, name, dtype, kind, exclude_self, working_memory, seed, data):
    rng = np.random.default_rng(seed)
    if kind == "integers":  # exact ties everywhere
        gallery = rng.integers(-2, 3, size=(n_gallery, dim)).astype(np.float32)
    else:
        gallery = clustered(rng, rng.standard_normal((max(1, n_gallery // 20), dim)), n_gallery, 0.1)
    if kind == "duplicates":
        gallery[rng.integers(0, n_gallery, n_gallery // 4)] = gallery[0]
    queries = gallery if exclude_self else clustered(rng, gallery[:3], n_queries, 1.0)
    k = data.draw(st.integers(1, n_gallery // 16 - 1))
    similarity = get_similarity(name)
    options = dict(exclude_self=exclude_self, working_memory=working_memory)
    with bound_for_any_gallery():
        resident = SearchGallery(gallery, similarity, dtype)
        assert resident.tail_bound is not None and resident.tail_bound.dtype == dtype
        scores, indices = topk_search(queries, resident, k, similarity, **options)
    expected = full_scan(queries, gallery, k, similarity, **options)  # float32 products
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(scores, expected[0])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 50),
    dim=st.integers(1, 30),
    scale=st.sampled_from([1e-20, 1e-3, 1.0, 1e6, 1e18]),
    seed=st.integers(0, 10_000),
)
def test_bound_rows_bound_every_product(n, dim, scale, seed):
    """[q_h, ||q_t||] . [g_h, ||g_t||] >= q . g for every pair (in float64), and the stored
    rows are the gallery's bound rows, chunk by chunk, each gallery row once."""
    rng = np.random.default_rng(seed)
    gallery = torch.from_numpy((scale * rng.standard_normal((n, dim))).astype(np.float32))
    queries = torch.from_numpy((scale * rng.standard_normal((7, dim))).astype(np.float32))
    with bound_for_any_gallery(block=32):
        bound = _bounds.TailBound(gallery)
    exact = queries.double() @ gallery.double().T
    bounded = bound.rows(queries).double() @ bound.rows(gallery).double().T
    assert (bounded >= exact).all()
    order = bound.order.reshape(-1)
    assert sorted(order[order >= 0].tolist()) == list(range(n))
    torch.testing.assert_close(bound.columns, bound.rows(gallery)[order[order >= 0]], rtol=0, atol=0)


def test_prunes_clustered_embeddings_and_gives_way_on_uniform_ones():
    """Clustered rows: the bound's scan answers, with float32 or bfloat16 products (it bounds
    under 2% of the chunks pair by pair); uniform random rows: it gives way, and the full scan
    answers."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, 512))  # ~10 rows a cluster
    gallery, queries = clustered(rng, centres, 20_000, 0.3), clustered(rng, centres, 50, 0.3)
    cosine = get_similarity("cosine")
    with bound_for_any_gallery(share=_topk._MAX_BOUND_SHARE, block=_bounds.BLOCK):
        resident = SearchGallery(gallery, cosine)
        qb = cosine.prepare(torch.from_numpy(queries))
        found = _topk._bounded_topk(resident, resident.tail_bound, qb, 0, 5, False, 2**28)
        assert found is not None
        in_bf16 = SearchGallery(gallery, cosine, torch.bfloat16)  # bfloat16 products: the same
        found_bf16 = _topk._bounded_topk(in_bf16, in_bf16.tail_bound, qb, 0, 5, False, 2**28)
        assert found_bf16 is not None
        uniform = SearchGallery(rng.standard_normal((20_000, 512)).astype(np.float32), cosine)
        assert _topk._bounded_topk(uniform, uniform.tail_bound, qb, 0, 5, False, 2**28) is None
        uniform_result = topk_search(queries, uniform, 5, cosine)
        assert uniform.tail_bound is None  # declined: later searches skip the probe
    expected = full_scan(queries, gallery, 5, cosine)
    for result in (found, found_bf16):
        np.testing.assert_array_equal(result[1].numpy(), expected[1])
        np.testing.assert_array_equal(result[0].numpy(), expected[0])
    reference = reference_scores(queries, uniform.exact.numpy(), "cosine")
    np.testing.assert_array_equal(uniform_result[1], np.argsort(-reference, axis=1, kind="stable")[:, :5])


def test_not_finite_rows_and_queries_take_the_full_scan():
    """A NaN query matches nothing, as in the full scan; a gallery with a NaN or inf row, or
    a streamed one, has no bound."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((40, 32))
    gallery, queries = clustered(rng, centres, 2000, 0.1), clustered(rng, centres, 6, 0.1)
    queries[2, 5] = np.nan
    cosine = get_similarity("cosine")
    with bound_for_any_gallery():
        resident = SearchGallery(gallery, cosine)
        scores, indices = topk_search(queries, resident, 5, cosine)
        assert resident.tail_bound is not None  # used by the blocks without a NaN
        with_nan = gallery.copy()
        with_nan[17, 3] = np.inf
        assert SearchGallery(with_nan, cosine).tail_bound is None
        assert SearchGallery(gallery.astype(np.float16), cosine).tail_bound is None  # streamed
    assert (indices[2] == -1).all() and (scores[2] == -np.inf).all()
    expected = full_scan(queries, gallery, 5, cosine)
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(scores, expected[0])
