"""retrieval_report: one neighbour search, values equal to the scorers, text and dict output."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skretrieval import ImageRetriever
from skretrieval.metrics import get_scorer, retrieval_report


class CountingRetriever(BaseEstimator):
    """Stand-in retriever recording the ``n_neighbors`` of each ``kneighbors`` call."""

    def fit(self, X, y):
        self.nn_ = NearestNeighbors(metric="cosine", algorithm="brute").fit(X)
        self.prototype_labels_ = np.asarray(y)
        self.calls_ = []
        return self

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        self.calls_.append(n_neighbors)
        return self.nn_.kneighbors(X, n_neighbors, return_distance)


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=60, centers=3, n_features=4, cluster_std=4.0, random_state=0)
    return X[:40], y[:40], X[40:], y[40:]


NAMES = ["recall@1", "recall@5", "map@10", "precision@3", "ndcg@4", "mapr", "r_precision"]


def test_one_search_and_values_equal_the_scorers(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = CountingRetriever().fit(X_gallery, y_gallery)
    report = retrieval_report(retriever, X_query, y_query, NAMES, output_dict=True)
    largest_r = np.bincount(y_gallery)[np.unique(y_query)].max()  # 14 > 10
    assert retriever.calls_ == [max(10, largest_r)]
    assert list(report) == NAMES
    for name in NAMES:
        assert report[name] == pytest.approx(get_scorer(name)(retriever, X_query, y_query)), name


def test_default_metrics_search_the_largest_k(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = CountingRetriever().fit(X_gallery, y_gallery)
    report = retrieval_report(retriever, X_query, y_query, output_dict=True)
    assert list(report) == ["recall@1", "recall@5", "map@10"]
    assert retriever.calls_ == [10]


def test_text_table_and_accuracy(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = ImageRetriever("precomputed", topk=3).fit(X_gallery, y_gallery)
    metrics = ["recall@1", "mapr", "accuracy"]
    values = retrieval_report(retriever, X_query, y_query, metrics, output_dict=True)
    assert values["accuracy"] == pytest.approx(retriever.score(X_query, y_query))
    text = retrieval_report(retriever, X_query, y_query, metrics, digits=3)
    lines = text.splitlines()
    assert lines[0].split() == ["score"]
    for line, name in zip(lines[1:4], metrics):
        assert line.split() == [name, f"{values[name]:.3f}"]
    assert lines[-1] == "20 queries, 0 without a relevant gallery item"
    # names right-aligned to the longest, values in one column
    assert len({len(line) for line in lines[:4]}) == 1


def test_accuracy_alone_needs_no_search(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = ImageRetriever("precomputed").fit(X_gallery, y_gallery)
    assert retrieval_report(retriever, X_query, y_query, "accuracy", output_dict=True) == {
        "accuracy": pytest.approx(retriever.score(X_query, y_query))
    }
    assert "queries" not in retrieval_report(retriever, X_query, y_query, "accuracy")


def test_pipeline_and_queries_without_relevant_items(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    pipeline = make_pipeline(StandardScaler(), ImageRetriever("precomputed")).fit(
        X_gallery, y_gallery
    )
    y_query = y_query.copy()
    y_query[:5] = 7  # not in the gallery: these queries score 0
    report = retrieval_report(
        pipeline, X_query, y_query, ["recall@5", "accuracy"], output_dict=True
    )
    assert report["recall@5"] == pytest.approx(get_scorer("recall@5")(pipeline, X_query, y_query))
    assert report["accuracy"] == pytest.approx(pipeline.score(X_query, y_query))
    text = retrieval_report(pipeline, X_query, y_query, ["recall@5"])
    assert text.endswith("20 queries, 5 without a relevant gallery item")


def test_invalid_metrics(blobs):
    X_gallery, y_gallery, X_query, y_query = blobs
    retriever = CountingRetriever().fit(X_gallery, y_gallery)
    with pytest.raises(ValueError, match="metrics is empty"):
        retrieval_report(retriever, X_query, y_query, [])
    with pytest.raises(ValueError, match="Unknown retrieval scorer 'top1'"):
        retrieval_report(retriever, X_query, y_query, ["recall@1", "top1"])
    assert retriever.calls_ == []
