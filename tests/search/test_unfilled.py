"""Slots a search cannot fill: -1 / -inf, never an index past the gallery (issue 13, defect 7).

A query row holding a NaN matches nothing; gallery rows holding a NaN never match and must not
hide their neighbours (same block, same chunk) or void the error bounds of every other row.
"""

import numpy as np
import pytest
import torch
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st

from skretrieval.search import SearchGallery, get_similarity, radius_search, topk_search


def _reference_topk(reference, k):
    """Brute force: NaN and -inf pairs never match; score descending, ties to the lower index;
    the slots left over are -1 / -inf."""
    n_queries, n_gallery = reference.shape
    scores = np.full((n_queries, k), -np.inf)
    indices = np.full((n_queries, k), -1)
    for i, row in enumerate(reference):
        valid = np.flatnonzero(np.isfinite(row) | (row == np.inf))
        order = valid[np.lexsort((valid, -row[valid]))][:k]
        scores[i, : len(order)], indices[i, : len(order)] = row[order], order
    return scores, indices


def test_nan_query_row_gets_minus_one():
    """The issue's example: index 2 (past a 2-row gallery) before."""
    scores, indices = topk_search([[np.nan, 0.0]], np.eye(2), 1, get_similarity("dot"))
    np.testing.assert_array_equal(indices, [[-1]])
    np.testing.assert_array_equal(scores, [[-np.inf]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean"])
def test_nan_gallery_row_hides_nothing(name, dtype):
    """A NaN row next to the neighbours (same chunk) neither matches nor hides them, and
    one NaN query row leaves the other rows' answers as without it."""
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = gallery[[3, 700, 2999]] + 1e-3
    clean = topk_search(queries, gallery, 5, get_similarity(name), dtype=dtype)
    poisoned = gallery.copy()
    poisoned[[4, 1500]] = np.nan
    with_nan = np.vstack([queries[:1], [[np.nan] * 16], queries[1:]])
    scores, indices = topk_search(with_nan, poisoned, 5, get_similarity(name), dtype=dtype)
    expected_scores, expected = _reference_topk(reference_scores(with_nan, poisoned, name), 5)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_array_equal(indices[[0, 2, 3]], clean[1])
    np.testing.assert_array_equal(indices[1], [-1] * 5)
    assert indices[0, 0] == 3 and 4 not in indices


@settings(max_examples=40, deadline=None)
@given(
    n_gallery=st.integers(1, 50),
    n_queries=st.integers(1, 8),
    dim=st.integers(1, 5),
    name=st.sampled_from(["cosine", "dot", "euclidean"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    working_memory=st.sampled_from([1e-5, 1e-3, None]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_matches_brute_force_with_nan_rows(n_gallery, n_queries, dim, name, dtype, working_memory, seed, data):
    """Against numpy with NaN rows on both sides and k up to the gallery size: the filled
    slots are numpy's ranking (ties to the lower index), the rest -1 / -inf."""
    rng = np.random.default_rng(seed)
    # Small integers: exact ties, and dot/euclidean scores exact in float32.
    gallery = rng.integers(-2, 3, size=(n_gallery, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(n_queries, dim)).astype(np.float32)
    gallery[rng.random(n_gallery) < 0.3] = np.nan
    queries[rng.random(n_queries) < 0.3, rng.integers(0, dim)] = np.nan
    k = data.draw(st.integers(max(1, n_gallery - 3), n_gallery))
    scores, indices = topk_search(queries, gallery, k, get_similarity(name), working_memory=working_memory, dtype=dtype)
    expected_scores, expected = _reference_topk(reference_scores(queries, gallery, name), k)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices == -1, expected == -1)  # the same slots filled
    np.testing.assert_array_equal(scores == -np.inf, indices == -1)
    np.testing.assert_allclose(scores, expected_scores.astype(np.float32), atol=1e-5)
    if name != "cosine":  # integer scores are exact: the same rows in the same order
        np.testing.assert_array_equal(indices, expected)


def test_all_gallery_rows_nan():
    gallery = np.full((20, 3), np.nan, dtype=np.float32)
    scores, indices = topk_search(np.ones((2, 3)), gallery, 4, get_similarity("cosine"))
    np.testing.assert_array_equal(indices, -np.ones((2, 4), dtype=int))
    assert np.isneginf(scores).all()
    assert SearchGallery(gallery, get_similarity("dot")).max_norm == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_radius_with_nan_rows(dtype):
    """A NaN gallery row voided every query's bound before (no neighbour found at all)."""
    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((500, 8)).astype(np.float32)
    gallery[4] = np.nan
    queries = np.vstack([gallery[3:4], [[np.nan] * 8]])
    distances, indices = radius_search(queries, gallery, 1e-3, get_similarity("euclidean"), dtype=dtype)
    np.testing.assert_array_equal(indices[0], [3])
    np.testing.assert_allclose(distances[0], [0.0], atol=1e-6)
    assert len(indices[1]) == 0 and len(distances[1]) == 0
