"""Scorers: values against the metric functions, neighbours requested, GridSearchCV use."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skretrieval import ImageRetriever
from skretrieval.metrics import (
    SCORER_PATTERNS,
    get_scorer,
    map_at_r,
    mean_average_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    r_precision,
    recall_at_k,
)


class BruteRetriever(BaseEstimator):
    """Stand-in retriever: cosine NearestNeighbors exposing ``prototype_labels_``.

    Records the ``n_neighbors`` of every ``kneighbors`` call in ``calls_``.
    """

    def __init__(self, topk=5):
        self.topk = topk

    def fit(self, X, y):
        self.nn_ = NearestNeighbors(metric="cosine", algorithm="brute").fit(X)
        self.prototype_labels_ = np.asarray(y)
        self.calls_ = []
        return self

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        n_neighbors = self.topk if n_neighbors is None else n_neighbors
        self.calls_.append(n_neighbors)
        return self.nn_.kneighbors(X, n_neighbors, return_distance)


def by_hand(name, retriever, X, y):
    """The metric function on the label form of a kneighbors call made here."""
    gallery_labels = retriever.prototype_labels_
    kw = {"query_labels": y, "gallery_labels": gallery_labels}
    if name in ("mapr", "r_precision"):
        largest_r = max(np.sum(gallery_labels == label) for label in y)
        kw["ranked_indices"] = retriever.kneighbors(X, largest_r, return_distance=False)
        return (map_at_r if name == "mapr" else r_precision)(**kw)
    metric, k = name.split("@")
    kw["ranked_indices"] = retriever.kneighbors(X, int(k), return_distance=False)
    function = {
        "recall": recall_at_k,
        "precision": precision_at_k,
        "map": mean_average_precision_at_k,
        "ndcg": ndcg_at_k,
    }[metric]
    return function(**kw, k=int(k))


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=60, centers=3, n_features=4, cluster_std=4.0, random_state=0)
    return X[:40], y[:40], X[40:], y[40:]


NAMES = ["recall@1", "recall@5", "precision@3", "map@10", "ndcg@4", "mapr", "r_precision"]


@pytest.mark.parametrize("name", NAMES)
def test_scorer_equals_metric_function(name, blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = BruteRetriever().fit(X_gallery, y_gallery)
    expected = by_hand(name, retriever, X_query, y_query)
    assert 0 < expected < 1  # a case that tells metrics apart
    assert get_scorer(name)(retriever, X_query, y_query) == pytest.approx(expected)


def test_scorer_retrieves_k_whatever_topk(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = BruteRetriever(topk=2).fit(X_gallery, y_gallery)
    get_scorer("precision@7")(retriever, X_query, y_query)
    assert retriever.calls_ == [7]
    # k beyond the gallery: the whole gallery of 40
    get_scorer("recall@100")(retriever, X_query, y_query)
    assert retriever.calls_[-1] == 40


def test_r_scorers_retrieve_the_largest_r(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = BruteRetriever().fit(X_gallery, y_gallery)
    get_scorer("mapr")(retriever, X_query, y_query)
    assert retriever.calls_ == [np.bincount(y_gallery)[np.unique(y_query)].max()]


def test_query_labels_missing_from_gallery_score_zero(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = BruteRetriever().fit(X_gallery, y_gallery)
    full = {name: get_scorer(name)(retriever, X_query, y_query) for name in NAMES}
    # the same queries plus as many again with a label the gallery lacks: every mean halves
    X_twice, y_twice = np.vstack([X_query, X_query]), np.concatenate([y_query, np.full(20, 9)])
    for name in NAMES:
        assert get_scorer(name)(retriever, X_twice, y_twice) == pytest.approx(full[name] / 2), name
    # no query label in the gallery: 0, without a kneighbors call for the R metrics
    retriever.calls_.clear()
    assert get_scorer("mapr")(retriever, X_query, np.full(20, 9)) == 0.0
    assert retriever.calls_ == []


def test_pipeline_transforms_then_queries_the_last_step(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    pipeline = make_pipeline(StandardScaler(), BruteRetriever()).fit(X_gallery, y_gallery)
    queries = pipeline[0].transform(X_query)
    for name in ("recall@1", "mapr"):
        expected = by_hand(name, pipeline[-1], queries, y_query)
        assert get_scorer(name)(pipeline, X_query, y_query) == pytest.approx(expected)
    # a one-step pipeline queries its only step with X as given
    single = make_pipeline(BruteRetriever()).fit(X_gallery, y_gallery)
    expected = by_hand("map@5", single[-1], X_query, y_query)
    assert get_scorer("map@5")(single, X_query, y_query) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name", ["recall", "recall@0", "mapr@5", "map@r", "f1@3", "", 3, None, "dir@1.5", "dir@", "open_set_accuracy@3"]
)
def test_unknown_name(name):
    with pytest.raises(
        ValueError,
        match=r"Unknown retrieval scorer .*recall@K, precision@K, map@K, ndcg@K, mapr, r_precision, "
        r"open_set_accuracy, dir@FAR",
    ):
        get_scorer(name)


def test_names_are_case_insensitive_and_repr():
    assert repr(get_scorer("Recall@1")) == "get_scorer('recall@1')"
    assert repr(get_scorer("R_Precision")) == "get_scorer('r_precision')"
    assert repr(get_scorer("DIR@0.05")) == "get_scorer('dir@0.05')"
    assert len(SCORER_PATTERNS) == 8


def test_scorer_needs_y_and_matching_lengths(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = BruteRetriever().fit(X_gallery, y_gallery)
    with pytest.raises(ValueError, match="need y, the labels of the queries"):
        get_scorer("recall@1")(retriever, X_query, None)
    with pytest.raises(ValueError, match="X has 20 queries but y has 19 labels"):
        get_scorer("recall@1")(retriever, X_query, y_query[:-1])


def test_grid_search_with_stand_in(blobs):
    X, y = np.vstack(blobs[::2]), np.concatenate(blobs[1::2])
    scoring = {name: get_scorer(name) for name in ("recall@1", "mapr")}
    search = GridSearchCV(BruteRetriever(), {"topk": [1, 3]}, scoring=scoring, refit="mapr", cv=3)
    search.fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_mapr"]).all()
    assert search.best_score_ == search.cv_results_["mean_test_mapr"][search.best_index_]


def test_grid_search_with_image_retriever():
    X, y = make_blobs(n_samples=45, centers=3, n_features=5, cluster_std=3.0, random_state=1)
    X = X + 8.0  # away from the origin, so cosine and euclidean rank differently
    names = ("recall@1", "map@5")
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    grid = {"similarity_fn": ["cosine", "euclidean"], "topk": [1, 3]}
    search = GridSearchCV(
        ImageRetriever("precomputed"),
        grid,
        scoring={name: get_scorer(name) for name in names},
        refit="recall@1",
        cv=cv,
    ).fit(X, y)

    for candidate, params in enumerate(search.cv_results_["params"]):
        for split, (train, test) in enumerate(cv.split(X, y)):
            retriever = ImageRetriever("precomputed", **params).fit(X[train], y[train])
            ranked = retriever.kneighbors(X[test], n_neighbors=5, return_distance=False)
            kw = {"query_labels": y[test], "gallery_labels": y[train], "ranked_indices": ranked}
            recall, ap = recall_at_k(**kw, k=1), mean_average_precision_at_k(**kw, k=5)
            results = search.cv_results_
            assert results[f"split{split}_test_recall@1"][candidate] == pytest.approx(recall)
            assert results[f"split{split}_test_map@5"][candidate] == pytest.approx(ap)
    # the scorers ignore topk; the similarities rank differently and refit follows recall@1
    recall = search.cv_results_["mean_test_recall@1"]
    assert recall[0] == recall[1] and recall[2] == recall[3] and recall[0] != recall[2]
    assert search.best_score_ == pytest.approx(recall.max())
    assert search.best_params_["similarity_fn"] == grid["similarity_fn"][int(recall[2] > recall[0])]
