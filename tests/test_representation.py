"""The representation rule: what a query means with and without a head; nothing embedded twice.

Query methods take what ``fit`` takes (images, or encoder features that a head projects);
``transform`` returns the embedding; embeddings are searched with ``embedded=True``.
"""

import numpy as np
import pytest
from helpers import TinyEncoder

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.metrics import retrieval_report

HEADS = ["linear", "arcface", "triplet", "supcon"]


def _data(seed=0, n=60, d=6, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = (rng.normal(size=(n, d)) + 2.0 * np.eye(d)[y]).astype(np.float32)
    return X, y


def _brute_force(queries, gallery, k):
    """Cosine top-k by numpy: ties to the lower index."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q @ g.T
    order = np.lexsort((np.broadcast_to(np.arange(len(g)), scores.shape), -scores), axis=1)[:, :k]
    return order


@pytest.mark.parametrize("head", HEADS)
def test_queries_are_embedded_once_per_head(head):
    X, y = _data()
    Q, y_q = _data(1, n=30)
    model = ImageRetriever(
        "precomputed", head=head, embedding_dim=4, max_epochs=2, random_state=0, topk=3
    ).fit(X, y)
    embedded = model.transform(Q)
    assert embedded.shape == (30, 4)
    # transform is the head's projection of the features, once
    np.testing.assert_allclose(embedded, model.projection_.project(Q), rtol=1e-6)
    expected = _brute_force(embedded, model.prototype_, 5)
    np.testing.assert_array_equal(model.kneighbors(Q, 5, return_distance=False), expected)
    np.testing.assert_array_equal(
        model.kneighbors(embedded, 5, return_distance=False, embedded=True), expected
    )
    for a, b in zip(model.search(Q, 5), model.search(embedded, 5, embedded=True)):
        np.testing.assert_array_equal(a, b)
    # the report (the demo's and the CLI's route) searches once, the same either way
    metrics = ["recall@1", "map@5", "accuracy"]
    direct = retrieval_report(model, Q, y_q, metrics, output_dict=True)
    assert retrieval_report(model, embedded, y_q, metrics, output_dict=True, embedded=True) == direct
    assert direct["accuracy"] == model.score(Q, y_q)
    assert direct["recall@1"] == np.mean(model.prototype_labels_[expected[:, 0]] == y_q)


def test_image_encoder_with_head_embeds_images_once(colour_images, tiny_prep):
    images, labels = colour_images
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"),
        head="arcface", embedding_dim=5, max_epochs=2, random_state=0,
    ).fit(images, labels)
    embedded = model.transform(images[:6])
    assert embedded.shape == (6, 5)
    features = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"),
    ).fit(images).transform(images[:6])
    np.testing.assert_allclose(embedded, model.projection_.project(features), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        model.kneighbors(images[:6], 4, return_distance=False),
        model.kneighbors(embedded, 4, return_distance=False, embedded=True),
    )
    # a 2-D query is encoder features, as fit's X would be: projected once
    np.testing.assert_array_equal(
        model.kneighbors(features, 4, return_distance=False),
        model.kneighbors(images[:6], 4, return_distance=False),
    )


def test_without_a_head_embedded_changes_nothing():
    X, y = _data()
    model = ImageRetriever("precomputed").fit(X, y)
    for a, b in zip(model.kneighbors(X[:5], 3), model.kneighbors(X[:5], 3, embedded=True)):
        np.testing.assert_array_equal(a, b)


def test_embedded_takes_only_a_feature_matrix(colour_images, tiny_prep):
    images, labels = colour_images
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"),
    ).fit(images, labels)
    with pytest.raises(ValueError, match="embedded=True takes embeddings"):
        model.search(images[:2], 1, embedded=True)
    with pytest.raises(ValueError, match="embedded=True only for embeddings"):
        model.search(np.ones((2, 3)), 1, embedded=True)


def test_embedded_nan_rows_are_unreadable_queries():
    X, y = _data()
    model = ImageRetriever("precomputed", head="linear", embedding_dim=4, max_epochs=1, random_state=0).fit(X, y)
    embedded = model.transform(X[:3])
    embedded[1] = np.nan  # what transform returns for an unreadable image
    distances, indices = model.kneighbors(embedded, 2, embedded=True)
    assert (indices[1] == -1).all() and np.isinf(distances[1]).all()
    np.testing.assert_array_equal(indices[[0, 2]], model.kneighbors(X[[0, 2]], 2)[1])
