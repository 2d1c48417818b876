"""ImageRetriever(head=...): fine-tuning in fit, on tiny encoders and images."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from helpers import CallCounter, TinyEncoder
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval._sklearn_compat import InvalidParameterError

PREP = {"size": 8, "crop_pct": 1.0}


def _retriever(encoder=None, *, batch_size=8, **params):
    encoding = ImageEncoder(encoder or TinyEncoder(), preprocessing=PREP, device="cpu", batch_size=batch_size)
    return ImageRetriever(encoding, **{"max_epochs": 3, "random_state": 0, **params})


def test_frozen_backbone_is_encoded_once(colour_images):
    images, labels = colour_images
    counter = CallCounter()
    retriever = _retriever(head="arcface", fine_tune="head", max_epochs=6)
    retriever.set_params(encoder__encoder=TinyEncoder(counter))
    retriever.fit(images, labels)
    assert counter.calls == 3 and counter.images == 24  # 24 gallery images in batches of 8, once
    assert retriever.n_iter_ == 6

    counter.calls = 0
    retriever.set_params(fine_tune="all", max_epochs=2).fit(images, labels)
    assert counter.calls > 2 * 3  # full fine-tuning re-encodes every epoch


@pytest.mark.parametrize("fine_tune, batch_augments", [("head", "mixup"), ("all", ["mixup", "cutmix"])])
def test_same_seed_bit_identical_embeddings(colour_images, fine_tune, batch_augments):
    images, labels = colour_images
    params = dict(head="arcface", fine_tune=fine_tune, batch_augments=batch_augments, embedding_dim=6)
    first = _retriever(**params).fit(images, labels)
    second = _retriever(**params).fit(images, labels)
    other = _retriever(**params, random_state=1).fit(images, labels)
    np.testing.assert_array_equal(first.prototype_, second.prototype_)
    np.testing.assert_array_equal(first.transform(images[:5]), second.transform(images[:5]))
    assert first.loss_curve_ == second.loss_curve_
    assert not np.array_equal(first.prototype_, other.prototype_)


@pytest.mark.parametrize("head", ["linear", "arcface", "triplet", "supcon"])
@pytest.mark.parametrize("fine_tune", ["head", "all"])
def test_prototype_is_the_learned_embedding(colour_images, head, fine_tune):
    images, labels = colour_images
    retriever = _retriever(head=head, fine_tune=fine_tune, embedding_dim=5).fit(images, labels)
    assert retriever.prototype_.shape == (24, 5)
    np.testing.assert_allclose(retriever.transform(images), retriever.prototype_, rtol=1e-5, atol=1e-6)
    assert retriever.predict(images[:3]).shape == (3,)


def test_embedding_dim_none_keeps_the_encoder_width(colour_images):
    images, labels = colour_images
    retriever = _retriever(head="linear", max_epochs=1).fit(images, labels)
    assert retriever.prototype_.shape == (24, 11)


def test_early_stopping_stops_and_records_scores(colour_images):
    images, labels = colour_images
    retriever = _retriever(
        head="arcface", lr=1e-12, max_epochs=50, early_stopping=True, n_iter_no_change=2, validation_fraction=0.25
    ).fit(images, labels)
    assert retriever.n_iter_ == 3  # the first epoch sets the best score; two more without gain
    assert len(retriever.validation_scores_) == 3 == len(retriever.loss_curve_)
    assert retriever.best_validation_score_ == max(retriever.validation_scores_)
    assert _retriever(head="arcface").fit(images, labels).validation_scores_ is None


def test_warm_start_continues(colour_images):
    images, labels = colour_images
    retriever = _retriever(head="arcface", warm_start=True, max_epochs=2).fit(images, labels)
    first = list(retriever.loss_curve_)
    retriever.fit(images, labels)
    assert retriever.n_iter_ == 4 and retriever.loss_curve_[:2] == first
    assert retriever.loss_curve_[2] < first[0]
    with pytest.raises(ValueError, match="same classes"):
        retriever.fit(images, labels % 2)
    cold = clone(retriever).set_params(warm_start=False).fit(images, labels)
    assert cold.n_iter_ == 2


def test_verbose_prints_loss_per_epoch(colour_images, capsys):
    images, labels = colour_images
    _retriever(head="linear", max_epochs=2, verbose=1).fit(images, labels)
    out = capsys.readouterr().out
    assert "epoch   1  loss" in out and "epoch   2  loss" in out


def _bar_states(stderr: str, desc: str) -> list:
    """Each state tqdm drew of the bar named ``desc`` (a bar redraws after a carriage return)."""
    states = [part for part in stderr.replace("\n", "\r").split("\r") if part.startswith(desc)]
    assert states, f"no {desc!r} progress bar in stderr: {stderr!r}"
    return states


@pytest.mark.parametrize("fine_tune", ["head", "all"])
def test_verbose_bars_count_images_encoded_and_trained(colour_images, capsys, fine_tune):
    images, labels = colour_images
    _retriever(head="linear", fine_tune=fine_tune, max_epochs=2, verbose=1).fit(images, labels)
    err = capsys.readouterr().err
    # tqdm redraws at most every 0.1 s and clears a bar when done: check totals and units
    assert all("/24 [" in state and "img/s" in state for state in _bar_states(err, "encoding"))
    assert all("/48 [" in state and "img/s" in state for state in _bar_states(err, "training"))


def test_silent_by_default(colour_images, capsys):
    images, labels = colour_images
    _retriever(head="linear", max_epochs=2).fit(images, labels)
    assert capsys.readouterr() == ("", "")


def test_precomputed_features_train_a_head():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = rng.normal(size=(60, 6)) + 2 * np.eye(6)[labels]
    retriever = ImageRetriever("precomputed", head="supcon", embedding_dim=4, max_epochs=3, random_state=0)
    retriever.fit(features, labels)
    assert retriever.prototype_.shape == (60, 4) and retriever.n_features_in_ == 6
    assert retriever.transform(features[:2]).shape == (2, 4)
    with pytest.raises(ValueError, match="encoder='precomputed' has none"):
        retriever.set_params(fine_tune="all").fit(features, labels)


def test_user_module_head(colour_images):
    class CentreLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.centres = torch.nn.Parameter(torch.zeros(3, 4))

        def forward(self, embeddings, labels):
            return ((embeddings - self.centres[labels]) ** 2).sum(1).mean()

    images, labels = colour_images
    head = CentreLoss()
    retriever = _retriever(head=head, embedding_dim=4).fit(images, labels)
    assert torch.equal(head.centres, torch.zeros(3, 4))  # the user's module is copied
    assert isinstance(retriever.head_, CentreLoss) and retriever.loss_curve_[-1] < retriever.loss_curve_[0]
    with pytest.raises(ValueError, match="supports_mixed_labels"):
        _retriever(head=head, batch_augments="mixup").fit(images, labels)


def test_errors(colour_images):
    images, labels = colour_images
    with pytest.raises(ValueError, match="no y"):
        _retriever(head="arcface").fit(images)
    with pytest.raises(ValueError, match="at least 2 classes"):
        _retriever(head="arcface").fit(images, np.zeros(24))
    with pytest.raises(InvalidParameterError, match="arcface") as info:
        _retriever(head="arcfase").fit(images, labels)
    assert all(name in str(info.value) for name in ["linear", "triplet", "supcon"])
    with pytest.raises(ValueError, match="CutMix.*fine_tune='all'"):
        _retriever(head="arcface", batch_augments="cutmix").fit(images, labels)
    with pytest.raises(ValueError, match="cannot take"):
        _retriever(head="triplet", batch_augments="mixup").fit(images, labels)
    with pytest.raises(ValueError, match="not options of head='arcface'"):
        _retriever(head="arcface", head_params={"temperature": 0.1}).fit(images, labels)


def test_pickle_clone_and_refit_without_head(colour_images, tmp_path):
    images, labels = colour_images
    retriever = _retriever(head="arcface", fine_tune="all", embedding_dim=4).fit(images, labels)
    joblib.dump(retriever, tmp_path / "r.joblib")
    loaded = joblib.load(tmp_path / "r.joblib")
    np.testing.assert_array_equal(loaded.transform(images[:4]), retriever.transform(images[:4]))
    assert pickle.loads(pickle.dumps(retriever)).n_iter_ == 3
    fresh = clone(retriever)
    assert not hasattr(fresh, "projection_") and fresh.get_params()["head"] == "arcface"
    retriever.set_params(head=None).fit(images, labels)
    assert retriever.projection_ is None and not hasattr(retriever, "loss_curve_")
    assert retriever.prototype_.shape == (24, 11)


def test_grid_search_reaches_head_params():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    features = rng.normal(size=(40, 3)) + 3 * labels[:, None]
    grid = GridSearchCV(
        ImageRetriever("precomputed", head="arcface", max_epochs=2, random_state=0, topk=1),
        {"head_params": [{"margin": 0.2}, {"margin": 0.5, "scale": 16, "subcenters": 2}]},
        cv=2,
    ).fit(features, labels)
    assert grid.best_estimator_.head_.margin in (0.2, 0.5)
    assert grid.best_estimator_.head_.classifier.subcenters in (1, 2)


def test_pretrained_encoder_full_fine_tuning_keeps_batchnorm_statistics():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images[:48] / 16.0, digits.target[:48]
    retriever = ImageRetriever(
        ImageEncoder(preprocessing={"size": 32}, device="cpu", batch_size=16),
        head="arcface", fine_tune="all", max_epochs=1, embedding_dim=16, random_state=0,
    ).fit(images, labels)
    reference = ImageRetriever(
        ImageEncoder(preprocessing={"size": 32}, device="cpu"),
    ).fit(images[:2])
    trained = dict(retriever.encoder_.named_modules())
    changed = False
    for name, module in reference.encoder_.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.testing.assert_close(trained[name].running_mean, module.running_mean)
            changed |= not torch.equal(trained[name].weight, module.weight)
    assert changed  # affine weights trained, statistics kept
    assert not retriever.encoder_.training
    np.testing.assert_allclose(retriever.transform(images), retriever.prototype_, rtol=1e-4, atol=1e-5)


def test_encoder_with_spatial_output_is_refused_before_training(colour_images, tiny_prep):
    """Regression: a (N, C, H, W) output trained under fine_tune='all' (training flattened
    it), then fit failed in inference; one rule now refuses it before any training."""
    images, labels = colour_images
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)  # (N, 4, 8, 8): not features
    for fine_tune in ("all", "head"):
        model = ImageRetriever(
            ImageEncoder(conv, preprocessing=tiny_prep, device="cpu"),
            head="linear", fine_tune=fine_tune, max_epochs=1,
        )
        with pytest.raises(ValueError, match=r"returned shape \(\d+, 4, 8, 8\).*\(N, D\)"):
            model.fit(images, labels)
        assert not hasattr(model, "n_iter_")
    pooled = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1))  # (N, 4, 1, 1): flattened
    model = ImageRetriever(
        ImageEncoder(pooled, preprocessing=tiny_prep, device="cpu"),
        head="linear", fine_tune="all", max_epochs=1, random_state=0,
    ).fit(images, labels)
    assert model.prototype_.shape == (24, 4) and model.n_iter_ == 1
