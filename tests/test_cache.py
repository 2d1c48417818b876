"""memory=: each distinct image is encoded once across folds, clones and processes."""

import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from helpers import CallCounter, TinyEncoder
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import skretrieval._encoder as encoder_module
from skretrieval import ImageEncoder, ImageRetriever
from skretrieval._cache import FeatureCache, encoder_fingerprint


def test_grid_search_encodes_each_image_once(tmp_path, tiny_prep, colour_images):
    images, labels = colour_images
    counter = CallCounter()
    retriever = ImageRetriever(
        ImageEncoder(TinyEncoder(counter), preprocessing=tiny_prep, memory=tmp_path, batch_size=4, device="cpu"),
    )
    grid = GridSearchCV(retriever, {"similarity_fn": ["cosine", "dot"], "topk": [1, 3]}, cv=3)
    grid.fit(images, labels)
    assert counter.images == len(images)  # 4 candidates x 3 folds x (fit + score) + refit
    uncached = clone(retriever).set_params(encoder__memory=None)
    np.testing.assert_array_equal(grid.best_estimator_.prototype_, uncached.fit(images, labels).prototype_)


def test_cached_features_equal_fresh_ones(tmp_path, tiny_prep, colour_images):
    images, _ = colour_images
    fresh = ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu").fit(images).transform(images)
    cached = ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, memory=joblib.Memory(tmp_path), device="cpu")
    np.testing.assert_array_equal(cached.fit(images).transform(images), fresh)
    np.testing.assert_array_equal(cached.transform(images), fresh)  # from the cache this time


def _count_encoded(tmp_path, images, **params):
    counter = CallCounter()
    encoder = TinyEncoder(counter)
    if "state" in params:
        encoder.conv.weight.data += params.pop("state")
    ImageEncoder(encoder, memory=tmp_path, device="cpu", **params).fit(images).transform(images)
    return counter.images


def test_anything_that_changes_features_misses(tmp_path, colour_images):
    images, _ = colour_images
    images = images[:5]
    assert _count_encoded(tmp_path, images, preprocessing={"size": 8}) == 5
    assert _count_encoded(tmp_path, images, preprocessing={"size": 8}) == 0  # a hit
    assert _count_encoded(tmp_path, images, preprocessing={"size": 6}) == 5  # preprocessing
    assert _count_encoded(tmp_path, images, preprocessing={"size": 8}, state=0.1) == 5  # weights
    assert _count_encoded(tmp_path, images[:, ::-1], preprocessing={"size": 8}) == 5  # pixels


class OtherEncoder(TinyEncoder):
    pass


def test_fingerprint_depends_on_class_and_not_on_copies():
    encoder = TinyEncoder()
    prep = "prep"
    assert encoder_fingerprint(encoder, prep) == encoder_fingerprint(clone(ImageEncoder(encoder)).encoder, prep)
    assert encoder_fingerprint(encoder, prep) != encoder_fingerprint(OtherEncoder(), prep)
    batchnorm = torch.nn.BatchNorm2d(3)  # holds a 0-d num_batches_tracked tensor
    before = encoder_fingerprint(batchnorm, prep)
    batchnorm.running_mean += 1
    assert encoder_fingerprint(batchnorm, prep) != before


def test_plain_callables_need_a_cache_key(tmp_path, colour_images):
    images, _ = colour_images
    calls = []

    def mean_colour(batch):
        calls.append(len(batch))
        return batch.mean(dim=(2, 3))

    for _ in range(2):
        ImageEncoder(mean_colour, preprocessing={"size": 4}, memory=tmp_path, device="cpu").fit_transform(images)
    assert sum(calls) == 2 * len(images)  # never cached without a key
    calls.clear()
    for key in ("v1", "v1", "v2"):
        ImageEncoder(
            mean_colour, preprocessing={"size": 4}, memory=tmp_path, cache_key=key, device="cpu"
        ).fit_transform(images)
    assert sum(calls) == 2 * len(images)  # v1 once, v2 once


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from skretrieval._cache import FeatureCache
    cache = FeatureCache(sys.argv[1], "shared")
    keys = [f"{i:040x}" for i in range(200)]
    for round in range(5):
        cache.put_many(keys, np.arange(200 * 64, dtype=np.float32).reshape(200, 64) + round * 0)
        found = cache.get_many(keys)
        assert all(f is not None and f.shape == (64,) for f in found), "corrupt entry"
        assert all(np.array_equal(f, np.arange(64) + 64 * i) for i, f in enumerate(found))
    print("ok")
    """
)


def test_two_processes_share_a_cache_directory(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs == ["ok", "ok"]
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written file left behind
    found = FeatureCache(tmp_path, "shared").get_many([f"{i:040x}" for i in range(200)])
    np.testing.assert_array_equal(np.stack(found), np.arange(200 * 64).reshape(200, 64))


def test_unreadable_entry_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path, "fp")
    cache.put_many(["ab" * 20], np.ones((1, 3)))
    next(tmp_path.rglob("*.npy")).write_bytes(b"garbage")
    assert cache.get_many(["ab" * 20]) == [None]


@pytest.mark.parametrize("memory", [None, "str"])
def test_memory_parameter_forms(tmp_path, memory, tiny_prep, colour_images):
    images, labels = colour_images
    value = None if memory is None else str(tmp_path)
    retriever = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, memory=value, device="cpu"),
    )
    assert retriever.fit(images, labels).score(images, labels) == 1.0
    assert torch.is_tensor(torch.as_tensor(retriever.prototype_))


def test_pipeline_with_an_encoder_step_encodes_each_image_once(tmp_path, tiny_prep, colour_images):
    from sklearn.pipeline import Pipeline

    images, labels = colour_images
    counter = CallCounter()
    pipe = Pipeline(
        [
            ("encode", ImageEncoder(TinyEncoder(counter), preprocessing=tiny_prep, memory=tmp_path / "features", device="cpu")),
            ("retrieve", ImageRetriever(ImageEncoder("precomputed", device="cpu"))),
        ],
        memory=str(tmp_path / "pipeline"),
    )
    grid = GridSearchCV(pipe, {"retrieve__topk": [1, 3], "retrieve__similarity_fn": ["cosine", "dot"]}, cv=3)
    grid.fit(images, labels)
    assert counter.images == len(images)
    assert grid.best_score_ == 1.0


def test_the_fingerprint_is_hashed_once_per_fit(tmp_path, tiny_prep, colour_images, monkeypatch):
    """Regression: every query with memory= hashed the whole state dict again."""
    images, labels = colour_images
    calls = []
    original = encoder_module.encoder_fingerprint
    monkeypatch.setattr(encoder_module, "encoder_fingerprint", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu", memory=tmp_path),
    ).fit(images, labels)
    assert len(calls) == 1
    for _ in range(3):
        model.predict(images[:4])
    assert len(calls) == 1
    with torch.no_grad():  # new weights, refitted: hashed again, and the cache misses
        model.encoder_.conv.weight.mul_(2)
    model.set_params(encoder__encoder=model.encoder_).fit(images, labels)
    assert len(calls) == 2
