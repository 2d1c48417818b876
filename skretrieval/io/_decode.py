"""Decoding image files and PIL images into tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def to_8bit(array: np.ndarray, top: float = 65535.0) -> np.ndarray:
    """Deep pixel values in [0, ``top``] scaled (rounded, not clipped) to uint8, as 16-bit files are."""
    return np.clip(np.asarray(array, dtype=np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image as a uint8 tensor (3, H, W), EXIF orientation applied, RGB."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, not clip
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return torch.from_numpy(np.repeat(to_8bit(array, top)[None], 3, axis=0))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # as PIL recommends, before dropping alpha
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def load_image(path, decode_size=None) -> torch.Tensor:
    """Decode one image file to a uint8 tensor (3, H, W).

    ``decode_size(height, width) -> (height, width)`` is the smallest size the image may be
    decoded at (e.g. :meth:`Preprocessing.decode_size`): a JPEG is then decoded at the
    largest reduced scale (1/2, 1/4, 1/8) that still covers it, which is much faster for
    photos larger than the encoder's input.

    Parameters
    ----------
    path : str or path-like
        An image file (any format PIL reads).
    decode_size : callable, default=None
        ``decode_size(height, width) -> (min_height, min_width)``; None decodes at full size.

    Returns
    -------
    image : torch.Tensor of shape (3, H, W), uint8
        RGB, EXIF orientation applied.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file cannot be read as an image (the message names it and the reason), or has
        more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skretrieval.io import load_image
    >>> path = Path(tempfile.mkdtemp()) / "photo.jpg"
    >>> Image.fromarray(np.zeros((600, 800, 3), np.uint8)).save(path)
    >>> load_image(path).shape
    torch.Size([3, 600, 800])
    >>> load_image(path, decode_size=lambda h, w: (100, 100)).shape  # decoded at 1/4 scale
    torch.Size([3, 150, 200])
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            _check_pixel_limit(image)
            if decode_size is not None and image.format == "JPEG":
                _draft(image, decode_size)
            return pil_to_tensor(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {str(path)!r} does not exist.") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"cannot read image {str(path)!r}: it has more pixels than PIL's decompression-bomb "
            f"limit PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS} pixels); if you trust the "
            "file, raise the limit (Python: PIL.Image.MAX_IMAGE_PIXELS = n; command line: "
            "--max-image-pixels n)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from exc


def _check_pixel_limit(image) -> None:
    """Refuse images above PIL's pixel limit, where PIL itself only warns up to twice it.

    Checked here, not by turning the warning into an error: ``warnings.catch_warnings``
    changes process-wide state and would race with the other decoding threads.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"Image size ({width * height} pixels) exceeds limit of {limit} pixels"
        )


# EXIF orientations that swap width and height (transposed, rotated by 90 or 270 degrees).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def _draft(image, decode_size) -> None:
    """Let the JPEG decoder scale down by 2, 4 or 8 as far as ``decode_size`` allows."""
    width, height = image.size
    swapped = image.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS  # as displayed after exif_transpose
    if swapped:
        width, height = height, width
    min_height, min_width = decode_size(height, width)
    requested = (min_height, min_width) if swapped else (min_width, min_height)
    image.draft(None, requested)  # PIL keeps both sides >= requested


def list_image_files(directory) -> list[str]:
    """Image files below ``directory`` (recursive), sorted, by their suffix.

    Hidden files and folders (a name starting with ``.``, such as ``.thumbs/`` or the
    ``._photo.jpg`` companions macOS writes) are left out.

    Parameters
    ----------
    directory : str or path-like
        The folder to search.

    Returns
    -------
    files : list of str
        Paths of the files whose suffix (any case) is one of ``IMAGE_SUFFIXES``; the order
        in which ``fit`` reads a folder.

    Raises
    ------
    ValueError
        The folder holds no image file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skretrieval.io import list_image_files
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["b/2.PNG", "a/1.jpg", "notes.txt", "a/._1.jpg", ".thumbs/1.jpg"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     (root / name).touch()
    >>> [Path(f).relative_to(root).as_posix() for f in list_image_files(root)]
    ['a/1.jpg', 'b/2.PNG']
    """
    root = Path(directory)
    files = sorted(
        str(p) for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(p.relative_to(root)) and p.is_file()
    )
    if not files:
        raise ValueError(
            f"directory {str(root)!r} contains no image files (looked for {', '.join(IMAGE_SUFFIXES)})."
        )
    return files


def _is_hidden(relative: Path) -> bool:
    """A dot-file, or inside a dot-folder, below the folder listed (the folder itself may be one)."""
    return any(part.startswith(".") for part in relative.parts)


def list_labelled_images(directory) -> tuple[list[str], np.ndarray]:
    """Image files below ``directory`` and their labels: the first folder under it.

    The layout of torchvision's ``ImageFolder``: ``directory/cat/x.jpg`` and
    ``directory/cat/kittens/y.jpg`` are both of class ``"cat"``. The files are those of
    :func:`list_image_files`, in its order; this is how ``skretrieval index
    --labels-from-folders`` labels a gallery.

    Parameters
    ----------
    directory : str or path-like
        The folder holding one sub-folder per class.

    Returns
    -------
    files : list of str
        Paths of the image files, sorted.
    labels : ndarray of str of shape (n_files,)
        The name of the class folder of each file.

    Raises
    ------
    ValueError
        The folder holds no image file, or image files directly inside it (they have no
        class folder).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skretrieval.io import list_labelled_images
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["cat/1.jpg", "cat/kittens/2.jpg", "dog/3.png"]:
    ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
    ...     (root / name).touch()
    >>> files, labels = list_labelled_images(root)
    >>> labels
    array(['cat', 'cat', 'dog'], dtype='<U3')
    """
    root = Path(directory)
    files = list_image_files(root)
    parts = [Path(f).relative_to(root).parts for f in files]
    unlabelled = [f for f, p in zip(files, parts) if len(p) == 1]
    if unlabelled:
        shown = ", ".join(repr(Path(f).name) for f in unlabelled[:3])
        more = f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else ""
        raise ValueError(
            f"{len(unlabelled)} image file(s) lie directly in {str(root)!r} ({shown}{more}), outside "
            "any class folder; put each image in a folder named after its class (root/cat/x.jpg)."
        )
    return files, np.asarray([p[0] for p in parts])
