"""Blocked top-k equals a brute-force numpy ranking, ties to the lower index, any block size."""

import numpy as np
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st

from skretrieval.search import get_similarity, topk_search


@settings(max_examples=60, deadline=None)
@given(
    n_gallery=st.integers(2, 60),
    n_queries=st.integers(1, 12),
    dim=st.integers(1, 6),
    name=st.sampled_from(["cosine", "dot", "euclidean"]),
    working_memory=st.sampled_from([1e-5, 1e-3, None]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_matches_brute_force_with_ties(n_gallery, n_queries, dim, name, working_memory, seed, data):
    rng = np.random.default_rng(seed)
    # Small integer coordinates make many exact ties and duplicate vectors.
    gallery = rng.integers(-2, 3, size=(n_gallery, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(n_queries, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n_gallery))
    scores, indices = topk_search(queries, gallery, k, get_similarity(name), working_memory=working_memory)
    reference = reference_scores(queries, gallery, name)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, indices, axis=1), atol=1e-5)
    # Rounded to float32 as we compute; ties then go to the lower gallery index.
    rounded = np.round(reference, 5)
    order = np.lexsort((np.broadcast_to(np.arange(n_gallery), rounded.shape), -rounded), axis=1)[:, :k]
    np.testing.assert_allclose(np.take_along_axis(rounded, indices, 1), np.take_along_axis(rounded, order, 1))
    ties_resolved = np.take_along_axis(rounded, indices, 1) == np.take_along_axis(rounded, order, 1)
    assert ties_resolved.all()
    if name == "dot":  # integer dot products are exact: equal scores list lower indices first
        np.testing.assert_array_equal(indices, np.lexsort(
            (np.broadcast_to(np.arange(n_gallery), reference.shape), -reference), axis=1)[:, :k])
