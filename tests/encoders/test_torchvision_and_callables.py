"""Torchvision models by name, user modules and callables, and preprocessing choices."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from skretrieval import ImageEncoder, ImageRetriever, Preprocessing
from skretrieval.encoders import create_encoder, list_encoders


def test_list_encoders_has_default_and_torchvision():
    names = list_encoders()
    assert "efficientnet_lite0" in names
    assert {"resnet50", "vit_b_16"} <= set(names)


def test_torchvision_model_without_classifier_matches_manual_forward():
    built = create_encoder("resnet18", weights=None)
    assert isinstance(built.module.fc, torch.nn.Identity)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict({**built.module.state_dict(), "fc.weight": reference.fc.weight, "fc.bias": reference.fc.bias})
    reference.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    built.module.eval(), reference.eval()
    torch.testing.assert_close(built.module(x), reference(x))
    assert built.module(x).shape == (2, 512)


def test_torchvision_preprocessing_comes_from_the_weights():
    prep = create_encoder("resnet50", weights=None).preprocessing
    assert prep.size == (224, 224)
    assert prep.crop_pct == pytest.approx(224 / 232)  # ResNet50 DEFAULT: resize 232, crop 224
    assert prep.mean == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_weights_from_a_state_dict_file(tmp_path):
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    built = create_encoder("resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(built.module.conv1.weight, model.conv1.weight)


def test_offline_download_fails_fast_with_a_fix():
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    if cached.exists():
        pytest.skip("weights are cached on this machine")
    with pytest.raises(RuntimeError, match="cannot be downloaded.*To fix"):
        ImageRetriever(ImageEncoder("mobilenet_v3_small", device="cpu")).fit(np.zeros((1, 8, 8, 3)))


def test_unknown_weights_name_lists_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_encoder("resnet18", weights="BEST_EVER")


def test_plain_callable_encoder(colour_images):
    images, labels = colour_images

    def mean_colour(batch):
        return batch.mean(dim=(2, 3))

    retriever = ImageRetriever(
        ImageEncoder(mean_colour, preprocessing={"size": 12, "crop_pct": 1.0, "mean": (0, 0, 0), "std": (1, 1, 1)}, device="cpu"),
    ).fit(images, labels)
    np.testing.assert_allclose(retriever.prototype_, images.mean(axis=(1, 2)) / 255, atol=1e-6)
    assert retriever.score(images, labels) == 1.0


def test_preprocessing_dict_callable_and_none(tiny_encoder, colour_images):
    images, _ = colour_images
    base = ImageEncoder(tiny_encoder, device="cpu").fit(images)
    assert base.preprocessing_ == Preprocessing()
    small = ImageEncoder(tiny_encoder, preprocessing={"size": 6}, device="cpu").fit(images)
    assert small.preprocessing_.size == (6, 6) and small.preprocessing_.mean == Preprocessing().mean
    seen = []

    def record(batch):
        seen.append(tuple(batch.shape))
        return batch * 2 - 1

    ImageEncoder(tiny_encoder, preprocessing=record, device="cpu").fit(images).transform(images[:3])
    assert seen == [(3, 3, 12, 12)]
    raw = ImageEncoder(tiny_encoder, preprocessing="none", device="cpu").fit(images)
    tensor = torch.rand(2, 3, 5, 5)
    np.testing.assert_allclose(raw.transform(tensor), tiny_encoder.eval()(tensor).detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="Unknown preprocessing key"):
        ImageEncoder(tiny_encoder, preprocessing={"sise": 6}, device="cpu").fit(images)


def test_preprocessing_resize_policies():
    image = torch.zeros(1, 3, 20, 40)
    image[..., :, :10] = 1.0  # a white left quarter is cropped away by a centre crop
    crop = Preprocessing(size=10, crop_pct=1.0, mean=(0,), std=(1,))(image)
    stretch = Preprocessing(size=10, resize_mode="stretch", mean=(0,), std=(1,))(image)
    assert crop.shape == stretch.shape == (1, 3, 10, 10)
    assert crop[..., :, 0].max() < 0.5 < stretch[..., :, 0].min()
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(crop_pct=1.5)


def test_encoder_output_shape_is_checked():
    with pytest.raises(ValueError, match=r"returned shape \(2, 3, 4, 4\).*pooling"):
        ImageEncoder(torch.nn.Identity(), preprocessing={"size": 4}, device="cpu").fit_transform(
            np.zeros((2, 4, 4, 3))
        )
