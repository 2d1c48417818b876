"""Unreadable and unusual image files: on_error="raise" / "skip" / "warn", aligned results."""

import warnings

import numpy as np
import pytest
from helpers import TinyEncoder
from PIL import Image

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.io import load_image


def _rgb(seed, size=(12, 10)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _good_files(folder):
    """Readable images of every unusual kind, name -> path."""
    folder.mkdir(exist_ok=True)
    files = {}
    _rgb(0).save(files.setdefault("plain.png", folder / "a_plain.png"))
    _rgb(1).convert("CMYK").save(files.setdefault("cmyk.jpg", folder / "b_cmyk.jpg"))
    grey16 = np.random.default_rng(2).integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(grey16).save(files.setdefault("grey16.png", folder / "c_grey16.png"))
    palette = _rgb(3).convert("P")
    palette.info["transparency"] = 0
    palette.save(files.setdefault("palette.png", folder / "d_palette.png"), transparency=0)
    _rgb(4).convert("RGBA").save(files.setdefault("rgba.png", folder / "e_rgba.png"))
    _rgb(5, (1, 1)).save(files.setdefault("tiny.png", folder / "f_tiny.png"))
    rotated = _rgb(6, (16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(files.setdefault("exif.jpg", folder / "g_exif.jpg"), exif=exif)
    _rgb(7).save(files.setdefault("tiff.tif", folder / "h_tiff.tif"))
    return files


def _bad_files(folder):
    """One unreadable file of every kind, path -> expected words in the reason."""
    folder.mkdir(exist_ok=True)
    bad = {}
    buffer = folder / "x_truncated.jpg"
    _rgb(8, (64, 64)).save(buffer, quality=95)
    buffer.write_bytes(buffer.read_bytes()[:300])
    bad[buffer] = "truncated|cannot read"
    (folder / "x_zero.jpg").write_bytes(b"")
    bad[folder / "x_zero.jpg"] = "cannot identify|cannot read"
    (folder / "x_text.jpg").write_text("this is not an image\n")
    bad[folder / "x_text.jpg"] = "cannot identify|cannot read"
    Image.new("1", (20000, 20000)).save(folder / "x_bomb.png")  # 1-bit: a small file
    bad[folder / "x_bomb.png"] = "decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS"
    return bad


def test_unusual_images_decode_to_rgb(tmp_path):
    files = _good_files(tmp_path)
    for name, path in files.items():
        image = load_image(path)
        assert image.dtype == np.uint8 or str(image.dtype) == "torch.uint8", name
        assert image.shape[0] == 3, name
    assert tuple(load_image(files["exif.jpg"]).shape[1:]) == (16, 8)  # EXIF rotation honoured
    assert tuple(load_image(files["tiny.png"]).shape) == (3, 1, 1)
    grey = load_image(files["grey16.png"])
    assert grey.max() > 200  # 16-bit scaled down, not clipped to 255
    np.testing.assert_array_equal(grey[0], grey[2])


@pytest.mark.parametrize("kind", range(4))
def test_raise_names_the_file_and_reason(tmp_path, kind):
    _good_files(tmp_path)
    path, reason = list(_bad_files(tmp_path / "bad").items())[kind]
    model = ImageRetriever(ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu"))
    with pytest.raises(ValueError, match=str(path.name)) as info:
        model.fit([*sorted(map(str, tmp_path.glob("*.*"))), str(path)])
    assert any(word in str(info.value) for word in reason.split("|"))


def test_skip_fit_keeps_everything_else_aligned(tmp_path):
    good = sorted(map(str, _good_files(tmp_path / "good").values()))
    bad = sorted(map(str, _bad_files(tmp_path / "bad")))
    mixed = [good[0], bad[0], *good[1:4], bad[1], bad[2], *good[4:], bad[3]]
    labels = [f"L{i}" for i in range(len(mixed))]
    params = {"preprocessing": {"size": 8}, "device": "cpu"}
    skipping = ImageRetriever(
        ImageEncoder(TinyEncoder(), on_error="skip", **params),
        topk=1,
    ).fit(mixed, labels)
    reference = ImageRetriever(
        ImageEncoder(TinyEncoder(), **params),
        topk=1,
    ).fit(good, [labels[mixed.index(g)] for g in good])
    assert [path for _, path, _ in skipping.skipped_] == [mixed[1], mixed[5], mixed[6], mixed[-1]]
    assert [index for index, _, _ in skipping.skipped_] == [1, 5, 6, len(mixed) - 1]
    assert list(skipping.prototype_ids_) == good
    np.testing.assert_array_equal(skipping.prototype_labels_, reference.prototype_labels_)
    np.testing.assert_array_equal(skipping.prototype_, reference.prototype_)

    # Queries stay aligned with X.
    features = skipping.transform(mixed)
    assert features.shape[0] == len(mixed)
    is_bad = np.array([m in bad for m in mixed])
    assert np.isnan(features[is_bad]).all() and np.isfinite(features[~is_bad]).all()
    distances, indices = skipping.kneighbors(mixed, n_neighbors=2)
    assert (indices[is_bad] == -1).all() and np.isinf(distances[is_bad]).all()
    np.testing.assert_array_equal(indices[~is_bad], reference.kneighbors(good, n_neighbors=2)[1])
    predictions = skipping.predict(mixed)
    assert [p is None for p in predictions] == list(is_bad)
    assert list(predictions[~is_bad]) == list(reference.predict(good))
    assert np.isnan(skipping.predict_proba(mixed)[is_bad]).all()
    only_bad = skipping.kneighbors(bad, n_neighbors=2)
    assert (only_bad[1] == -1).all() and np.isinf(only_bad[0]).all()
    assert list(skipping.predict(bad)) == [None] * len(bad)
    assert ImageEncoder(TinyEncoder(), on_error="skip", device="cpu").fit(mixed).transform(mixed).shape[0] == len(mixed)


def test_warn_reports_each_file(tmp_path):
    good = sorted(map(str, _good_files(tmp_path / "good").values()))
    bad = sorted(map(str, _bad_files(tmp_path / "bad")))
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), on_error="warn", preprocessing={"size": 8}, device="cpu"),
    )
    with pytest.warns(UserWarning, match="skipped 4 unreadable") as record:
        model.fit(good + bad)
    message = str(record[0].message)
    assert all(path in message for path in bad)


def test_directory_and_empty_gallery_after_skips(tmp_path):
    bad = _bad_files(tmp_path / "bad")
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), on_error="skip", preprocessing={"size": 8}, device="cpu"),
    )
    with pytest.raises(ValueError, match="all 4 image.*skipped"):
        model.fit(tmp_path / "bad")
    _good_files(tmp_path / "bad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(tmp_path / "bad")
    assert sorted(p for _, p, _ in model.skipped_) == sorted(map(str, bad))


def test_on_error_is_validated():
    with pytest.raises(ValueError, match="on_error"):
        ImageRetriever(ImageEncoder("precomputed", on_error="ignore")).fit(np.eye(3))


def test_add_leaves_unreadable_files_out(tmp_path):
    """Regression: add(on_error="skip") appended an all-NaN row, and later queries raised."""
    good = sorted(map(str, _good_files(tmp_path / "good").values()))
    bad = sorted(map(str, _bad_files(tmp_path / "bad")))
    params = {"preprocessing": {"size": 8}, "device": "cpu"}
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), on_error="skip", **params),
        topk=1,
    ).fit(good[:3], ["a", "b", "c"])
    added = [bad[0], good[3], bad[1], good[4]]
    model.add(added, ["x0", "d", "x1", "e"])
    reference = ImageRetriever(
        ImageEncoder(TinyEncoder(), **params),
        topk=1,
    ).fit(good[:5], ["a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(model.prototype_, reference.prototype_)
    assert np.isfinite(model.prototype_).all()
    assert list(model.prototype_labels_) == ["a", "b", "c", "d", "e"]
    assert list(model.prototype_ids_) == good[:5]
    assert [(i, p) for i, p, _ in model.skipped_] == [(0, bad[0]), (2, bad[1])]
    assert list(model.predict(good[:5])) == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(model.kneighbors(good, 2)[1], reference.kneighbors(good, 2)[1])


def test_fine_tune_all_follows_on_error(tmp_path):
    """Regression: fine_tune="all" read the images without on_error and raised on a bad file."""
    good = sorted(map(str, _good_files(tmp_path / "good").values()))
    bad = sorted(map(str, _bad_files(tmp_path / "bad")))
    X = [good[0], bad[0], good[1], good[2], bad[1], good[3]]
    y = [0, 9, 1, 0, 9, 1]
    encoding = dict(preprocessing={"size": 8}, device="cpu", batch_size=2)
    params = dict(head="linear", fine_tune="all", max_epochs=1, random_state=0)
    with pytest.raises(ValueError, match="cannot|truncated"):
        ImageRetriever(ImageEncoder(TinyEncoder(), **encoding), **params).fit(X, y)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        warning = ImageEncoder(TinyEncoder(), on_error="warn", **encoding)
        model = ImageRetriever(warning, **params).fit(X, y)
    reference = ImageRetriever(ImageEncoder(TinyEncoder(), **encoding), **params).fit(good[:4], [0, 1, 0, 1])
    assert list(model.prototype_ids_) == good[:4]
    np.testing.assert_allclose(model.prototype_, reference.prototype_, rtol=1e-5, atol=1e-6)
