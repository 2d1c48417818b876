"""Shared fixtures: tiny encoders and small images, so the suite stays fast on 2 CPU cores."""

import os

import numpy as np
import pytest
from helpers import TinyEncoder


@pytest.fixture(autouse=True, scope="session")
def _artefact_cache(tmp_path_factory):
    """Exported encoders go to a temporary folder, never the user's cache (subprocesses too)."""
    previous = os.environ.get("SKRETRIEVAL_CACHE_DIR")
    os.environ["SKRETRIEVAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("skretrieval-cache"))
    yield
    if previous is None:
        os.environ.pop("SKRETRIEVAL_CACHE_DIR", None)
    else:
        os.environ["SKRETRIEVAL_CACHE_DIR"] = previous


@pytest.fixture
def tiny_encoder():
    return TinyEncoder()


@pytest.fixture
def colour_images():
    """24 images 12x12 RGB uint8 in three colour classes, with noise."""
    rng = np.random.default_rng(0)
    base = np.array([[220, 30, 30], [30, 200, 40], [40, 50, 210]])
    labels = np.repeat(np.arange(3), 8)
    images = base[labels][:, None, None, :] + rng.integers(-25, 25, size=(24, 12, 12, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture
def tiny_prep():
    """Preprocessing for the tiny encoder: 8x8 inputs, no crop."""
    return {"size": 8, "crop_pct": 1.0}


@pytest.fixture
def folders(colour_images, tmp_path):
    """gallery/<red|green|blue>/*.png (6 each) and queries/<colour>/*.png (2 each)."""
    from PIL import Image

    images, labels = colour_images
    names = np.array(["red", "green", "blue"])[labels]
    for n, (image, name) in enumerate(zip(images, names)):
        split = "queries" if n % 8 >= 6 else "gallery"
        folder = tmp_path / split / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{n:02d}.png")
    return tmp_path
