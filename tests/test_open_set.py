"""Open-set retrieval: the threshold rule, "auto" estimation, outlier labels, scorers, persistence."""

import numpy as np
import pytest
from sklearn.metrics import DetCurveDisplay, det_curve
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from skretrieval import ImageEncoder, ImageRetriever, load
from skretrieval._sklearn_compat import InvalidParameterError
from skretrieval.metrics import (
    detection_identification_rate,
    false_match_rate,
    get_scorer,
    open_set_accuracy,
    open_set_scores,
    retrieval_report,
)
from skretrieval.metrics._open_set import _threshold_at_rate

# dot similarity with the single gallery item [1]: a query's best-match score is its value
SCORES = np.float32([0.5, 0.625, 0.75, 0.75, 0.875, 1.0])


def _one_item(**params):
    params = {"similarity_fn": "dot", "topk": 1, "outlier_label": -1, **params}
    return ImageRetriever("precomputed", **params).fit([[1.0]])


def clusters(rng, n_classes, per_class, d=32, spread=1.0, offset=0):
    """Gaussian clusters around random centres; labels offset..offset + n_classes - 1."""
    centres = rng.normal(size=(n_classes, d))
    X = np.repeat(centres, per_class, axis=0) + spread * rng.normal(size=(n_classes * per_class, d))
    return X.astype(np.float32), np.repeat(np.arange(offset, offset + n_classes), per_class)


def brute_impostors(X, labels):
    """Each row's best cosine similarity to a row of another label (numpy brute force)."""
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    similarities = (unit @ unit.T).astype(np.float32)
    similarities[labels[:, None] == labels[None, :]] = -np.inf
    return similarities.max(axis=1)


@pytest.mark.parametrize("threshold", [0.75, 0.7500001, 0.74])
def test_float_threshold_rejects_exactly_the_rows_below_it(threshold):
    retriever = _one_item(threshold=threshold)
    queries = SCORES[:, None]
    below = SCORES < np.float32(threshold)  # a best match equal to the threshold is accepted
    assert retriever.threshold_ == threshold
    np.testing.assert_array_equal(retriever.predict(queries), np.where(below, -1, 0))
    decision = retriever.decision_function(queries)
    np.testing.assert_allclose(decision, SCORES - np.float32(threshold), atol=1e-7)
    np.testing.assert_array_equal(decision >= 0, ~below)
    # the outlier label -1 is no class: rejected rows are all 0, the others 1 on class 0
    np.testing.assert_array_equal(retriever.predict_proba(queries)[:, 0], (~below).astype(float))


def test_threshold_is_compared_in_float32_on_the_similarity_scale():
    # 0.7 is not a float32: a query scoring float32(0.7) is accepted at threshold=0.7
    retriever = _one_item(threshold=0.7)
    assert retriever.predict(np.float32([[0.7]]))[0] == 0
    # euclidean: the similarity is -distance; at threshold -1, items farther than 1 are rejected
    euclid = ImageRetriever("precomputed", similarity_fn="euclidean", topk=1, threshold=-1.0, outlier_label=-1)
    euclid.fit([[0.0], [10.0]])
    np.testing.assert_array_equal(euclid.predict([[0.5], [1.0], [1.5], [9.5], [5.0]]), [0, 0, -1, 1, -1])


def test_closed_set_by_default():
    retriever = ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0], [0.0, 1.0]], ["a", "b"])
    assert retriever.threshold_ is None and retriever.outlier_label_ is None
    assert not hasattr(retriever, "decision_function")  # only with a threshold
    np.testing.assert_array_equal(retriever.predict([[-1.0, -1.0]]), ["a"])


def test_outlier_label_rules_as_radius_neighbors_classifier():
    X, y = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], ["a", "a", "b"]
    far = [[-1.0, -1.0], [1.0, 0.0]]
    params = {"topk": 1, "threshold": 0.9}
    # a string longer than the labels widens the result (scikit-learn would refuse it)
    retriever = ImageRetriever("precomputed", outlier_label="unknown", **params).fit(X, y)
    np.testing.assert_array_equal(retriever.predict(far), ["unknown", "a"])
    frequent = ImageRetriever("precomputed", outlier_label="most_frequent", **params).fit(X, y)
    assert frequent.outlier_label_ == "a"
    np.testing.assert_array_equal(frequent.predict(far), ["a", "a"])
    # an outlier label that is a class: its column is 1, as RadiusNeighborsClassifier
    np.testing.assert_array_equal(frequent.predict_proba(far), [[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(TypeError, match="dtype of outlier_label -1 is inconsistent with classes"):
        ImageRetriever("precomputed", outlier_label=-1, **params).fit(X, y)
    with pytest.raises(TypeError, match="dtype of outlier_label 'x' is inconsistent"):
        ImageRetriever("precomputed", outlier_label="x", **params).fit(X, [0, 0, 1])
    none = ImageRetriever("precomputed", **params).fit(X, y)
    for method in (none.predict, none.predict_proba):
        with pytest.raises(ValueError, match=r"No gallery match reaches threshold_ for the queries \[0\]; give"):
            method(far)
    np.testing.assert_array_equal(none.predict([[1.0, 0.0]]), ["a"])  # nothing rejected: no error


@pytest.mark.parametrize(
    "params", [{"threshold": "high"}, {"outlier_label": ["a"]}, {"false_match_rate": 1.5}, {"threshold": np.nan}]
)
def test_bad_parameters(params):
    with pytest.raises(InvalidParameterError):
        ImageRetriever("precomputed", **params).fit([[1.0], [2.0]])


def test_auto_needs_two_classes():
    with pytest.raises(ValueError, match="needs at least 2 classes .* the gallery has 1"):
        ImageRetriever("precomputed", threshold="auto").fit([[1.0], [2.0]], ["a", "a"])


@pytest.mark.parametrize("false_match_rate", [0.05, 0.2])
def test_auto_meets_false_match_rate_on_absent_classes(false_match_rate):
    """Over seeds, strangers (queries of classes never in the gallery) are accepted at the rate.

    Sampling error: the quantile of 800 calibration scores and the rate on 1,200 queries
    are binomial, inflated by the clustering of both by class (a design effect of about 1.5
    measured over 8 seeds); the mean of 5 seeds must lie within 3 such standard errors.
    """
    rate = false_match_rate
    observed, thresholds = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        X, y = clusters(rng, 100, 8)
        strangers, _ = clusters(rng, 400, 3, offset=1000)
        retriever = ImageRetriever("precomputed", threshold="auto", false_match_rate=rate, outlier_label=-1)
        retriever.fit(X, y)
        # the estimate is the threshold rule on leave-one-class-out best matches
        assert retriever.threshold_ == pytest.approx(_threshold_at_rate(brute_impostors(X, y), rate), abs=1e-6)
        observed.append(np.mean(retriever.predict(strangers) != -1))
        thresholds.append(retriever.threshold_)
    standard_error = 1.5 * np.sqrt(rate * (1 - rate) * (1 / 800 + 1 / 1200))
    assert abs(np.mean(observed) - rate) < 3 * standard_error / np.sqrt(5), observed
    assert all(abs(o - rate) < 5 * standard_error for o in observed), observed


def test_auto_with_large_classes_and_without_labels():
    rng = np.random.default_rng(3)
    X, y = clusters(rng, 3, 40, d=4)  # 40 items per class: the search deepens past 16
    labelled = ImageRetriever("precomputed", threshold="auto", false_match_rate=0.1).fit(X, y)
    assert labelled.threshold_ == pytest.approx(_threshold_at_rate(brute_impostors(X, y), 0.1), abs=1e-6)
    # without labels every item is its own class: its best match among the others
    items = np.arange(len(X))
    unlabelled = ImageRetriever("precomputed", threshold="auto", false_match_rate=0.1).fit(X)
    best_other = unlabelled.search(None, k=1)[0][:, 0]
    assert unlabelled.threshold_ == pytest.approx(_threshold_at_rate(brute_impostors(X, items), 0.1), abs=1e-6)
    assert unlabelled.threshold_ == _threshold_at_rate(best_other, 0.1)
    assert false_match_rate(best_other, unlabelled.threshold_) <= 0.1
    # find_duplicates(min_similarity="auto") leaves items out whatever the labels
    groups = [list(g) for g in labelled.find_duplicates(min_similarity="auto")]
    assert groups and groups == [list(g) for g in unlabelled.find_duplicates(min_similarity=unlabelled.threshold_)]


def test_find_duplicates_auto_finds_planted_duplicates():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    X[[10, 20, 30]] = X[[11, 21, 31]] + 1e-3 * rng.normal(size=(3, 16))
    # at most 5 % of the 200 items are linked to their best match: the 6 planted ones first
    groups = ImageRetriever("precomputed", false_match_rate=0.05).fit(X).find_duplicates(min_similarity="auto")
    pairs = [list(g) for g in groups if len(g) == 2 and g[0] in (10, 20, 30)]
    assert pairs == [[10, 11], [20, 21], [30, 31]]
    assert 6 <= sum(map(len, groups)) <= 10


def test_add_keeps_the_threshold():
    rng = np.random.default_rng(1)
    X, y = clusters(rng, 5, 6)
    for threshold in (0.3, "auto"):
        retriever = ImageRetriever("precomputed", threshold=threshold, outlier_label=-1).fit(X[:20], y[:20])
        before = retriever.threshold_
        retriever.add(X[20:], y[20:])
        assert retriever.threshold_ == before


def test_save_load_round_trips_threshold(tmp_path):
    rng = np.random.default_rng(2)
    X, y = clusters(rng, 6, 5)
    strangers, _ = clusters(rng, 4, 5, offset=50)
    model = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
        threshold="auto", outlier_label="most_frequent",
    )
    model.fit(X, y.astype(str))
    loaded = load(model.save(tmp_path / "model.skr"))
    assert loaded.threshold_ == model.threshold_ and loaded.outlier_label_ == model.outlier_label_
    assert loaded.get_params()["threshold"] == "auto"
    np.testing.assert_array_equal(loaded.predict(strangers), model.predict(strangers))
    np.testing.assert_array_equal(loaded.decision_function(strangers), model.decision_function(strangers))


def _open_set_data(seed=0):
    """A gallery of 20 classes; validation queries of 10 of them and of 10 absent classes."""
    rng = np.random.default_rng(seed)
    X, y = clusters(rng, 30, 8, d=8, spread=0.8)
    gallery = np.isin(y, np.arange(20)) & (np.arange(len(y)) % 8 < 5)
    known = np.isin(y, np.arange(10)) & (np.arange(len(y)) % 8 >= 5)
    unknown = y >= 20
    return X[gallery], y[gallery], X[known | unknown], y[known | unknown]


def test_open_set_scorers_equal_the_metric_functions():
    X, y, Q, yq = _open_set_data()
    retriever = ImageRetriever("precomputed", threshold="auto", outlier_label=-1, topk=1).fit(X, y)
    y_true, y_score = open_set_scores(retriever, Q, yq)
    # brute force: best cosine similarity of each query to the gallery
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    similarities = unit(Q) @ unit(X).T
    np.testing.assert_allclose(y_score, similarities.max(axis=1), atol=1e-6)
    np.testing.assert_array_equal(y_true, yq < 20)
    top1 = y[similarities.argmax(axis=1)]
    expected_dir = detection_identification_rate(yq, top1, y_score, gallery_labels=np.arange(20), false_alarm_rate=0.1)
    assert 0 < expected_dir < 1
    assert get_scorer("dir@0.1")(retriever, Q, yq) == expected_dir
    y_pred = np.where(y_score >= np.float32(retriever.threshold_), top1, -1)
    expected = open_set_accuracy(yq, y_pred, gallery_labels=np.arange(20), outlier_label=-1)
    assert 0 < expected < 1
    assert get_scorer("open_set_accuracy")(retriever, Q, yq) == expected
    report = retrieval_report(retriever, Q, yq, ["recall@1", "open_set_accuracy", "dir@0.1"], output_dict=True)
    assert report["open_set_accuracy"] == expected and report["dir@0.1"] == expected_dir
    # the Display takes the helper's output; its rates are det_curve's
    fpr, fnr, _ = det_curve(y_true, y_score, drop_intermediate=True)
    display = DetCurveDisplay.from_predictions(y_true, y_score, drop_intermediate=True)
    np.testing.assert_allclose(display.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(display.fnr, fnr, atol=1e-12)


def test_grid_search_chooses_false_match_rate_and_threshold():
    X, y, Q, yq = _open_set_data(1)
    X_all, y_all = np.vstack([X, Q]), np.concatenate([y, yq])
    split = PredefinedSplit(np.r_[np.full(len(X), -1), np.zeros(len(Q))])  # fit on X, score on Q
    grid = [{"threshold": ["auto"], "false_match_rate": [0.0, 0.1, 0.5]}, {"threshold": [None, 0.99]}]
    search = GridSearchCV(
        ImageRetriever("precomputed", topk=1, outlier_label=-1), grid, scoring=get_scorer("open_set_accuracy"),
        cv=split, refit=False,
    ).fit(X_all, y_all)
    scores = search.cv_results_["mean_test_score"]
    for params, score in zip(search.cv_results_["params"], scores):
        retriever = ImageRetriever("precomputed", topk=1, outlier_label=-1, **params).fit(X, y)
        expected = open_set_accuracy(yq, retriever.predict(Q), gallery_labels=np.unique(y), outlier_label=-1)
        assert score == expected
    # closed set is right on half the queries at most; rejecting nearly all on about half
    assert scores[3] <= 0.5 and scores.max() > max(scores[3], scores[4])
