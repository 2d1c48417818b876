"""Every accepted kind of X gives the same features; everything else a clear error."""

import numpy as np
import pytest
import torch
from helpers import TinyEncoder
from PIL import Image
from sklearn.model_selection import GridSearchCV
from torch.utils.data import DataLoader, Dataset, TensorDataset

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.io import read_input

TINY_PREP = {"size": 8, "crop_pct": 1.0}


def _encoder(tiny_encoder):
    return ImageEncoder(tiny_encoder, preprocessing=TINY_PREP, device="cpu", batch_size=5).fit(
        np.zeros((1, 8, 8, 3))
    )


@pytest.fixture
def reference(tiny_encoder, colour_images):
    images, _ = colour_images
    encoder = _encoder(tiny_encoder)
    return encoder, encoder.transform(images)


def test_numpy_uint8_and_float_agree(reference, colour_images, tiny_encoder):
    encoder, expected = reference
    images, _ = colour_images
    # uint8 images are resized as uint8 (12 -> 8 px here): each resized pixel is rounded to
    # an integer, so the float path differs by rounding only.
    np.testing.assert_allclose(encoder.transform(images / 255.0), expected, atol=0.01)
    # Without resampling (already at the input size) nothing is rounded: they are equal.
    unresized = ImageEncoder(
        tiny_encoder, preprocessing={"size": 12, "crop_pct": 1.0}, device="cpu"
    ).fit(images[:1])
    np.testing.assert_allclose(unresized.transform(images / 255.0), unresized.transform(images), atol=1e-5)


def test_torch_nchw_agrees(reference, colour_images):
    encoder, expected = reference
    images, _ = colour_images
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    np.testing.assert_allclose(encoder.transform(tensor), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.transform(tensor.float() / 255), expected, atol=0.01)  # uint8 resize rounds


def test_pil_list_and_array_list_agree(reference, colour_images):
    encoder, expected = reference
    images, _ = colour_images
    np.testing.assert_allclose(encoder.transform([Image.fromarray(a) for a in images]), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.transform(list(images)), expected, atol=1e-5)


def test_png_files_directory_and_ids(tiny_encoder, colour_images, tmp_path):
    images, labels = colour_images
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / f"class{label}"
        folder.mkdir(exist_ok=True)
        paths.append(str(folder / f"{i:03d}.png"))
        Image.fromarray(image).save(paths[-1])
    retriever = ImageRetriever(
        ImageEncoder(tiny_encoder, preprocessing=TINY_PREP, device="cpu"),
    ).fit(paths, labels)
    np.testing.assert_array_equal(retriever.prototype_ids_, paths)
    encoder = _encoder(tiny_encoder)
    np.testing.assert_allclose(retriever.prototype_, encoder.transform(images), atol=1e-5)  # PNG is lossless
    from_dir = ImageRetriever(
        ImageEncoder(tiny_encoder, preprocessing=TINY_PREP, device="cpu"),
    ).fit(tmp_path)
    np.testing.assert_array_equal(from_dir.prototype_ids_, sorted(paths))
    single = retriever.transform(paths[3])
    np.testing.assert_allclose(single, retriever.prototype_[3:4], atol=1e-6)


def test_jpeg_files_and_grayscale(tiny_encoder, colour_images, tmp_path):
    images, _ = colour_images
    paths = []
    for i, image in enumerate(images[:6]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(image).save(paths[-1], quality=95)
    encoder = _encoder(tiny_encoder)
    jpeg = encoder.transform(paths)
    np.testing.assert_allclose(jpeg, encoder.transform(images[:6]), atol=0.05)  # lossy, but close
    gray = images[:6].mean(axis=3).astype(np.uint8)
    Image.fromarray(gray[0]).save(tmp_path / "gray.png")
    np.testing.assert_allclose(
        encoder.transform(str(tmp_path / "gray.png")), encoder.transform(gray[:1]), atol=1e-5
    )
    np.testing.assert_allclose(encoder.transform(gray[:1]), encoder.transform(gray[:1, :, :, None]), atol=1e-6)
    np.testing.assert_allclose(
        encoder.transform(gray[:1]), encoder.transform(np.repeat(gray[:1, :, :, None], 3, axis=3)), atol=1e-6
    )


class _PairDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), int(self.labels[i])


def test_dataset_and_dataloader_carry_labels(tiny_encoder, reference, colour_images):
    _, expected = reference
    images, labels = colour_images
    params = dict(preprocessing=TINY_PREP, device="cpu", batch_size=7)
    from_dataset = ImageRetriever(
        ImageEncoder(tiny_encoder, **params),
    ).fit(_PairDataset(images, labels))
    np.testing.assert_allclose(from_dataset.prototype_, expected, atol=1e-5)
    np.testing.assert_array_equal(from_dataset.prototype_labels_, labels)
    tensors = TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels))
    from_loader = ImageRetriever(
        ImageEncoder(tiny_encoder, **params),
    ).fit(DataLoader(tensors, batch_size=5))
    np.testing.assert_allclose(from_loader.prototype_, expected, atol=1e-5)
    np.testing.assert_array_equal(from_loader.prototype_labels_, labels)
    assert from_loader.score(images, labels) == 1.0


def test_reading_rules():
    assert type(read_input(np.zeros((3, 5)))).__name__ == "FeatureInput"
    assert type(read_input(torch.zeros(3, 5))).__name__ == "FeatureInput"
    assert type(read_input([[0.0, 1.0], [1.0, 0.0]])).__name__ == "FeatureInput"
    assert read_input(np.zeros((3, 5, 5))).n == 3
    assert read_input(np.zeros((3, 5, 5, 3))).n == 3
    assert read_input(torch.zeros(2, 3, 5, 5)).n == 2


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.full((2, 4, 4, 3), 16.0), ValueError, r"float images must lie in \[0, 1\].*divide"),
        (np.full((2, 4, 4, 3), 300, dtype=np.int64), ValueError, r"integer images must lie in \[0, 255\]"),
        (np.zeros((2, 4, 4, 5)), ValueError, "5 channels"),
        (torch.zeros(2, 5, 4, 4), ValueError, "5 channels"),
        (np.full((1, 4, 4, 3), np.nan), ValueError, "NaN"),
        (np.zeros((2, 4, 4, 3), dtype=bool), TypeError, "dtype"),
        ("/no/such/dir/or/file", FileNotFoundError, "does not exist"),
        ([object()], TypeError, "sequence of object"),
    ],
)
def test_bad_images(tiny_encoder, X, error, match):
    with pytest.raises(error, match=match):
        ImageRetriever(ImageEncoder(tiny_encoder, preprocessing=TINY_PREP, device="cpu")).fit(X)


def test_unreadable_image_names_the_file(tiny_encoder, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        ImageRetriever(
            ImageEncoder(tiny_encoder, preprocessing=TINY_PREP, device="cpu"),
        ).fit([str(bad)])


def test_empty_directory(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="contains no image files"):
        ImageRetriever(ImageEncoder(tiny_encoder, device="cpu")).fit(tmp_path)


def test_precomputed_refuses_images():
    with pytest.raises(ValueError, match="encoder='precomputed' expects X to be a 2-D feature matrix"):
        ImageRetriever("precomputed").fit(np.zeros((2, 4, 4, 3)))


def test_numpy_string_array_of_paths_is_image_files(tmp_path):
    """Regression: np.array(paths) (and prototype_ids_ slices) were taken as features."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu"),
    ).fit(paths)
    np.testing.assert_array_equal(model.transform(np.array(paths)), model.transform(paths))
    np.testing.assert_array_equal(model.kneighbors(model.prototype_ids_[:2], 1)[1], [[0], [1]])
    # an object array of paths keeps on_error
    (tmp_path / "bad.png").write_bytes(b"not an image")
    mixed = np.array([paths[0], str(tmp_path / "bad.png")], dtype=object)
    skipping = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu", on_error="skip"),
    ).fit(paths)
    assert np.isnan(skipping.transform(mixed)[1]).all()


def test_grid_search_over_a_numpy_array_of_paths(tmp_path):
    rng = np.random.default_rng(1)
    paths, labels = [], []
    for i in range(12):
        colour = np.array([[230, 20, 20], [20, 230, 20]])[i % 2]
        pixels = np.clip(colour + rng.integers(-20, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}.png")
        paths.append(str(tmp_path / f"{i:02d}.png"))
        labels.append(i % 2)
    search = GridSearchCV(
        ImageRetriever(ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu")),
        {"topk": [1, 3]}, cv=2, error_score="raise",
    ).fit(np.array(paths), labels)
    assert search.best_score_ == 1.0


def test_one_hwc_image_is_refused_with_the_fix():
    """Regression: a single (H, W, 3) image was read as H grayscale images."""
    image = np.zeros((20, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"one \(H, W, C\) image.*X\[None\]"):
        read_input(image)
    assert read_input(image[None]).n == 1


def test_uint16_arrays_are_16_bit_images(tmp_path):
    """Regression: uint16 arrays crashed inside torch; they read as the same 16-bit PNG does."""
    grey16 = np.random.default_rng(3).integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    encoder = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu").fit([str(tmp_path / "grey16.png")])
    from_file = encoder.transform([str(tmp_path / "grey16.png")])
    np.testing.assert_allclose(encoder.transform(grey16[None]), from_file, rtol=1e-6)
    np.testing.assert_allclose(encoder.transform([grey16]), from_file, rtol=1e-6)
    tensor = torch.from_numpy(grey16.astype(np.int32)).to(torch.uint16)[None, None]
    np.testing.assert_allclose(encoder.transform(tensor), from_file, rtol=1e-6)
