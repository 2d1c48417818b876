"""ImageRetriever on features: neighbours, votes, parameters and errors."""

import numpy as np
import pytest
import torch
from helpers import TinyEncoder
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from skretrieval import ImageEncoder, ImageRetriever


@pytest.fixture
def blobs():
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(4, 16))
    y = rng.integers(0, 4, size=120)
    X = centres[y] + 0.6 * rng.normal(size=(120, 16))
    return X.astype(np.float32), y


def _retriever(**params):
    return ImageRetriever(ImageEncoder("precomputed", device="cpu"), **params)


def test_kneighbors_matches_sklearn_cosine(blobs):
    X, y = blobs
    gallery, queries = X[:90], X[90:]
    ours = _retriever().fit(gallery)
    ref = NearestNeighbors(algorithm="brute", metric="cosine").fit(gallery)
    dist, ind = ours.kneighbors(queries, n_neighbors=7)
    ref_dist, ref_ind = ref.kneighbors(queries, n_neighbors=7)
    np.testing.assert_array_equal(ind, ref_ind)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    # X=None: the gallery against itself, never an item as its own neighbour.
    self_dist, self_ind = ours.kneighbors(n_neighbors=5)
    ref_self_dist, ref_self_ind = ref.kneighbors(n_neighbors=5)
    np.testing.assert_array_equal(self_ind, ref_self_ind)
    np.testing.assert_allclose(self_dist, ref_self_dist, atol=1e-5)


@pytest.mark.parametrize(
    "similarity_fn, reference",
    [
        ("dot", lambda q, g: -(q @ g.T)),
        ("euclidean", lambda q, g: np.linalg.norm(q[:, None] - g[None], axis=2)),
        ("cosine_similarity", lambda q, g: 1 - (q / np.linalg.norm(q, axis=1, keepdims=True))
         @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T),
        (lambda a, b: -torch.cdist(a, b, p=1), lambda q, g: np.abs(q[:, None] - g[None]).sum(2)),
    ],
)
def test_distances_per_similarity(blobs, similarity_fn, reference):
    X, _ = blobs
    gallery, queries = X[:90], X[90:]
    dist, ind = _retriever(similarity_fn=similarity_fn).fit(gallery).kneighbors(queries, n_neighbors=4)
    full = reference(queries.astype(np.float64), gallery.astype(np.float64))
    np.testing.assert_array_equal(ind, np.argsort(full, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(dist, np.take_along_axis(full, ind, axis=1), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_search_is_the_similarity_view(blobs):
    X, _ = blobs
    retriever = _retriever(similarity_fn="dot", topk=3).fit(X[:90])
    similarities, indices = retriever.search(X[90:])
    dist, ind = retriever.kneighbors(X[90:])
    np.testing.assert_array_equal(indices, ind)
    np.testing.assert_allclose(similarities, -dist)
    assert np.all(np.diff(similarities, axis=1) <= 0)
    assert similarities.shape == (30, 3)


def test_predict_matches_kneighbors_classifier(blobs):
    X, y = blobs
    ours = _retriever(topk=5, similarity_fn="euclidean").fit(X[:90], y[:90])
    ref = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(X[:90], y[:90])
    np.testing.assert_allclose(ours.predict_proba(X[90:]), ref.predict_proba(X[90:]))
    assert ours.score(X[90:], y[90:]) == pytest.approx(ref.score(X[90:], y[90:]))
    np.testing.assert_array_equal(ours.classes_, np.arange(4))


def test_vote_tie_goes_to_best_ranked_neighbour():
    gallery = np.array([[0.0], [1.0], [2.0], [3.0]])
    # Query at 1.2 ranks items 1, 2, 0, 3 (by euclidean distance): labels b, a, b, a.
    retriever = _retriever(similarity_fn="euclidean", topk=4).fit(gallery, ["b", "b", "a", "a"])
    np.testing.assert_array_equal(retriever.predict([[1.2]]), ["b"])
    # At 1.4 the top 2 are item 1 (b) then item 2 (a): a 1-1 tie that goes to the best-ranked
    # b, where KNeighborsClassifier would pick the lowest class, a.
    retriever.set_params(topk=2)
    np.testing.assert_array_equal(retriever.predict([[1.4]]), ["b"])
    np.testing.assert_array_equal(retriever.predict([[1.6]]), ["a"])
    np.testing.assert_allclose(retriever.predict_proba([[1.4]]), [[0.5, 0.5]])


def test_similarity_vote_weights_and_fallback():
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    retriever = _retriever(topk=3, vote="similarity").fit(gallery, [0, 1, 1])
    query = np.array([[1.0, 0.0]])
    # cosine similarities 1.0, 0.6, 0.0 -> weights 1.0 (class 0) vs 0.6 (class 1)
    np.testing.assert_allclose(retriever.predict_proba(query), [[1 / 1.6, 0.6 / 1.6]])
    negative = _retriever(topk=2, vote="similarity", similarity_fn="euclidean").fit(gallery, [0, 1, 1])
    np.testing.assert_allclose(negative.predict_proba([[0.0, 1.0]]), [[0.0, 1.0]])  # uniform fallback
    custom = _retriever(topk=3, vote=lambda s: (s > 0.5).astype(float)).fit(gallery, [0, 1, 1])
    np.testing.assert_allclose(custom.predict_proba(query), [[0.5, 0.5]])


def test_without_y_every_item_is_its_own_label(blobs):
    X, _ = blobs
    retriever = _retriever(topk=5).fit(X[:90])
    top1 = retriever.kneighbors(X[90:], n_neighbors=1, return_distance=False)[:, 0]
    np.testing.assert_array_equal(retriever.predict(X[90:]), top1)
    proba = retriever.predict_proba(X[90:])
    assert proba.shape == (30, 90)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(retriever.prototype_labels_, np.arange(90))
    np.testing.assert_array_equal(retriever.prototype_ids_, np.arange(90))


def test_topk_minus_one_is_the_whole_gallery(blobs):
    X, y = blobs
    retriever = _retriever(topk=-1).fit(X[:10], y[:10])
    assert retriever.search(X[10:12])[1].shape == (2, 10)
    assert retriever.kneighbors()[1].shape == (10, 9)
    assert retriever.predict_proba(X[10:12]).shape == (2, len(np.unique(y[:10])))


def test_transform_returns_float32_features(blobs):
    X, _ = blobs
    retriever = _retriever().fit(X.astype(np.float64))
    out = retriever.transform(X[:5].astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, X[:5])
    assert retriever.prototype_.dtype == np.float32


def test_dump_prototype_round_trips(blobs, tmp_path):
    X, y = blobs
    labels = np.array(["cat", "dog", "owl", "fox"])[y[:60]]
    retriever = _retriever().fit(X[:60], labels)
    for name in ("gallery.pt", "gallery.npz"):
        path = retriever.dump_prototype(tmp_path / name)
        again = _retriever().fit(path)
        np.testing.assert_array_equal(again.prototype_, retriever.prototype_)
        np.testing.assert_array_equal(again.prototype_labels_, labels)
        np.testing.assert_array_equal(again.predict(X[60:]), retriever.predict(X[60:]))
    features_only = _retriever().fit(retriever.dump_prototype(tmp_path / "f.npy"), labels)
    np.testing.assert_array_equal(features_only.prototype_, retriever.prototype_)
    with pytest.raises(ValueError, match=r"\.pt, \.npz or \.npy"):
        retriever.dump_prototype(tmp_path / "gallery.csv")


# --- bad inputs: each a clear scikit-learn-style error -------------------------------------


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        _retriever().predict(np.ones((2, 3)))
    with pytest.raises(NotFittedError):
        _retriever().kneighbors(np.ones((2, 3)))


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.ones((0, 4)), ValueError, "0 sample"),
        ([], ValueError, "empty"),
        (np.ones(5), ValueError, "2D array"),
        (np.ones((2, 3, 4, 5, 6)), ValueError, r"numpy X must be 2-D features or images"),
        (np.array([[1.0, np.nan]]), ValueError, "NaN"),
        (np.array([[1.0, np.inf]]), ValueError, "infinity"),
        ({"a": 1}, TypeError, "X of type dict is not accepted"),
    ],
)
def test_bad_X(X, error, match):
    with pytest.raises(error, match=match):
        _retriever().fit(X)


def test_mismatched_y_length():
    with pytest.raises(ValueError, match="X has 3 samples but y has 2"):
        _retriever().fit(np.eye(3), [0, 1])


def test_continuous_y_is_refused():
    with pytest.raises(ValueError, match="Unknown label type"):
        _retriever().fit(np.eye(3), [0.5, 1.5, 2.25])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"similarity_fn": "manhattan"}, "similarity_fn"),
        ({"topk": 0}, "topk"),
        ({"topk": -2}, "topk"),
        ({"vote": "majority"}, "vote"),
        ({"encoder__batch_size": 0}, "batch_size"),
        ({"encoder__on_error": "ignore"}, "on_error"),
    ],
)
def test_bad_parameters_fail_in_fit(params, match):
    retriever = _retriever().set_params(**params)  # __init__ and set_params store, never validate
    with pytest.raises(ValueError, match=match):
        retriever.fit(np.eye(3))


def test_topk_larger_than_gallery_fails_at_query_time():
    retriever = _retriever(topk=10).fit(np.eye(4))  # fit accepts it
    with pytest.raises(ValueError, match="10 neighbours requested.*only 4 item"):
        retriever.predict(np.eye(4))
    with pytest.raises(ValueError, match="minus the query itself holds only 3"):
        retriever.kneighbors(n_neighbors=4)
    with pytest.raises(ValueError, match="n_neighbors must be a positive int"):
        retriever.kneighbors(np.eye(4), n_neighbors=0)


def test_feature_count_mismatch_at_query_time():
    retriever = _retriever().fit(np.eye(4))
    with pytest.raises(ValueError, match="X has 3 features"):
        retriever.kneighbors(np.ones((1, 3)))


def test_unknown_encoder_name_lists_choices():
    with pytest.raises(ValueError, match="Unknown encoder 'no_such_net'.*list_encoders"):
        ImageRetriever(ImageEncoder("no_such_net", device="cpu")).fit(np.zeros((2, 8, 8, 3)))


def test_bad_device():
    with pytest.raises(ValueError, match="device='gpu0'"):
        ImageRetriever(ImageEncoder("precomputed", device="gpu0")).fit(np.eye(3))


def test_encoding_options_live_on_the_composed_image_encoder(colour_images, tiny_prep):
    """Each encoding option is declared once, on ImageEncoder; the retriever composes it."""
    images, labels = colour_images
    encoding = ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu", batch_size=5)
    retriever = ImageRetriever(encoding, topk=1)
    shared = set(ImageEncoder().get_params()) & set(ImageRetriever().get_params(deep=False))
    assert shared == {"encoder", "verbose"}
    assert retriever.get_params()["encoder__batch_size"] == 5
    retriever.fit(images, labels)
    assert not hasattr(encoding, "encoder_")  # given options are read, never fitted or modified
    alone = ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu").fit(images)
    np.testing.assert_array_equal(retriever.prototype_, alone.transform(images))
    # a name or module is short for ImageEncoder(encoder) with its defaults
    shortcut = ImageRetriever("precomputed").fit(np.eye(3))
    assert shortcut.device_ == ImageEncoder("precomputed").fit(np.eye(3)).device_
    search = GridSearchCV(retriever, {"encoder__batch_size": [1, 7], "topk": [1, 3]}, cv=2).fit(images, labels)
    assert {p["encoder__batch_size"] for p in search.cv_results_["params"]} == {1, 7}
    assert search.best_score_ == 1.0
