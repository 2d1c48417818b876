"""Radius search and neighbour graphs against scikit-learn's NearestNeighbors."""

import numpy as np
import pytest
import torch
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from skretrieval import ImageRetriever
from skretrieval.search import get_similarity, radius_search

METRICS = {"euclidean": "euclidean", "cosine": "cosine"}


def _data(seed, n_gallery=200, n_queries=15, dim=4):
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n_gallery, dim)).astype(np.float32)
    gallery[n_gallery // 2 :: 7] = gallery[: len(gallery[n_gallery // 2 :: 7])]  # duplicates
    return gallery, rng.standard_normal((n_queries, dim)).astype(np.float32)


def _away_from_radius(distances, radius, tol=1e-5):
    """Pairs whose float32 and float64 distances could fall on different sides are skipped."""
    return np.abs(distances - radius) > tol


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(["euclidean", "cosine"]),
    radius_quantile=st.floats(0.0, 0.3),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    working_memory=st.sampled_from([1e-4, None]),
    seed=st.integers(0, 1000),
)
def test_radius_search_matches_sklearn(name, radius_quantile, dtype, working_memory, seed):
    gallery, queries = _data(seed)
    nn = NearestNeighbors(metric=METRICS[name], algorithm="brute").fit(gallery.astype(np.float64))
    all_distances = nn.kneighbors(queries.astype(np.float64), len(gallery))[0]
    radius = float(np.quantile(all_distances, radius_quantile))
    expected_dist, expected_ind = nn.radius_neighbors(queries.astype(np.float64), radius, sort_results=True)
    distances, indices = radius_search(
        queries, gallery, radius, get_similarity(name), sort_results=True,
        working_memory=working_memory, dtype=dtype,
    )
    for d, i, ed, ei in zip(distances, indices, expected_dist, expected_ind):
        clear = set(ei[_away_from_radius(ed, radius)])
        assert clear <= set(i)
        assert np.all(np.abs(d[~np.isin(i, ei)] - radius) <= 1e-5)  # extras only at the border
        assert np.all(np.diff(d) >= 0)
        assert np.all(d <= radius)


@pytest.mark.parametrize("name", ["cosine", "euclidean", "dot"])
def test_an_infinite_radius_finds_every_other_row_once(name):
    # A -inf score threshold keeps the masked pairs as candidates: the self-search must still
    # give each row every other row exactly once (not the lower half twice).
    gallery = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for working_memory in (1e-4, None):
        _, indices = radius_search(
            gallery, gallery, np.inf, get_similarity(name), exclude_self=True, working_memory=working_memory
        )
        assert [list(i) for i in indices] == [[j for j in range(5) if j != i] for i in range(5)]


def test_radius_neighbors_exclude_self_and_order():
    gallery = np.array([[0.0], [1.0], [1.0], [3.0]], dtype=np.float32)
    distances, indices = radius_search(gallery, gallery, 1.0, get_similarity("euclidean"), exclude_self=True)
    assert [list(i) for i in indices] == [[1, 2], [0, 2], [0, 1], []]
    assert distances.dtype == object and indices.dtype == object


@pytest.mark.parametrize("name", ["euclidean", "cosine"])
def test_retriever_radius_methods_match_sklearn(name):
    gallery, queries = _data(7, n_gallery=120, n_queries=10, dim=3)
    retriever = ImageRetriever("precomputed", similarity_fn=name, working_memory=1e-3).fit(gallery)
    nn = NearestNeighbors(metric=METRICS[name], algorithm="brute").fit(gallery)
    radius = 0.4 if name == "euclidean" else 0.02
    for X in (queries, None):
        distances, indices = retriever.radius_neighbors(X, radius=radius, sort_results=True)
        expected_dist, expected_ind = nn.radius_neighbors(X, radius, sort_results=True)
        for d, i, ed, ei in zip(distances, indices, expected_dist, expected_ind):
            np.testing.assert_array_equal(np.sort(i), np.sort(ei))
            np.testing.assert_allclose(d, ed, atol=1e-5)
        graph = retriever.radius_neighbors_graph(X, radius=radius, mode="distance")
        expected = nn.radius_neighbors_graph(X, radius, mode="distance")
        assert graph.format == "csr" and graph.shape == expected.shape
        np.testing.assert_allclose(graph.toarray(), expected.toarray(), atol=1e-5)
        connectivity = retriever.radius_neighbors_graph(X, radius=radius)
        assert (connectivity != nn.radius_neighbors_graph(X, radius)).nnz == 0
        # Duplicates tie at the 4th neighbour, where scikit-learn's pick is arbitrary.
        knn = retriever.kneighbors_graph(X, n_neighbors=4, mode="distance").toarray()
        expected = nn.kneighbors_graph(X, 4, mode="distance").toarray()
        np.testing.assert_allclose(np.sort(knn, axis=1), np.sort(expected, axis=1), atol=1e-5)
        connectivity = retriever.kneighbors_graph(X, 4)
        assert connectivity.format == "csr" and (connectivity.sum(axis=1) == 4).all()
        assert ((connectivity.toarray() > 0) == (knn > 0)).all() or X is None
    assert retriever.radius_neighbors(queries, radius=radius, return_distance=False).dtype == object


def test_graph_arguments_are_checked():
    retriever = ImageRetriever("precomputed").fit(np.eye(3))
    with pytest.raises(ValueError, match="mode="):
        retriever.kneighbors_graph(mode="weights")
    with pytest.raises(ValueError, match="needs a radius"):
        retriever.radius_neighbors()
    with pytest.raises(ValueError, match="sort_results"):
        retriever.radius_neighbors_graph(radius=1.0, sort_results=True)


def test_find_duplicates():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((50, 16)).astype(np.float32)
    gallery[10] = gallery[3]
    gallery[20] = gallery[3] * 2  # same direction: a cosine duplicate
    gallery[30] = gallery[5] + 1e-4
    groups = ImageRetriever("precomputed", search_precision="bf16").fit(gallery).find_duplicates(min_similarity=0.999)
    assert [g.tolist() for g in groups] == [[3, 10, 20], [5, 30]]
    euclidean = ImageRetriever("precomputed", similarity_fn="euclidean").fit(gallery)
    assert [g.tolist() for g in euclidean.find_duplicates(min_similarity=-0.01)] == [[3, 10], [5, 30]]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    dim=st.integers(1, 5),
    name=st.sampled_from(["euclidean", "cosine", "dot"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    stored=st.sampled_from(["float32", "float16"]),
    working_memory=st.sampled_from([1e-4, 1e-3, None]),
    radius_quantile=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_self_search_scores_each_pair_once_and_equals_the_full_search(
    n, dim, name, dtype, stored, working_memory, radius_quantile, seed
):
    # The gallery against itself scores only i < j and mirrors the pairs: the result must be
    # the full search of every row against every other, bit for bit, for any block layout.
    rng = np.random.default_rng(seed)
    gallery = (rng.integers(-3, 4, size=(n, dim)) / 2).astype(stored)  # ties and duplicates
    gallery[np.abs(gallery).sum(axis=1) == 0, 0] = 1  # no zero vector (no cosine)
    similarity = get_similarity(name)
    full = reference_scores(gallery.astype(np.float32), gallery.astype(np.float32), name)
    radius = float(np.quantile(similarity.to_distance(full), radius_quantile))
    got = radius_search(
        gallery, gallery, radius, similarity, exclude_self=True, sort_results=True,
        working_memory=working_memory, dtype=dtype,
    )
    everyone = radius_search(
        gallery.copy(), gallery, radius, similarity, sort_results=True, working_memory=working_memory, dtype=dtype
    )
    for i, (d, j, ed, ej) in enumerate(zip(*got, *everyone)):
        own = ej != i
        np.testing.assert_array_equal(j, ej[own])
        np.testing.assert_array_equal(d, ed[own])
