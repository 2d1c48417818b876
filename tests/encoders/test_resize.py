"""The preprocessing resizes without torchvision, pixel for pixel as torchvision's v2 functions do.

The feature cache and every encoder's inputs depend on these pixels, so the reference is the
implementation they replaced: ``torchvision.transforms.v2.functional`` resize (antialiased),
center_crop and normalize, called as ``Preprocessing.__call__`` called them.
"""

import subprocess
import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as TF

from skretrieval import Preprocessing
from skretrieval._preprocessing import center_crop, resize, to_uint8


def torchvision_preprocessing(prep: Preprocessing, images: torch.Tensor) -> torch.Tensor:
    """``Preprocessing.__call__`` as it was written with torchvision (on a batch: torch's
    uint8 kernel fails on a single contiguous image resized to 1 x 1)."""
    if images.ndim == 3:
        return torchvision_preprocessing(prep, images[None])[0]
    mode = TF.InterpolationMode(prep.interpolation)
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    if prep.interpolation == "bicubic" or prep._enlarges(*images.shape[-2:]):
        images = images.float().div_(255.0)
    elif images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    if prep.resize_mode == "stretch":
        images = TF.resize(images, list(prep.size), interpolation=mode, antialias=True)
    else:
        images = TF.resize(images, [prep._shorter_side()], interpolation=mode, antialias=True)
        images = TF.center_crop(images, list(prep.size))
    if not images.is_floating_point():
        images = images.float().div_(255.0)
    return TF.normalize(images, list(prep.mean), list(prep.std))


sides = st.integers(1, 70)


@settings(max_examples=80, deadline=None)
@given(
    height=sides,
    width=sides,
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    crop_pct=st.sampled_from([1.0, 0.875, 0.5]),
    resize_mode=st.sampled_from(["crop", "stretch"]),
    interpolation=st.sampled_from(["bilinear", "bicubic", "nearest"]),
    batch=st.sampled_from([None, 1, 3]),
    as_float=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_preprocessing_equals_torchvision(height, width, size, crop_pct, resize_mode, interpolation, batch, as_float, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = (3, height, width) if batch is None else (batch, 3, height, width)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    if as_float:
        images = images.float() / 255.0
    prep = Preprocessing(size=size, crop_pct=crop_pct, resize_mode=resize_mode, interpolation=interpolation)
    expected = torchvision_preprocessing(prep, images)
    got = prep(images)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(
    height=sides,
    width=sides,
    size=st.tuples(st.integers(1, 90), st.integers(1, 90)),
    dtype=st.sampled_from([torch.uint8, torch.float32]),
)
def test_center_crop_pads_and_crops_as_torchvision(height, width, size, dtype):
    images = torch.arange(3 * height * width).reshape(3, height, width).to(dtype)
    assert torch.equal(center_crop(images, size), TF.center_crop(images, list(size)))


def test_resize_keeps_an_image_of_the_target_size_and_empty_batches():
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    assert resize(image, (5, 7), "bilinear") is image
    empty = torch.empty(0, 3, 5, 7)
    assert resize(empty, (2, 3), "bilinear").shape == (0, 3, 2, 3)


def test_preprocessing_does_not_import_torchvision():
    script = (
        "import sys, torch\n"
        "from skretrieval import Preprocessing\n"
        "Preprocessing(size=16)(torch.randint(0, 256, (2, 3, 40, 30), dtype=torch.uint8))\n"
        "Preprocessing(size=64, interpolation='bicubic')(torch.rand(1, 3, 8, 8))\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
