"""Reduced-scale JPEG decoding and uint8 resizing: faster, and (nearly) the same pixels."""

import numpy as np
import pytest
import torch
from helpers import TinyEncoder
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skretrieval import ImageEncoder, Preprocessing
from skretrieval.io import load_image


def _photo(width, height, seed=0):
    """A smooth image (JPEG-friendly, like a photo) with some detail."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    channels = [np.sin(2 * np.pi * (a * x + b * y)) for a, b in rng.uniform(1, 4, (3, 2))]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))


def test_decode_size_keeps_what_the_resize_needs():
    crop = Preprocessing(size=224, crop_pct=0.875)  # shorter side resized to 256
    assert crop.decode_size(360, 480) == (256, 342)
    assert crop.decode_size(2000, 1000) == (512, 256)
    assert crop.decode_size(100, 150) == (100, 150)  # never asks for more than there is
    stretch = Preprocessing(size=(100, 50), resize_mode="stretch")
    assert stretch.decode_size(400, 300) == (100, 50)


def test_large_jpeg_is_decoded_reduced_and_close_to_full(tmp_path):
    path = tmp_path / "large.jpg"
    _photo(1600, 1200).save(path, quality=95)
    prep = Preprocessing(size=64)  # needs a shorter side of 73
    reduced = load_image(path, prep.decode_size)
    full = load_image(path)
    assert tuple(full.shape[1:]) == (1200, 1600)
    assert tuple(reduced.shape[1:]) == (150, 200)  # 1/8 scale: still >= 73
    difference = (prep(reduced[None]) - prep(full[None])).abs()
    assert difference.mean() < 0.02 and difference.max() < 0.3  # normalised units (std ~0.23)


def test_reduced_decoding_follows_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    _photo(1600, 800).save(path, quality=95, exif=exif)
    prep = Preprocessing(size=(400, 100), resize_mode="stretch")  # tall: needs height >= 400
    image = load_image(path, prep.decode_size)
    assert tuple(image.shape[1:]) == (400, 200)  # displayed 1600x800 -> 1/4 scale, not 1/8
    assert tuple(load_image(path).shape[1:]) == (1600, 800)


def test_png_files_are_never_reduced(tmp_path):
    path = tmp_path / "large.png"
    _photo(800, 600).save(path)
    assert tuple(load_image(path, Preprocessing(size=32).decode_size).shape[1:]) == (600, 800)


def test_encoding_a_folder_uses_reduced_decoding(tmp_path):
    for i in range(3):
        _photo(1200, 900, seed=i).save(tmp_path / f"{i}.jpg", quality=95)
    encoder = ImageEncoder(TinyEncoder(), preprocessing={"size": 32}, device="cpu").fit(str(tmp_path))
    from_files = encoder.transform(str(tmp_path))
    full = [load_image(tmp_path / f"{i}.jpg").permute(1, 2, 0).numpy() for i in range(3)]
    from_pixels = encoder.transform(full)
    np.testing.assert_allclose(from_files, from_pixels, atol=0.05)
    assert not np.array_equal(from_files, from_pixels)  # the files were not decoded in full


@settings(max_examples=25, deadline=None)
@given(
    # size >= 2: torch's float antialiased resize of a contiguous batch to a width of 1
    # repeats the first row (torch 2.14), so floats are no reference there.
    height=st.integers(2, 40), width=st.integers(2, 40), size=st.integers(2, 24),
    interpolation=st.sampled_from(["bilinear", "bicubic", "nearest"]),
    seed=st.integers(0, 2**16),
)
def test_uint8_resize_is_float_resize_rounded(height, width, size, interpolation, seed):
    prep = Preprocessing(size=size, mean=(0.0,), std=(1.0,), interpolation=interpolation)
    images = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (2, 3, height, width), dtype=np.uint8))
    as_uint8, as_float = prep(images), prep(images.float() / 255)
    assert as_uint8.dtype == torch.float32 and as_uint8.shape == as_float.shape
    if interpolation == "bicubic":  # resized as floats: torch's uint8 bicubic is another filter
        torch.testing.assert_close(as_uint8, as_float)
    else:  # fixed-point weights and rounding to integers: at most one level off
        assert (as_uint8 - as_float).abs().max() <= 1 / 255 + 1e-5


@pytest.mark.parametrize("channels", [1, 4])
def test_uint8_grey_and_alpha_become_rgb(channels):
    images = torch.randint(0, 256, (2, channels, 9, 9), dtype=torch.uint8)
    encoder = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu").fit(images)
    expected = encoder.transform(images.float() / 255)
    np.testing.assert_allclose(encoder.transform(images), expected, atol=0.02)
