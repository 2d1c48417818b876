"""Approximate search (``algorithm="ivf" | "hnsw"``, faiss): against the exact engine and faiss.

The references are the exact blocked search (itself tested against brute force and
scikit-learn), brute-force numpy scores (``helpers.reference_scores``) and faiss's exhaustive
``IndexFlat``: an inverted file probed in every cell is exhaustive, so it must answer exactly.
"""

import pickle
import subprocess
import sys
import textwrap

import faiss
import joblib
import numpy as np
import pytest
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import NearestNeighbors

from skretrieval import ImageEncoder, ImageRetriever, load
from skretrieval.search import get_similarity, topk_search
from skretrieval.search._approximate import ApproximateIndex, resolve_params

APPROXIMATE = ["ivf", "hnsw"]
NAMES = ["cosine", "dot", "euclidean"]


def _separated(n_classes=20, per_class=30, dim=16, seed=0, noise=0.5):
    """Tight, far-apart clusters: every query's neighbours are its own cluster's items."""
    rng = np.random.default_rng(seed)
    centres = 10 * rng.standard_normal((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    gallery = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    queries = centres + noise * rng.standard_normal((n_classes, dim))
    return gallery.astype(np.float32), labels, queries.astype(np.float32)


def _clustered(n, dim=32, n_centres=200, noise=0.35, seed=0):
    """bench_search.py's clustered data, smaller: random centres plus noise, normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim))
    x = centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(found, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)])


def _retriever(**params):
    return ImageRetriever(ImageEncoder("precomputed", device="cpu"), **params)


def test_exact_stays_the_default_and_builds_no_index():
    gallery, _, queries = _separated()
    retriever = _retriever(similarity_fn="euclidean").fit(gallery)
    assert ImageRetriever().get_params()["algorithm"] == "brute"
    distances, indices = retriever.kneighbors(queries, n_neighbors=7)
    expected = NearestNeighbors(n_neighbors=7, algorithm="brute").fit(gallery).kneighbors(queries)
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_allclose(distances, expected[0], atol=1e-4)
    assert retriever._search_cache.approximate is None


@pytest.mark.parametrize("algorithm", APPROXIMATE)
@pytest.mark.parametrize("name", NAMES)
def test_well_separated_data_gives_the_exact_answers(algorithm, name):
    gallery, labels, queries = _separated()
    exact = _retriever(similarity_fn=name, topk=5).fit(gallery, labels)
    approximate = _retriever(similarity_fn=name, topk=5, algorithm=algorithm).fit(gallery, labels)
    for q in (queries, None):  # queries, and the gallery against itself (no self-match)
        similarities, indices = approximate.search(q, k=10)
        expected = exact.search(q, k=10)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_array_equal(similarities, expected[0])  # the same float32 scores
        assert similarities.dtype == np.float32 and indices.dtype == np.int64
    distances, indices = approximate.kneighbors(queries)
    np.testing.assert_array_equal(distances, exact.kneighbors(queries)[0])
    np.testing.assert_array_equal(approximate.predict(queries), np.arange(20))
    self_indices = approximate.kneighbors(n_neighbors=29, return_distance=False)
    assert not (self_indices == np.arange(len(gallery))[:, None]).any()
    if name != "dot":  # (by inner product, a longer vector of another cluster may come first)
        np.testing.assert_array_equal(labels[self_indices], np.repeat(labels[:, None], 29, axis=1))


@pytest.mark.parametrize("name", NAMES)
def test_ivf_probing_every_cell_is_exhaustive(name):
    """nprobe = nlist scans every cell: the answers of faiss's exact IndexFlat, re-scored."""
    gallery, queries = _clustered(3000), _clustered(100, seed=1)
    retriever = _retriever(similarity_fn=name, algorithm="ivf", algorithm_params={"nlist": 30, "nprobe": 30})
    similarities, indices = retriever.fit(gallery).search(queries, k=10)
    expected = topk_search(queries, gallery, 10, get_similarity(name))
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(similarities, expected[0])
    flat = faiss.IndexFlatL2(32) if name == "euclidean" else faiss.IndexFlatIP(32)
    flat.add(gallery)
    assert _recall(indices, flat.search(queries, 10)[1]) > 0.999  # only float32 ties may differ


@pytest.mark.parametrize("algorithm", APPROXIMATE)
def test_recall_at_10_on_clustered_data_with_the_defaults(algorithm):
    """The stated floor: recall@10 against exact >= 0.9 with the default options, on
    clustered 32-d data (10,000 items around 250 centres; measured 0.955 ivf, 0.968 hnsw)."""
    gallery, queries = _clustered(10000, n_centres=250, noise=0.5), _clustered(300, n_centres=250, noise=0.5, seed=1)
    exact = topk_search(queries, gallery, 10, get_similarity("cosine"))[1]
    retriever = _retriever(algorithm=algorithm).fit(gallery)
    found = retriever.search(queries, k=10)[1]
    assert _recall(found, exact) >= 0.9
    # fewer cells probed / a narrower beam: lower recall (the knob does what it says)
    narrow = {"ivf": {"nprobe": 1}, "hnsw": {"efSearch": 1}}[algorithm]
    retriever.set_params(algorithm_params=narrow)
    assert _recall(retriever.search(queries, k=10)[1], exact) < _recall(found, exact)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 60),
    nlist=st.integers(1, 8),
    nprobe=st.integers(1, 8),
    k=st.integers(1, 12),
    name=st.sampled_from(NAMES),
    seed=st.integers(0, 2**16),
    exclude_self=st.booleans(),
)
def test_approximate_results_keep_the_exact_conventions(n, nlist, nprobe, k, name, seed, exclude_self):
    """Whatever ivf finds: exact float32 scores, best first, ties to the lower index, distinct
    rows, never the row itself in self-search, -1 / -inf only in the trailing unfilled slots."""
    rng = np.random.default_rng(seed)
    gallery = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)  # small integers: many ties
    nlist, k = min(nlist, n), min(k, n - int(exclude_self))
    if k < 1:
        return
    queries = gallery if exclude_self else rng.integers(-2, 3, size=(7, 3)).astype(np.float32)
    index = ApproximateIndex(gallery, get_similarity(name), "ivf", {"nlist": nlist})
    scores, indices = index.search(queries, k, exclude_self=exclude_self, params={"nprobe": nprobe})
    reference = reference_scores(queries, gallery, name)
    for row, (s, i) in enumerate(zip(scores, indices)):
        filled = i >= 0
        assert filled[: filled.sum()].all()  # unfilled slots only at the end
        assert np.all(s[~filled] == -np.inf)
        f, v = i[filled], s[filled]
        assert len(set(f)) == len(f) and not (exclude_self and row in f)
        np.testing.assert_allclose(v, reference[row, f], atol=1e-5)
        assert all(a > b or (a == b and x < y) for a, b, x, y in zip(v, v[1:], f, f[1:]))
    if nprobe >= nlist:  # every cell: the exact scores (rows may differ only among exact ties)
        exact = topk_search(queries, gallery, k, get_similarity(name), exclude_self=exclude_self)
        np.testing.assert_array_equal(scores, exact[0])


def test_unfilled_slots_are_minus_one_and_minus_inf():
    """One cell of four probed cannot hold all 99 other items: the rest is -1 / -inf."""
    gallery = _clustered(100)
    retriever = _retriever(algorithm="ivf", algorithm_params={"nlist": 4, "nprobe": 1}).fit(gallery)
    similarities, indices = retriever.search(None, k=99)
    unfilled = indices < 0
    assert unfilled.any() and (similarities[unfilled] == -np.inf).all()
    assert np.isfinite(similarities[~unfilled]).all()
    distances = retriever.kneighbors(n_neighbors=99)[0]
    assert (distances[unfilled] == np.inf).all()


def test_radius_duplicates_and_auto_threshold_stay_exact():
    gallery, labels, queries = _separated()
    exact = _retriever(threshold="auto").fit(gallery, labels)
    approximate = _retriever(threshold="auto", algorithm="ivf", algorithm_params={"nlist": 8, "nprobe": 1})
    approximate.fit(gallery, labels)
    assert approximate.threshold_ == exact.threshold_
    for a, b in zip(approximate.radius_neighbors(queries, radius=0.01), exact.radius_neighbors(queries, radius=0.01)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    found = approximate.find_duplicates(min_similarity=0.99)
    assert len(found) > 0 and all(np.array_equal(x, y) for x, y in zip(found, exact.find_duplicates(min_similarity=0.99)))


def test_index_is_built_on_first_query_kept_and_rebuilt_when_needed():
    gallery, labels, queries = _separated()
    retriever = _retriever(algorithm="ivf", algorithm_params={"nlist": 10}).fit(gallery, labels)
    assert retriever._search_cache.approximate is None  # lazily: no query yet
    retriever.predict(queries)
    index = retriever._approximate_index()
    retriever.search(queries)
    assert retriever._approximate_index() is index
    retriever.set_params(algorithm_params={"nlist": 10, "nprobe": 10})  # a search-time option
    assert retriever._approximate_index() is index
    retriever.set_params(algorithm_params={"nlist": 5})
    assert retriever._approximate_index() is not index
    index = retriever._approximate_index()
    new = -gallery[:5]  # new directions: each its own best match
    retriever.add(new, labels[:5])
    assert retriever._approximate_index() is not index and retriever._approximate_index().index.ntotal == 605
    np.testing.assert_array_equal(retriever.search(new, k=1)[1][:, 0], np.arange(600, 605))


def test_pickle_joblib_and_save_load_rebuild_the_index(tmp_path):
    gallery, labels, queries = _separated()
    model = _retriever(topk=3, algorithm="hnsw", algorithm_params={"M": 8, "efSearch": 20})
    model.fit(gallery, labels)
    expected = model.kneighbors(queries)
    assert model._search_cache.approximate is not None
    assert b"IndexHNSW" not in pickle.dumps(model)
    joblib.dump(model, tmp_path / "model.joblib")
    loaded = {"joblib": joblib.load(tmp_path / "model.joblib"), "skr": load(model.save(tmp_path / "model.skr"))}
    for restored in loaded.values():
        assert getattr(restored, "_search_cache", None) is None or restored._search_cache.approximate is None
        assert restored.get_params()["algorithm"] == "hnsw"
        assert restored.get_params()["algorithm_params"] == {"M": 8, "efSearch": 20}
        distances, indices = restored.kneighbors(queries)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_array_equal(distances, expected[0])
        assert restored._search_cache.approximate is not None


def test_grid_search_over_algorithm():
    gallery, labels, _ = _separated(per_class=10)
    grid = GridSearchCV(
        _retriever(topk=3),
        [{"algorithm": ["brute", "hnsw"]}, {"algorithm": ["ivf"], "algorithm_params": [{"nlist": 4}]}],
        cv=3,
    ).fit(gallery, labels)
    assert [p["algorithm"] for p in grid.cv_results_["params"]] == ["brute", "hnsw", "ivf"]
    np.testing.assert_array_equal(grid.cv_results_["mean_test_score"], [1.0, 1.0, 1.0])


def test_parameters_are_validated_in_fit():
    gallery, _, _ = _separated()
    cases = [
        ({"algorithm": "kd_tree"}, "algorithm"),
        ({"algorithm_params": [("nlist", 4)]}, "algorithm_params"),
        ({"algorithm": "ivf", "algorithm_params": {"M": 8}}, r"\['M'\] are not options of algorithm='ivf'"),
        ({"algorithm_params": {"nlist": 4}}, "algorithm='brute', which takes none"),
        ({"algorithm": "hnsw", "algorithm_params": {"efSearch": 0}}, "must be a positive int; got 0"),
        ({"algorithm": "ivf", "algorithm_params": {"nprobe": 2.5}}, "positive int; got 2.5"),
        ({"algorithm": "ivf", "algorithm_params": {"nlist": 601}}, "nlist=601 exceeds the 600 gallery items"),
        ({"algorithm": "hnsw", "similarity_fn": lambda a, b: a @ b.T}, "callable similarity_fn has no index"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            _retriever(**params).fit(gallery)


def test_default_options_follow_the_gallery_size():
    assert resolve_params("ivf", None, 100) == {"nlist": 2, "nprobe": 2}
    assert resolve_params("ivf", None, 10) == {"nlist": 1, "nprobe": 1}
    assert resolve_params("ivf", {"nprobe": 500}, 10**6) == {"nlist": 4000, "nprobe": 500}
    assert resolve_params("ivf", {"nlist": 5, "nprobe": 500}, 10**6) == {"nlist": 5, "nprobe": 5}
    assert resolve_params("hnsw", {"M": 16}, 10) == {"M": 16, "efConstruction": 80, "efSearch": 64}


def test_nan_gallery_rows_never_match():
    gallery = _clustered(200)
    gallery[[3, 50]] = np.nan
    for algorithm in APPROXIMATE:
        index = ApproximateIndex(gallery, get_similarity("cosine"), algorithm, None)
        scores, indices = index.search(gallery[[4, 51]], 10, params={"nprobe": 100})
        expected = topk_search(gallery[[4, 51]], gallery, 10, get_similarity("cosine"))
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_array_equal(scores, expected[0])
        assert not np.isin(indices, [3, 50]).any()


_BLOCK_FAISS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "faiss" or name.startswith("faiss."):
            raise ImportError("No module named 'faiss' (blocked by the test)")
sys.meta_path.insert(0, Block())
"""


def _without_faiss(code: str) -> subprocess.CompletedProcess:
    script = _BLOCK_FAISS + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_missing_faiss_is_an_import_error_naming_the_extra(tmp_path):
    gallery, labels, queries = _separated()
    np.save(tmp_path / "gallery.npy", gallery)
    _retriever(algorithm="ivf").fit(gallery, labels).save(tmp_path / "ivf.skr")
    result = _without_faiss(f"""
        import numpy as np
        from skretrieval import ImageRetriever, load
        gallery = np.load({str(tmp_path / "gallery.npy")!r})
        print(ImageRetriever("precomputed").fit(gallery).kneighbors(gallery[:1], 2)[1].tolist())
        for run in (lambda: ImageRetriever("precomputed", algorithm="hnsw").fit(gallery),
                    lambda: load({str(tmp_path / "ivf.skr")!r}).kneighbors(gallery[:1])):
            try:
                run()
            except ImportError as error:
                print("ImportError:", error)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    exact = ImageRetriever("precomputed").fit(gallery).kneighbors(gallery[:1], 2)[1].tolist()
    assert lines[0] == str(exact)  # the exact search needs no faiss
    assert len(lines) == 3
    for line in lines[1:]:
        assert line.startswith("ImportError:") and 'pip install "skretrieval[ann]"' in line
