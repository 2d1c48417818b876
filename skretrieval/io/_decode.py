"""Decoding image files and PIL images into tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image as a uint8 tensor (3, H, W), EXIF orientation applied, RGB."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def load_image(path) -> torch.Tensor:
    """Decode one image file to a uint8 tensor (3, H, W).

    Raises a ``ValueError`` that names the file when it cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return pil_to_tensor(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {str(path)!r} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from exc


def list_image_files(directory) -> list[str]:
    """Image files below ``directory`` (recursive), sorted, by their suffix."""
    root = Path(directory)
    files = sorted(
        str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise ValueError(
            f"directory {str(root)!r} contains no image files (looked for {', '.join(IMAGE_SUFFIXES)})."
        )
    return files
