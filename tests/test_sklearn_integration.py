"""The retriever inside scikit-learn: Pipeline, GridSearchCV, clone, joblib."""

import joblib
import numpy as np
import pytest
import torch
from helpers import CallCounter, TinyEncoder
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from skretrieval import ImageEncoder, ImageRetriever


def test_pipeline_encoder_pca_retriever(tiny_encoder, tiny_prep, colour_images):
    images, labels = colour_images
    pipe = make_pipeline(
        ImageEncoder(tiny_encoder, preprocessing=tiny_prep, device="cpu"),
        PCA(n_components=4, random_state=0),
        ImageRetriever(ImageEncoder("precomputed", device="cpu"), topk=3),
    )
    pipe.fit(images, labels)
    features = pipe[0].transform(images)
    np.testing.assert_allclose(pipe[-1].prototype_, pipe[1].transform(features), rtol=1e-4, atol=1e-5)
    assert pipe.score(images, labels) == 1.0
    np.testing.assert_array_equal(pipe.predict(images[::5]), labels[::5])


def test_grid_search_over_similarity_and_topk(tiny_prep, colour_images):
    images, labels = colour_images
    counter = CallCounter()
    retriever = ImageRetriever(
        ImageEncoder(TinyEncoder(counter), preprocessing=tiny_prep, device="cpu", batch_size=64),
    )
    grid = GridSearchCV(
        retriever, {"similarity_fn": ["cosine", "euclidean", "dot"], "topk": [1, 3, 15]}, cv=3
    )
    grid.fit(images, labels)
    assert len(grid.cv_results_["params"]) == 9
    # topk=15 exceeds the number of same-class items in a 16-image training fold for each
    # class (about 5), so the vote is dominated by other classes: the grid has a real optimum.
    assert grid.best_params_["topk"] in (1, 3)
    assert grid.best_score_ == 1.0
    assert grid.cv_results_["mean_test_score"].min() < 1.0
    # The counter is shared across GridSearchCV's clones: every fit and score encoded once.
    assert counter.calls == 9 * 3 * 2 + 1
    assert grid.best_estimator_.encoder_ is not retriever.encoder


def test_fit_never_mutates_the_users_module(tiny_prep, colour_images):
    images, labels = colour_images
    module = TinyEncoder()
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    retriever = ImageRetriever(
        ImageEncoder(module, preprocessing=tiny_prep, device="cpu"),
    ).fit(images, labels)
    assert module.training and not retriever.encoder_.training
    assert retriever.encoder_ is not module
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_clone_unfitted_and_fitted(tiny_encoder, tiny_prep, colour_images):
    images, labels = colour_images
    retriever = ImageRetriever(
        ImageEncoder(tiny_encoder, preprocessing=tiny_prep, device="cpu"),
        topk=3,
    )
    fitted = clone(retriever).fit(images, labels)
    for est in (retriever, fitted):
        copy = clone(est)
        assert copy.get_params()["topk"] == 3
        assert not hasattr(copy, "prototype_")
        assert copy.encoder is not est.encoder  # deep-copied parameter


def test_joblib_round_trip(tmp_path, tiny_encoder, tiny_prep, colour_images):
    images, labels = colour_images
    retriever = ImageRetriever(
        ImageEncoder(tiny_encoder, preprocessing=tiny_prep, device="cpu"),
    ).fit(images, labels)
    joblib.dump(retriever, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    for a, b in zip(retriever.kneighbors(images[:5]), loaded.kneighbors(images[:5])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.transform(images), retriever.transform(images))


def test_model_fitted_on_gpu_loads_on_cpu(tmp_path, tiny_encoder, tiny_prep, colour_images):
    if torch.cuda.is_available():
        pytest.skip("simulates a CPU-only machine")
    images, labels = colour_images
    retriever = ImageRetriever(
        ImageEncoder(tiny_encoder, preprocessing=tiny_prep, device="cpu"),
    ).fit(images, labels)
    expected = retriever.kneighbors(images[:4])
    retriever.device_ = torch.device("cuda")  # as recorded by a fit on a GPU machine
    joblib.dump(retriever, tmp_path / "gpu.joblib")
    loaded = joblib.load(tmp_path / "gpu.joblib")
    assert loaded.device_ == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in loaded.encoder_.parameters())
    for a, b in zip(expected, loaded.kneighbors(images[:4])):
        np.testing.assert_array_equal(a, b)
