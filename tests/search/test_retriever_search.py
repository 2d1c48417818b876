"""ImageRetriever's use of the search engine: precision, resident gallery, add, pickling."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from skretrieval import ImageEncoder, ImageRetriever


def _gallery(seed=0, n=300, dim=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.integers(0, 4, size=n)


@pytest.mark.parametrize("name", ["cosine", "euclidean"])
def test_kneighbors_matches_sklearn_in_every_precision(name):
    gallery, _ = _gallery()
    queries = _gallery(1, n=25)[0]
    expected = NearestNeighbors(n_neighbors=6, metric=name, algorithm="brute").fit(gallery).kneighbors(queries)
    for precision in ("fp32", "bf16", "auto"):
        retriever = ImageRetriever(
            "precomputed", similarity_fn=name, search_precision=precision, working_memory=0.01
        ).fit(gallery)
        distances, indices = retriever.kneighbors(queries, n_neighbors=6)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_allclose(distances, expected[0], atol=1e-5)


def test_search_precision_is_validated():
    gallery, _ = _gallery()
    with pytest.raises(ValueError, match="search_precision"):
        ImageRetriever("precomputed", search_precision="int4").fit(gallery)
    with pytest.raises(ValueError, match="needs a GPU"):
        ImageRetriever(
            ImageEncoder("precomputed", device="cpu"),
            search_precision="fp16",
        ).fit(gallery).kneighbors(gallery[:2])


def test_gallery_stays_resident_and_is_not_pickled():
    gallery, y = _gallery()
    retriever = ImageRetriever("precomputed", search_precision="bf16").fit(gallery, y)
    first = retriever.predict(gallery[:10])
    resident = retriever._search_cache.gallery
    retriever.predict(gallery[:10])
    assert retriever._search_cache.gallery is resident  # not rebuilt between queries
    restored = pickle.loads(pickle.dumps(retriever))
    assert not hasattr(restored, "_search_cache")
    np.testing.assert_array_equal(restored.predict(gallery[:10]), first)
    retriever.set_params(similarity_fn="dot")
    retriever.predict(gallery[:2])
    assert retriever._search_cache.gallery is not resident  # another similarity: rebuilt


def test_add_equals_fit_on_concatenation():
    gallery, y = _gallery()
    queries = _gallery(2, n=20)[0]
    full = ImageRetriever("precomputed", topk=3).fit(gallery, y)
    grown = ImageRetriever("precomputed", topk=3).fit(gallery[:200], y[:200])
    grown.predict(queries)  # builds the resident gallery, which add must refresh
    grown.add(gallery[200:], y[200:])
    np.testing.assert_array_equal(grown.prototype_, full.prototype_)
    np.testing.assert_array_equal(grown.prototype_labels_, full.prototype_labels_)
    np.testing.assert_array_equal(grown.prototype_ids_, full.prototype_ids_)
    np.testing.assert_array_equal(grown.classes_, full.classes_)
    np.testing.assert_array_equal(grown.kneighbors(queries)[1], full.kneighbors(queries)[1])
    np.testing.assert_array_equal(grown.predict_proba(queries), full.predict_proba(queries))


def test_add_new_class_and_unlabelled_growth():
    retriever = ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0], [0.9, 0.1]], ["a", "a"])
    retriever.add([[0.0, 1.0]], ["b"])
    assert retriever.classes_.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="needs y"):
        retriever.add([[1.0, 1.0]])
    with pytest.raises(ValueError, match="features"):
        retriever.add([[1.0, 1.0, 1.0]], ["c"])
    unlabelled = ImageRetriever("precomputed", topk=1).fit(np.eye(3))
    unlabelled.add(np.eye(3)[:2] * 2)
    assert unlabelled.prototype_labels_.tolist() == [0, 1, 2, 3, 4]
    assert unlabelled.prototype_ids_.tolist() == [0, 1, 2, 3, 4]
    assert unlabelled.predict([[0.0, 0.0, 1.0]]).tolist() == [2]


def test_block_budget_defaults():
    from sklearn import config_context

    from skretrieval.search._gallery import block_sizes, default_working_memory

    with config_context(working_memory=1):
        assert default_working_memory("cpu") == 1
        assert block_sizes(1000, 10**6, None, 4, "cpu") == block_sizes(1000, 10**6, 1, 4)
    if torch.cuda.is_available():  # a quarter of the free device memory
        free, _ = torch.cuda.mem_get_info()
        assert default_working_memory("cuda") == pytest.approx(free / 4 / 2**20, rel=0.2)
