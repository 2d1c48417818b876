"""Metric functions: hand-computed cases, published examples, sklearn references, properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score, top_k_accuracy_score

from skretrieval.metrics import (
    average_precision_at_k,
    map_at_r,
    mean_average_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    r_precision,
    recall_at_k,
)

# Every metric as f(form_kwargs, k) -> float, so properties can loop over all of them.
METRICS = {
    "recall": lambda kw, k: recall_at_k(**kw, k=k),
    "precision": lambda kw, k: precision_at_k(**kw, k=k),
    "map_ir": lambda kw, k: mean_average_precision_at_k(**kw, k=k),
    "map_integrate": lambda kw, k: mean_average_precision_at_k(**kw, k=k, mode="integrate"),
    "ndcg": lambda kw, k: ndcg_at_k(**kw, k=k),
    "map_at_r": lambda kw, k: map_at_r(**kw),
    "r_precision": lambda kw, k: r_precision(**kw),
}


def ranked_from_knn_labels(knn_labels, gallery_labels):
    """Gallery indices whose labels are ``knn_labels``, each item used once per row."""
    ranked = []
    for row in knn_labels:
        pools = {label: list(np.flatnonzero(gallery_labels == label)) for label in set(row)}
        ranked.append([pools[label].pop(0) for label in row])
    return np.array(ranked)


# --------------------------------------------------------------------------------------------
# Hand-computed cases
#
# One query, gallery of 6 with y_score strictly decreasing, so the ranking is the gallery
# order; relevant items at ranks 1, 3, 4 (n_relevant = R = 3):
#     rel   = 1 0 1 1 0 0
#     P(i)  = 1/1 1/2 2/3 3/4 3/5 3/6
DENSE_ONE = {"y_true": [[1, 0, 1, 1, 0, 0]], "y_score": [[6, 5, 4, 3, 2, 1]]}


def test_recall_hand_computed():
    # k=1: rank 1 relevant -> 1; a second query with its only relevant item at rank 3
    y_true = [[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    y_score = [[6, 5, 4, 3, 2, 1]] * 2
    # k=1: (1 + 0) / 2; k=2: (1 + 0) / 2; k=3: (1 + 1) / 2
    assert recall_at_k(y_true, y_score, k=(1, 2, 3)) == [0.5, 0.5, 1.0]
    assert recall_at_k(y_true, y_score, k=[3, 1]) == [1.0, 0.5]
    assert recall_at_k(y_true, y_score, k=1) == 0.5


def test_precision_hand_computed():
    # k=1: 1/1; k=2: 1/2; k=4: 3/4; k=6: 3/6
    for k, expected in [(1, 1.0), (2, 0.5), (4, 0.75), (6, 0.5)]:
        assert precision_at_k(**DENSE_ONE, k=k) == pytest.approx(expected)
    # k=8 > gallery of 6: still divided by k, 3/8
    assert precision_at_k(**DENSE_ONE, k=8) == pytest.approx(3 / 8)


def test_average_precision_ir_hand_computed():
    # IR: sum of P(i) at relevant ranks within k, over n_relevant = 3
    # k=1: 1/3; k=3: (1 + 2/3)/3; k=6: (1 + 2/3 + 3/4)/3
    for k, expected in [(1, 1 / 3), (3, (1 + 2 / 3) / 3), (6, (1 + 2 / 3 + 3 / 4) / 3)]:
        assert average_precision_at_k(**DENSE_ONE, k=k) == pytest.approx([expected])


def test_average_precision_integrate_hand_computed():
    # integrate: the j-th relevant item at rank r adds ((j-1)/(r-1) [1 if r=1] + j/r) / 2
    # rank 1 (j=1): (1 + 1)/2 = 1
    # rank 3 (j=2): (1/2 + 2/3)/2 = 7/12
    # rank 4 (j=3): (2/3 + 3/4)/2 = 17/24
    expected = (1 + 7 / 12 + 17 / 24) / 3
    got = average_precision_at_k(**DENSE_ONE, k=6, mode="integrate")
    assert got == pytest.approx([expected])
    # a first relevant item at rank 2 (j=1): (0/1 + 1/2)/2 = 1/4; n_relevant = 1
    got = average_precision_at_k([[0, 1, 0]], [[3, 2, 1]], k=3, mode="integrate")
    assert got == pytest.approx([0.25])


def test_map_at_r_and_r_precision_hand_computed():
    # R = 3: first 3 ranks rel = 1 0 1
    # r_precision = 2/3; MAP@R = (1/1 + 2/3) / 3 (rank 4 is beyond R)
    assert r_precision(**DENSE_ONE) == pytest.approx(2 / 3)
    assert map_at_r(**DENSE_ONE) == pytest.approx((1 + 2 / 3) / 3)


def test_ndcg_hand_computed():
    # DCG = 1/log2(2) + 1/log2(4) + 1/log2(5) (ranks 1, 3, 4)
    # IDCG (3 relevant) = 1/log2(2) + 1/log2(3) + 1/log2(4)
    dcg = 1 + 1 / 2 + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / 2
    assert ndcg_at_k(**DENSE_ONE, k=6) == pytest.approx(dcg / idcg)
    # k=2: DCG = 1; IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(**DENSE_ONE, k=2) == pytest.approx(1 / (1 + 1 / np.log2(3)))


def test_ties_rank_the_lower_gallery_index_first():
    # all scores tied: the ranking is the gallery order, so item 0 (irrelevant) is first
    assert recall_at_k([[0, 1, 0]], [[0.5, 0.5, 0.5]], k=1) == 0.0
    assert recall_at_k([[1, 0, 0]], [[0.5, 0.5, 0.5]], k=1) == 1.0
    # a tie between items 1 and 2 only: item 1 ranks second
    assert precision_at_k([[0, 1, 0]], [[0.9, 0.5, 0.5]], k=2) == 0.5
    # long runs of ties (where an unstable sort reorders): every third item scores 1, only
    # item 21 is relevant; stable order 0, 3, ..., 18, 21 puts it at rank 8
    y_score = np.zeros((1, 200))
    y_score[0, ::3] = 1
    y_true = np.zeros((1, 200), dtype=bool)
    y_true[0, 21] = True
    assert recall_at_k(y_true, y_score, k=(7, 8)) == [0.0, 1.0]


def test_queries_without_relevant_items_score_zero():
    # query 0: relevant at rank 1; query 1: no relevant item at all -> 0 everywhere
    y_true = [[1, 0, 0], [0, 0, 0]]
    y_score = [[3, 2, 1], [3, 2, 1]]
    assert recall_at_k(y_true, y_score, k=3) == 0.5
    assert precision_at_k(y_true, y_score, k=1) == 0.5
    assert mean_average_precision_at_k(y_true, y_score, k=3) == 0.5
    assert mean_average_precision_at_k(y_true, y_score, k=3, mode="integrate") == 0.5
    assert ndcg_at_k(y_true, y_score, k=3) == 0.5
    assert map_at_r(y_true, y_score) == 0.5
    assert r_precision(y_true, y_score) == 0.5
    # label form: query label "z" is not in the gallery
    labels = {
        "query_labels": ["a", "z"],
        "gallery_labels": ["a", "b"],
        "ranked_indices": [[0, 1], [0, 1]],
    }
    assert map_at_r(**labels) == 0.5
    assert r_precision(**labels) == 0.5
    assert average_precision_at_k(**labels, k=2).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------
# Published examples


def test_mmpretrain_recall_example():
    # RetrievalRecall docstring: y_pred = [[0], [1], [2], [3]],
    # y_true = [[0, 1], [2], [1], [0, 3]], topk=1 -> 50.0 (percent)
    y_true = np.zeros((4, 4), dtype=bool)
    for query, relevant in enumerate([[0, 1], [2], [1], [0, 3]]):
        y_true[query, relevant] = True
    y_score = np.eye(4)  # query i ranks item i first
    assert recall_at_k(y_true, y_score, k=1) == 0.5


def test_mmpretrain_average_precision_examples():
    # RetrievalAveragePrecision docstring, index inputs: pred = range(100) for 3 queries,
    # targets [0, 3, 6, 8, 35], [1, 2, 54, 105], [2, 42, 205], topk=10 -> 29.246031746031747
    #   q0: ranks 1, 4, 7, 9 -> (1 + 2/4 + 3/7 + 4/9) / 5
    #   q1: ranks 2, 3       -> (1/2 + 2/3) / 4
    #   q2: rank 3           -> (1/3) / 3
    y_true = np.zeros((3, 206), dtype=int)
    for query, relevant in enumerate([[0, 3, 6, 8, 35], [1, 2, 54, 105], [2, 42, 205]]):
        y_true[query, relevant] = 1
    y_score = np.tile(-np.arange(206.0), (3, 1))
    expected = [(1 + 2 / 4 + 3 / 7 + 4 / 9) / 5, (1 / 2 + 2 / 3) / 4, (1 / 3) / 3]
    assert average_precision_at_k(y_true, y_score, k=10) == pytest.approx(expected)
    got = mean_average_precision_at_k(y_true, y_score, k=10)
    assert got == pytest.approx(29.246031746031747 / 100)

    # tensor inputs: scores linspace(0.95, 0.05, 10), target [1,0,1,0,0,1,0,0,1,1] twice
    # -> 62.222222222222214: ranks 1, 3, 6, 9, 10 -> (1 + 2/3 + 3/6 + 4/9 + 5/10) / 5
    y_true = [[1, 0, 1, 0, 0, 1, 0, 0, 1, 1]] * 2
    y_score = [np.linspace(0.95, 0.05, 10)] * 2
    got = mean_average_precision_at_k(y_true, y_score, k=10)
    assert got == pytest.approx(62.222222222222214 / 100)


def test_pytorch_metric_learning_accuracy_calculator_example():
    # tests/utils/test_calculate_accuracies.py (embeddings from different sources,
    # avg_of_avgs=False): query labels 1 1 2 3 4, label counts {1: 3, 2: 5, 3: 4, 4: 5}
    query_labels = np.array([1, 1, 2, 3, 4])
    knn_labels = np.array(
        [[0, 1, 1, 2, 2], [1, 0, 1, 1, 3], [4, 4, 4, 4, 2], [3, 1, 3, 1, 3], [0, 0, 4, 2, 2]]
    )
    gallery_labels = np.repeat([0, 1, 2, 3, 4], [2, 3, 5, 4, 5])
    ranked = ranked_from_knn_labels(knn_labels, gallery_labels)
    kw = {"query_labels": query_labels, "gallery_labels": gallery_labels, "ranked_indices": ranked}
    assert precision_at_k(**kw, k=1) == pytest.approx(0.4)
    assert r_precision(**kw) == pytest.approx(np.mean([2 / 3, 2 / 3, 1 / 5, 2 / 4, 1 / 5]))
    expected = [(1 / 2 + 2 / 3) / 3, (1 + 2 / 3) / 3, (1 / 5) / 5, (1 + 2 / 3) / 4, (1 / 3) / 5]
    assert map_at_r(**kw) == pytest.approx(np.mean(expected))


# --------------------------------------------------------------------------------------------
# scikit-learn references


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 5])
def test_recall_matches_top_k_accuracy_score(seed, k):
    # each gallery item is its own class, one relevant item per query
    rng = np.random.default_rng(seed)
    n_queries, n_gallery = 30, 7
    labels = rng.integers(0, n_gallery, n_queries)
    y_score = rng.normal(size=(n_queries, n_gallery))
    expected = top_k_accuracy_score(labels, y_score, k=k, labels=np.arange(n_gallery))
    assert recall_at_k(np.eye(n_gallery)[labels], y_score, k=k) == pytest.approx(expected)
    ranked = np.argsort(-y_score, axis=1)
    got = recall_at_k(
        query_labels=labels, gallery_labels=np.arange(n_gallery), ranked_indices=ranked, k=k
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_ndcg_matches_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    y_true = rng.random((12, 10)) < 0.3  # some rows have no relevant item: both give 0
    y_score = rng.normal(size=(12, 10))  # continuous: no ties
    assert ndcg_at_k(y_true, y_score, k=k) == pytest.approx(ndcg_score(y_true, y_score, k=k))


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("k", [0, -1, 1.5, "3", True, None])
def test_invalid_k(k):
    with pytest.raises(ValueError, match=rf"k of precision_at_k must be a positive int; got {k!r}"):
        precision_at_k(**DENSE_ONE, k=k)


def test_invalid_k_in_sequence():
    with pytest.raises(ValueError, match="k of recall_at_k must be a positive int; got 0"):
        recall_at_k(**DENSE_ONE, k=(1, 0))
    with pytest.raises(ValueError, match="non-empty sequence"):
        recall_at_k(**DENSE_ONE, k=())


def test_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"y_true has shape \(1, 6\) but y_score has shape \(1, 5\)"
    ):
        recall_at_k([[1, 0, 1, 1, 0, 0]], [[5, 4, 3, 2, 1]], k=1)


def test_non_binary_y_true():
    with pytest.raises(ValueError, match=r"binary.*\[2, 3\].*y_true > 0"):
        ndcg_at_k([[0, 2, 3]], [[3, 2, 1]], k=2)


def test_both_or_neither_form():
    labels = {"query_labels": [0], "gallery_labels": [0, 1], "ranked_indices": [[0, 1]]}
    with pytest.raises(ValueError, match="got y_true, y_score, query_labels"):
        recall_at_k(**DENSE_ONE, **labels, k=1)
    with pytest.raises(ValueError, match="got none of them"):
        recall_at_k(k=1)
    with pytest.raises(ValueError, match=r"got query_labels, gallery_labels\."):
        recall_at_k(query_labels=[0], gallery_labels=[0, 1], k=1)
    with pytest.raises(ValueError, match=r"got y_true\."):
        recall_at_k([[1, 0]], k=1)


def test_invalid_mode():
    with pytest.raises(ValueError, match='mode must be "IR" or "integrate"; got \'ir\''):
        average_precision_at_k(**DENSE_ONE, k=1, mode="ir")


def test_label_form_needs_enough_columns():
    # label 0 has R = 3 items, but only 2 ranks are given
    kw = {"query_labels": [0], "gallery_labels": [0, 0, 0, 1], "ranked_indices": [[0, 1]]}
    with pytest.raises(
        ValueError,
        match=r"map_at_r needs the first 3 ranks \(the largest R.*only 2 column.*n_neighbors=3",
    ):
        map_at_r(**kw)
    with pytest.raises(ValueError, match=r"precision_at_k needs the first 3 ranks \(k\)"):
        precision_at_k(**kw, k=3)
    # k beyond the gallery: the whole gallery suffices
    kw["ranked_indices"] = [[0, 1, 2, 3]]
    assert precision_at_k(**kw, k=10) == pytest.approx(3 / 10)


def test_label_form_validation():
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\).*from 0 to 2"):
        recall_at_k(query_labels=[0], gallery_labels=[0, 1], ranked_indices=[[0, 2]], k=1)
    with pytest.raises(ValueError, match="2 rows but query_labels has 1"):
        recall_at_k(query_labels=[0], gallery_labels=[0, 1], ranked_indices=[[0], [1]], k=1)
    with pytest.raises(ValueError, match="integer gallery indices; got dtype float64"):
        recall_at_k(query_labels=[0], gallery_labels=[0, 1], ranked_indices=[[0.0]], k=1)


# --------------------------------------------------------------------------------------------
# Properties


@st.composite
def retrieval_problems(draw):
    """Random labels and tie-prone integer scores, in both input forms."""
    n_queries = draw(st.integers(1, 6))
    n_gallery = draw(st.integers(1, 8))
    n_labels = draw(st.integers(1, 4))
    ints = st.integers(0, n_labels - 1)
    query_labels = np.array(draw(st.lists(ints, min_size=n_queries, max_size=n_queries)))
    gallery_labels = np.array(draw(st.lists(ints, min_size=n_gallery, max_size=n_gallery)))
    scores = draw(
        st.lists(st.integers(-3, 3), min_size=n_queries * n_gallery, max_size=n_queries * n_gallery)
    )
    y_score = np.array(scores, dtype=float).reshape(n_queries, n_gallery)
    dense = {"y_true": query_labels[:, None] == gallery_labels[None, :], "y_score": y_score}
    labelled = {
        "query_labels": query_labels,
        "gallery_labels": gallery_labels,
        "ranked_indices": np.argsort(-y_score, axis=1, kind="stable"),
    }
    k = draw(st.integers(1, n_gallery + 2))
    return dense, labelled, k


@settings(max_examples=60, deadline=None)
@given(retrieval_problems())
def test_dense_form_equals_label_form(problem):
    dense, labelled, k = problem
    for name, metric in METRICS.items():
        assert metric(dense, k) == pytest.approx(metric(labelled, k)), name


@settings(max_examples=60, deadline=None)
@given(retrieval_problems())
def test_metrics_lie_in_unit_interval(problem):
    dense, _, k = problem
    for name, metric in METRICS.items():
        assert 0.0 <= metric(dense, k) <= 1.0 + 1e-12, name


@settings(max_examples=60, deadline=None)
@given(retrieval_problems())
def test_recall_is_monotone_in_k(problem):
    dense, _, _ = problem
    n_gallery = dense["y_score"].shape[1]
    recalls = recall_at_k(**dense, k=range(1, n_gallery + 2))
    assert all(a <= b for a, b in zip(recalls, recalls[1:]))


@settings(max_examples=60, deadline=None)
@given(retrieval_problems(), st.randoms(use_true_random=False))
def test_permuting_queries_keeps_the_mean(problem, random):
    dense, labelled, k = problem
    order = list(range(len(labelled["query_labels"])))
    random.shuffle(order)
    permuted = {
        "query_labels": labelled["query_labels"][order],
        "gallery_labels": labelled["gallery_labels"],
        "ranked_indices": labelled["ranked_indices"][order],
    }
    for name, metric in METRICS.items():
        assert metric(permuted, k) == pytest.approx(metric(labelled, k)), name
