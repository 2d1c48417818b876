"""Blocked top-k search against a brute-force numpy reference and faiss.

Scores are compared with a float32-rounding tolerance: the engine scores each returned pair
in float32, so near-equal scores may order differently from a float64 reference; exact ties
(duplicates, small integer vectors) go to the lower gallery index.
"""

import numpy as np
import pytest
import torch
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st

from skretrieval.search import (
    SearchGallery,
    block_sizes,
    get_similarity,
    resolve_precision,
    topk_search,
)

TOL = 1e-5


def reference_topk(scores, k):
    """Descending scores, ties to the lower index (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def assert_valid_topk(scores, indices, reference, k):
    """A top-k of ``reference`` up to float32 rounding, with distinct indices."""
    expected, _ = reference_topk(reference, k)
    np.testing.assert_allclose(scores, expected, atol=TOL)
    np.testing.assert_allclose(np.take_along_axis(reference, indices, 1), scores, atol=TOL)
    assert all(len(set(row)) == k for row in indices.tolist())


@settings(max_examples=15, deadline=None)  # each example is slow with tiny blocks
@given(
    n_gallery=st.integers(2, 120),
    n_queries=st.integers(1, 15),
    dim=st.integers(1, 12),
    name=st.sampled_from(["cosine", "dot", "euclidean"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    working_memory=st.sampled_from([2e-4, 2e-3, None]),  # 2e-4 MiB: ~50 scores a block
    exclude_self=st.booleans(),
    integers=st.booleans(),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_matches_brute_force(
    n_gallery, n_queries, dim, name, dtype, working_memory, exclude_self, integers, seed, data
):
    rng = np.random.default_rng(seed)
    if integers:  # exact ties and duplicate vectors
        gallery = rng.integers(-2, 3, size=(n_gallery, dim)).astype(np.float32)
    else:
        gallery = rng.standard_normal((n_gallery, dim)).astype(np.float32)
    duplicates = rng.integers(0, n_gallery, size=n_gallery // 4)
    gallery[rng.integers(0, n_gallery, size=len(duplicates))] = gallery[duplicates]
    queries = gallery if exclude_self else rng.standard_normal((n_queries, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n_gallery - int(exclude_self)))
    similarity = get_similarity(name)
    scores, indices = topk_search(
        queries, gallery, k, similarity, exclude_self=exclude_self,
        working_memory=working_memory, dtype=dtype,
    )
    reference = reference_scores(queries, gallery, name)
    if exclude_self:
        np.fill_diagonal(reference, -np.inf)
    assert_valid_topk(scores, indices, reference, k)
    if integers and name != "cosine":  # integer scores are exact: ties go to the lower index
        np.testing.assert_array_equal(indices, reference_topk(reference, k)[1])


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean"])
def test_precision_and_block_size_do_not_change_results(name):
    """bf16 selects candidates, float32 scores them: identical output, bit for bit."""
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((3000, 32)).astype(np.float32)
    gallery[1500:1600] = gallery[:100]  # duplicates: ties across blocks
    queries = rng.standard_normal((70, 32)).astype(np.float32)
    similarity = get_similarity(name)
    expected = topk_search(queries, gallery, 15, similarity)
    for dtype in (torch.float32, torch.bfloat16):
        for working_memory in (0.01, 0.3, None):
            got = topk_search(queries, gallery, 15, similarity, dtype=dtype, working_memory=working_memory)
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
    assert_valid_topk(*expected, reference_scores(queries, gallery, name), 15)


def test_bf16_exact_on_clustered_data():
    """Near-duplicates differ below bf16 resolution; re-scoring still ranks them right."""
    rng = np.random.default_rng(1)
    centre = rng.standard_normal(64).astype(np.float32)
    gallery = centre + 1e-3 * rng.standard_normal((2000, 64)).astype(np.float32)
    queries = centre + 1e-3 * rng.standard_normal((20, 64)).astype(np.float32)
    for name in ("cosine", "dot", "euclidean"):
        similarity = get_similarity(name)
        fp32 = topk_search(queries, gallery, 10, similarity)
        bf16 = topk_search(queries, gallery, 10, similarity, dtype=torch.bfloat16, working_memory=0.05)
        np.testing.assert_array_equal(bf16[1], fp32[1])


def test_matches_faiss():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((5000, 48)).astype(np.float32)
    queries = rng.standard_normal((100, 48)).astype(np.float32)
    index = faiss.IndexFlatIP(48)
    index.add(gallery)
    expected_scores, expected = index.search(queries, 10)
    for dtype in (torch.float32, torch.bfloat16):
        scores, indices = topk_search(queries, gallery, 10, get_similarity("dot"), dtype=dtype)
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-4)


def test_k_equals_gallery_and_single_rows():
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((40, 5)).astype(np.float32)
    queries = rng.standard_normal((3, 5)).astype(np.float32)
    reference = reference_scores(queries, gallery, "dot")
    scores, indices = topk_search(queries, gallery, 40, get_similarity("dot"), working_memory=1e-5)
    assert_valid_topk(scores, indices, reference, 40)
    scores, indices = topk_search(gallery, gallery, 39, get_similarity("dot"), exclude_self=True)
    assert not (indices == np.arange(40)[:, None]).any()
    with pytest.raises(ValueError, match="only 39"):
        topk_search(gallery, gallery, 40, get_similarity("dot"), exclude_self=True)


def test_exclude_self_keeps_duplicates():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    for dtype in (torch.float32, torch.bfloat16):
        _, indices = topk_search(gallery, gallery, 2, get_similarity("cosine"), exclude_self=True, dtype=dtype)
        np.testing.assert_array_equal(indices[:, 0], [1, 0, 0, 0])
        np.testing.assert_array_equal(indices[:, 1], [3, 3, 1, 1])


def test_callable_similarity_blocked():
    rng = np.random.default_rng(4)
    gallery = rng.standard_normal((500, 6)).astype(np.float32)
    queries = rng.standard_normal((20, 6)).astype(np.float32)
    similarity = get_similarity(lambda a, b: -torch.cdist(a, b))
    scores, indices = topk_search(queries, gallery, 7, similarity, working_memory=1e-3, dtype=torch.bfloat16)
    assert_valid_topk(scores, indices, reference_scores(queries, gallery, "euclidean"), 7)


def test_resident_gallery_and_block_sizes():
    rng = np.random.default_rng(5)
    gallery = rng.standard_normal((300, 8)).astype(np.float32)
    similarity = get_similarity("cosine")
    resident = SearchGallery(gallery, similarity, torch.bfloat16)
    assert resident.low.dtype == torch.bfloat16 and resident.exact.dtype == torch.float32
    np.testing.assert_array_equal(
        topk_search(gallery[:5], resident, 3, similarity)[1], topk_search(gallery[:5], gallery, 3, similarity)[1]
    )
    query_block, gallery_block = block_sizes(10_000, 1_000_000, working_memory=64, bytes_per_score=3)
    assert query_block * gallery_block * 3 <= 64 * 2**20
    assert block_sizes(10, 10, working_memory=1e-9) == (1, 1)


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="not supported"):
        resolve_precision("int8", "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean"])
def test_rising_threshold_with_better_rows_in_every_block(name, dtype):
    """A gallery whose rows get ever closer to the queries (each block beats the last one's
    threshold for every query, the case that re-scans most) with NaN rows inside chunks,
    in blocks of several products: the same top-k as brute force, and as one block."""
    rng = np.random.default_rng(6)
    direction = rng.standard_normal(24).astype(np.float32)
    closeness = np.linspace(0.0, 3.0, 3000, dtype=np.float32)[:, None]
    gallery = (0.1 * (closeness * direction + rng.standard_normal((3000, 24)))).astype(np.float32)
    gallery[[37, 1030, 2999]] = np.nan
    queries = (0.1 * (3.0 * direction + rng.standard_normal((20, 24)))).astype(np.float32)
    similarity = get_similarity(name)
    reference = reference_scores(queries, gallery, name)
    reference[np.isnan(reference)] = -np.inf
    _, gallery_block = block_sizes(20, 3000, 0.05, 5, "cpu", products=16)
    assert 16 * 8 <= gallery_block < 1000  # several blocks of 16 products of 8+ columns
    for k in (1, 10, 50):
        scores, indices = topk_search(queries, gallery, k, similarity, working_memory=0.05, dtype=dtype)
        assert_valid_topk(scores, indices, reference, k)
        one_block = topk_search(queries, gallery, k, similarity, dtype=dtype)
        np.testing.assert_array_equal(indices, one_block[1])
        np.testing.assert_array_equal(scores, one_block[0])
