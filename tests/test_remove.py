"""``remove``: the gallery without some items equals a gallery fitted without them."""

from pathlib import Path

import numpy as np
import pytest
from helpers import TinyEncoder
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import skretrieval
from skretrieval import ImageEncoder, ImageRetriever


def _gallery(seed=0, n=60, dim=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.choice(["a", "b", "c", "d"], size=n)


def _assert_same_retriever(got, expected, queries):
    np.testing.assert_array_equal(got.prototype_, expected.prototype_)
    np.testing.assert_array_equal(got.prototype_labels_, expected.prototype_labels_)
    np.testing.assert_array_equal(got.prototype_ids_, expected.prototype_ids_)
    np.testing.assert_array_equal(got.classes_, expected.classes_)
    assert got.outlier_label_ == expected.outlier_label_
    for a, b in zip(got.kneighbors(queries), expected.kneighbors(queries)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.kneighbors(), expected.kneighbors()):  # the gallery against itself
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.predict(queries), expected.predict(queries))
    np.testing.assert_array_equal(got.predict_proba(queries), expected.predict_proba(queries))


@pytest.mark.parametrize("similarity_fn", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("by", ["rows", "ids"])
def test_remove_equals_fit_without_the_items(similarity_fn, by):
    X, y = _gallery()
    y[[5, 17, 40]] = "e"  # a class that goes with the removed items
    queries = _gallery(1, n=15)[0]
    params = dict(similarity_fn=similarity_fn, topk=4, threshold=-1e9, outlier_label="most_frequent")
    removed = np.array([40, 5, 0, 17, 33, 59, 5])  # unsorted, repeated, the first and last rows
    retriever = ImageRetriever("precomputed", **params).fit(X, y)
    retriever.predict(queries)  # builds the resident search gallery, which remove must refresh
    assert "e" in retriever.classes_
    retriever.remove(**{by: removed})  # ids of a feature gallery are its rows
    keep = np.setdiff1d(np.arange(len(X)), removed)
    expected = ImageRetriever("precomputed", **params).fit(X[keep], y[keep])
    assert "e" not in retriever.classes_
    _assert_same_retriever(retriever, expected, queries)


def test_remove_by_paths_of_a_file_gallery(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(8):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(files[-1])
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    encoder = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu")
    retriever = ImageRetriever(encoder, topk=2).fit(files, labels)
    stats = retriever.prototype_file_stats_.copy()
    retriever.remove([files[6], Path(files[1]), files[7]])  # str or Path, as stored
    keep = [0, 2, 3, 4, 5]
    expected = ImageRetriever(encoder, topk=2).fit([files[i] for i in keep], labels[keep])
    _assert_same_retriever(retriever, expected, rng.random((3, 11)).astype(np.float32))
    np.testing.assert_array_equal(retriever.prototype_file_stats_, stats[keep])
    assert retriever.classes_.tolist() == [0, 1, 2]


def test_unlabelled_rows_are_numbered_anew_and_add_continues():
    X = np.eye(5, dtype=np.float32)
    retriever = ImageRetriever("precomputed", topk=1).fit(X)
    retriever.remove(ids=[1, 3])
    assert retriever.prototype_labels_.tolist() == [0, 1, 2]
    assert retriever.prototype_ids_.tolist() == [0, 1, 2]
    assert retriever.predict([[0, 0, 0, 0, 1.0]]).tolist() == [2]  # old row 4 is row 2 now
    retriever.add(X[[1]])  # without labels: the gallery is unlabelled still
    expected = ImageRetriever("precomputed", topk=1).fit(X[[0, 2, 4, 1]])
    _assert_same_retriever(retriever, expected, X)


def test_threshold_is_kept_as_add_keeps_it():
    X, y = _gallery()
    retriever = ImageRetriever("precomputed", threshold="auto").fit(X, y)
    threshold = retriever.threshold_
    retriever.remove(rows=np.arange(0, 60, 2))
    assert retriever.threshold_ == threshold


def test_unknown_ids_or_rows_name_them_and_remove_nothing():
    X, y = _gallery(n=6)
    retriever = ImageRetriever("precomputed", topk=1).fit(X, y)
    before = retriever.prototype_.copy()
    with pytest.raises(ValueError, match=r"ids \[9, 'x'\] are not in prototype_ids_ .*e\.g\. \[0, 1, 2\]"):
        retriever.remove([0, 9, "x"])
    with pytest.raises(ValueError, match=r"rows \[6, -1\] are not in the gallery, whose rows are 0 to 5"):
        retriever.remove(rows=[2, 6, -1])
    with pytest.raises(ValueError, match="integer rows"):
        retriever.remove(rows=[0.5])
    with pytest.raises(ValueError, match="exactly one of them; got both"):
        retriever.remove([0], rows=[0])
    with pytest.raises(ValueError, match="got neither"):
        retriever.remove()
    with pytest.raises(ValueError, match="all 6 items"):
        retriever.remove(rows=range(6))
    np.testing.assert_array_equal(retriever.prototype_, before)
    assert len(retriever.prototype_ids_) == len(retriever.prototype_labels_) == 6
    assert retriever.remove(ids=[]) is retriever and len(retriever.prototype_) == 6


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 30),
    similarity_fn=st.sampled_from(["cosine", "dot", "euclidean"]),
    labels=st.sampled_from(["none", "letters", "item numbers"]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_remove_then_search_equals_fit_property(n, similarity_fn, labels, seed, data):
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)  # small integers: ties and duplicates
    X[np.abs(X).sum(axis=1) == 0, 0] = 1  # no zero vector (its cosine is undefined)
    # "item numbers": labels given as y that equal the row numbers, which stay as given.
    y = {"none": None, "letters": rng.choice(np.array(["a", "b", "c"]), size=n), "item numbers": np.arange(n)}[labels]
    removed = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n - 2))
    keep = np.setdiff1d(np.arange(n), removed)
    topk = data.draw(st.integers(1, len(keep) - 1)) if len(keep) > 1 else 1
    queries = rng.integers(-2, 3, size=(4, 3)).astype(np.float32)
    params = dict(similarity_fn=similarity_fn, topk=topk)
    got = ImageRetriever("precomputed", **params).fit(X, y).remove(rows=removed)
    expected = ImageRetriever("precomputed", **params).fit(X[keep], None if y is None else y[keep])
    np.testing.assert_array_equal(got.prototype_labels_, expected.prototype_labels_)
    np.testing.assert_array_equal(got.classes_, expected.classes_)
    for a, b in zip(got.kneighbors(queries), expected.kneighbors(queries)):
        np.testing.assert_array_equal(a, b)
    if len(keep) > 1:
        for a, b in zip(got.kneighbors(None, topk), expected.kneighbors(None, topk)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.predict(queries), expected.predict(queries))
    np.testing.assert_array_equal(got.predict_proba(queries), expected.predict_proba(queries))


def test_labels_given_as_row_numbers_are_kept_by_remove_add_and_save(tmp_path):
    # Instance retrieval: every item its own label, 0 to n-1, given as y. Those are labels,
    # not row numbers, so remove never renumbers them (a renumbered 2 would name item 3).
    X = np.eye(5, dtype=np.float32)
    retriever = ImageRetriever("precomputed", topk=1).fit(X, np.arange(5))
    assert not retriever.labels_are_rows_
    retriever.remove(rows=[1])
    np.testing.assert_array_equal(retriever.prototype_labels_, [0, 2, 3, 4])
    np.testing.assert_array_equal(retriever.predict(X[[2, 4]]), [2, 4])
    with pytest.raises(ValueError, match="add needs y"):
        retriever.add(X[[1]])
    loaded = skretrieval.load(retriever.save(tmp_path / "ids.skr"))
    assert not loaded.labels_are_rows_
    np.testing.assert_array_equal(loaded.remove(rows=[0]).prototype_labels_, [2, 3, 4])


def test_row_labels_are_renumbered_and_continued():
    X = np.eye(5, dtype=np.float32)
    retriever = ImageRetriever("precomputed", topk=1).fit(X)
    assert retriever.labels_are_rows_
    retriever.remove(rows=[1]).add(X[[1]])
    assert retriever.labels_are_rows_
    np.testing.assert_array_equal(retriever.prototype_labels_, np.arange(5))
    retriever.add(X[[0]], [7])  # labels given: from now on the labels are labels
    assert not retriever.labels_are_rows_
    np.testing.assert_array_equal(retriever.remove(rows=[0]).prototype_labels_, [1, 2, 3, 4, 7])


def test_models_saved_before_labels_are_rows_take_row_numbers_for_rows(tmp_path):
    retriever = ImageRetriever("precomputed", topk=1).fit(np.eye(4, dtype=np.float32))
    del retriever.labels_are_rows_  # as a model file of skretrieval 0.x holds it
    loaded = skretrieval.load(retriever.save(tmp_path / "old.skr"))
    assert not hasattr(loaded, "labels_are_rows_")
    np.testing.assert_array_equal(loaded.remove(rows=[0]).prototype_labels_, [0, 1, 2])
    assert loaded.labels_are_rows_
