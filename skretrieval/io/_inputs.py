"""Reading ``X``: every accepted input becomes features or a stream of image batches.

The rules, so that every reader agrees:

* a numeric 2-D array-like (numpy, torch, nested lists, sparse) is features (no encoding);
* a numpy 3-D ``(N, H, W)`` or 4-D ``(N, H, W, C)`` array is images, channels last (a 3-D
  array whose last axis has 3 or 4 entries looks like one ``(H, W, C)`` image and is refused:
  add the batch axis, ``X[None]``);
* ``uint16`` images are 16-bit (``[0, 65535]``) and are scaled to 8 bits as 16-bit PNG files are;
* a torch 3-D ``(N, H, W)`` or 4-D ``(N, C, H, W)`` tensor is images, channels first;
* a ``str``/``Path`` is a feature file (``.npy``, ``.npz``, ``.pt`` from ``dump_prototype``),
  an image file, or a directory of images (recursive, sorted);
* a sequence of ``str``/``Path`` (or a numpy array of strings) is image files; a sequence of PIL images or of single
  ``(H, W[, C])`` arrays is images;
* a torch ``Dataset`` or ``DataLoader`` yields images, or ``(image, label)`` pairs.

Float images must lie in [0, 1] and integer images in [0, 255]. Grayscale is replicated to
three channels and an alpha channel is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ._decode import list_image_files, load_image, pil_to_tensor, to_8bit
from ._prefetch import ordered_map
from ._untrusted import (
    FileFormatError,
    check_npy_file,
    entry_pattern,
    open_archive,
    read_npy,
    refusing,
)

FEATURE_FILE_SUFFIXES = (".npy", ".npz", ".pt")
_ACCEPTED = (
    "a 2-D feature matrix, a numpy image array (N, H, W) or (N, H, W, C), a torch tensor "
    "(N, C, H, W), a file or directory path, a list of paths or PIL images, or a torch "
    "Dataset/DataLoader"
)


@dataclass
class FeatureInput:
    """Features given directly; ``labels``/``ids`` come from a ``dump_prototype`` file."""

    features: object
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None


@dataclass
class ImageInput:
    """Images to encode. ``batches(batch_size)`` yields ``(images, labels or None)``.

    ``images`` is a tensor ``(B, 3, H, W)`` or a list of ``(3, H, W)`` tensors of varied
    sizes, uint8 or float in [0, 1]. ``n`` is None when the source has no length. Image
    files also take ``batches(batch_size, n_jobs, decode_size)``: decoded by ``n_jobs``
    threads at most two batches ahead, at reduced scale where ``decode_size`` allows (see
    :func:`load_image`); other sources ignore both.
    """

    batches: Callable[[int], Iterator[tuple]]
    n: int | None
    ids: np.ndarray | None = None
    description: str = "images"
    sources: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    """``(index, id, reason)`` of each unreadable file left out (``on_error`` "skip"/"warn")."""


ON_ERROR = ("raise", "skip", "warn")


def read_input(X, on_error: str = "raise") -> FeatureInput | ImageInput:
    """Classify ``X`` by the rules of this module; raise a clear error otherwise.

    ``on_error`` decides what an image file that cannot be decoded does: ``"raise"`` a
    ``ValueError`` naming the file and the reason, or be left out of the batches and
    listed in ``ImageInput.skipped`` (``"skip"``, ``"warn"``; the caller warns).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not supported; use one of {ON_ERROR}.")
    if isinstance(X, (str, os.PathLike)):
        return _read_path(Path(X), on_error)
    if sp.issparse(X):
        return FeatureInput(X)
    if isinstance(X, torch.Tensor):
        return _read_tensor(X)
    if isinstance(X, torch.utils.data.DataLoader):
        return _read_dataloader(X)
    if isinstance(X, torch.utils.data.Dataset):
        return _read_dataset(X)
    if isinstance(X, np.ndarray):
        return _read_array(X, on_error)
    if isinstance(X, (list, tuple)):
        return _read_sequence(X, on_error)
    if hasattr(X, "__array__"):
        return _read_array(np.asarray(X), on_error)
    raise TypeError(f"X of type {type(X).__name__} is not accepted; X must be {_ACCEPTED}.")


def _read_path(path: Path, on_error: str):
    if path.is_dir():
        files = list_image_files(path)
        return _files_input(files, f"{len(files)} image files under {str(path)!r}", on_error)
    if not path.exists():
        raise FileNotFoundError(f"X={str(path)!r} does not exist; give an image file, a directory or a feature file.")
    if path.suffix.lower() in FEATURE_FILE_SUFFIXES:
        return read_feature_file(path)
    return _files_input([str(path)], f"image file {str(path)!r}", on_error)


_PROTOTYPE_FILE = "prototype file (dump_prototype: .npy, .npz or .pt)"
_NPZ_ENTRY = entry_pattern(r"features\.npy", r"labels\.npy", r"ids\.npy")
# What torch.save writes: <archive name>/ then these records.
_PT_ENTRY = entry_pattern(
    r"[^/]+/(data\.pkl|\.format_version|\.storage_alignment|byteorder|version|\.data/version"
    r"|\.data/serialization_id|data/[0-9]+)"
)


def read_feature_file(path) -> FeatureInput:
    """Load a ``.npy``, ``.npz`` or ``.pt`` file written by ``dump_prototype`` (no pickle).

    The file is checked before its arrays are read (see :mod:`skretrieval.io._untrusted`):
    a damaged file, or one declaring more than it holds, raises :class:`FileFormatError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        check_npy_file(path, _PROTOTYPE_FILE)
        with refusing(path, _PROTOTYPE_FILE):
            features = np.load(path, allow_pickle=False)
        return _checked_features(FeatureInput(features), path)
    if suffix == ".npz":
        archive = open_archive(path, _PROTOTYPE_FILE, _NPZ_ENTRY)
        with archive, refusing(path, _PROTOTYPE_FILE):
            arrays = {
                info.filename[:-4]: read_npy(archive, info, path, _PROTOTYPE_FILE) for info in archive.infolist()
            }
        if "features" not in arrays:
            raise FileFormatError(path, _PROTOTYPE_FILE, "it holds no features.npy")
        return _checked_features(FeatureInput(arrays["features"], arrays.get("labels"), arrays.get("ids")), path)
    if suffix == ".pt":
        open_archive(path, _PROTOTYPE_FILE, _PT_ENTRY).close()  # checked; torch reads it itself
        with refusing(path, _PROTOTYPE_FILE):
            data = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(data, torch.Tensor):
                return _checked_features(FeatureInput(data.float().numpy()), path)
            labels, ids = data.get("labels"), data.get("ids")
            source = FeatureInput(
                data["features"].float().numpy(),
                None if labels is None else np.asarray(labels),
                None if ids is None else np.asarray(ids),
            )
        return _checked_features(source, path)
    raise ValueError(f"feature file {str(path)!r} must end in one of {FEATURE_FILE_SUFFIXES}.")


def _checked_features(source: FeatureInput, path) -> FeatureInput:
    """Features 2-D and numeric; labels and ids 1-D, plain values, one per row."""
    features = np.asarray(source.features)
    if features.ndim != 2 or features.dtype.kind not in "biuf":
        raise FileFormatError(path, _PROTOTYPE_FILE, f"its features are {features.dtype}{list(features.shape)}, not a 2-D numeric array")
    for name in ("labels", "ids"):
        values = getattr(source, name)
        if values is not None and (values.shape != (len(features),) or values.dtype.kind not in "biufUS"):
            raise FileFormatError(
                path, _PROTOTYPE_FILE, f"its {name} are {values.dtype}{list(values.shape)} for {len(features)} rows"
            )
    return source


def _read_tensor(X: torch.Tensor):
    if X.ndim == 2:
        return FeatureInput(X.detach().cpu().float().numpy())
    if X.dtype == torch.uint16:  # 16-bit images: scaled to 8 bits as 16-bit files are
        X = torch.from_numpy(to_8bit(X.detach().cpu().numpy()))
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4:
        raise ValueError(
            f"a torch tensor X must be 2-D features or images (N, H, W) / (N, C, H, W); got shape {tuple(X.shape)}."
        )
    _check_channels(X.shape[1], f"torch images of shape {tuple(X.shape)} (channels first)")
    _check_range(X, "X")
    X = X.detach()
    return ImageInput(
        lambda b, **_: ((X[i : i + b], None) for i in range(0, len(X), b)),
        len(X),
        description=f"torch images {tuple(X.shape)}",
    )


def _read_array(X: np.ndarray, on_error: str = "raise"):
    if X.ndim == 1 and (X.dtype == object or X.dtype.kind in "US"):  # e.g. np.array(paths)
        return _read_sequence(X.tolist(), on_error)
    if X.ndim <= 2:
        return FeatureInput(X)
    if not np.issubdtype(X.dtype, np.number):
        raise TypeError(
            f"X holds images of dtype {X.dtype}; images must be integers in [0, 255] or floats in [0, 1]."
        )
    if X.ndim == 3 and X.shape[2] in (3, 4):
        raise ValueError(
            f"X has shape {X.shape}, which reads as one (H, W, C) image, not {X.shape[0]} grayscale "
            f"images {X.shape[2]} pixels wide; add the batch axis for one image (X[None], shape "
            f"{(1, *X.shape)}), or stack images as (N, H, W, C)."
        )
    if X.dtype == np.uint16:
        X = to_8bit(X)
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim != 4:
        raise ValueError(
            f"a numpy X must be 2-D features or images (N, H, W) / (N, H, W, C); got shape {X.shape}."
        )
    _check_channels(X.shape[3], f"numpy images of shape {X.shape} (channels last)")
    _check_range(X, "X")
    return ImageInput(
        lambda b, **_: ((_array_batch(X[i : i + b]), None) for i in range(0, len(X), b)),
        len(X),
        description=f"numpy images {X.shape}",
    )


def _array_batch(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)


def _read_sequence(X, on_error: str = "raise"):
    if len(X) == 0:
        raise ValueError(f"X is an empty {type(X).__name__}; it must hold at least one sample.")
    if all(isinstance(x, (str, os.PathLike)) for x in X):
        return _files_input([str(x) for x in X], f"{len(X)} image files", on_error)
    if all(_is_pil(x) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim >= 2) for x in X):
        items = list(X)

        def batches(b, **_):
            for i in range(0, len(items), b):
                yield [_item_tensor(x, f"X[{i + j}]") for j, x in enumerate(items[i : i + b])], None

        return ImageInput(batches, len(items), description=f"{len(items)} images", sources=items)
    array = np.asarray(X)
    if array.dtype == object:
        kinds = sorted({type(x).__name__ for x in X})
        raise TypeError(f"X is a sequence of {', '.join(kinds)}; X must be {_ACCEPTED}.")
    return _read_array(array)


def _files_input(files: list[str], description: str, on_error: str = "raise") -> ImageInput:
    for f in files:
        if Path(f).suffix.lower() in FEATURE_FILE_SUFFIXES:
            raise ValueError(f"{f!r} is a feature file; pass it alone as X, not inside a list of images.")

    def batches(b, n_jobs=1, decode_size=None):
        source.skipped.clear()
        decoded = ordered_map(partial(_try_load, decode_size=decode_size), files, n_jobs, window=2 * b)
        with closing(decoded):  # stopping early cancels the decoding still queued
            for i in range(0, len(files), b):
                images = []
                for j in range(i, min(i + b, len(files))):
                    image, error = next(decoded)
                    if error is None:
                        images.append(image)
                    elif on_error == "raise":
                        raise error
                    else:
                        source.skipped.append((j, files[j], str(error)))
                yield images, None

    source = ImageInput(batches, len(files), ids=np.asarray(files), description=description, sources=files)
    return source


def _try_load(path, decode_size):
    """``(image, None)``, or ``(None, error)`` when the file cannot be read (decided by the caller)."""
    try:
        return load_image(path, decode_size), None
    except (ValueError, OSError) as exc:  # FileNotFoundError too: a file gone meanwhile
        return None, exc


def _read_dataset(dataset):
    n = len(dataset) if hasattr(dataset, "__len__") else None
    samples = getattr(dataset, "samples", None)  # torchvision ImageFolder keeps (path, label)
    ids = np.asarray([s[0] for s in samples]) if samples is not None else None

    def batches(b, **_):
        images, labels = [], []
        for i, item in enumerate(_iterate_dataset(dataset, n)):
            image, label = _split_item(item)
            images.append(_item_tensor(image, f"dataset item {i}"))
            labels.append(label)
            if len(images) == b:
                yield images, _labels_or_none(labels)
                images, labels = [], []
        if images:
            yield images, _labels_or_none(labels)

    return ImageInput(batches, n, ids=ids, description=f"dataset {type(dataset).__name__}")


def _iterate_dataset(dataset, n):
    if n is None:
        yield from dataset
    else:
        for i in range(n):
            yield dataset[i]


def _read_dataloader(loader):
    def batches(_, **__):
        for i, batch in enumerate(loader):
            images, labels = _split_item(batch)
            if isinstance(images, torch.Tensor) and images.ndim == 4:
                _check_channels(images.shape[1], f"DataLoader batch {i} of shape {tuple(images.shape)}")
                _check_range(images, f"DataLoader batch {i}")
            else:
                images = [_item_tensor(x, f"DataLoader batch {i} item {j}") for j, x in enumerate(images)]
            yield images, None if labels is None else np.asarray(labels)

    n = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    return ImageInput(batches, n, description=f"DataLoader over {type(loader.dataset).__name__}")


def _split_item(item):
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    return item, None


def _labels_or_none(labels):
    return None if any(label is None for label in labels) else np.asarray(
        [label.item() if isinstance(label, torch.Tensor) else label for label in labels]
    )


def _is_pil(x) -> bool:
    return type(x).__module__.startswith("PIL.")


def _item_tensor(x, where: str) -> torch.Tensor:
    """One image (PIL, (H, W[, C]) array, (C, H, W) tensor or path) as a (3, H, W) tensor."""
    if isinstance(x, (str, os.PathLike)):
        return load_image(x)
    if _is_pil(x):
        return pil_to_tensor(x)
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3:
            raise ValueError(f"{where}: a numpy image must be (H, W) or (H, W, C); got shape {x.shape}.")
        if x.dtype == np.uint16:
            x = to_8bit(x)
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    elif isinstance(x, torch.Tensor):
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"{where}: a torch image must be (H, W) or (C, H, W); got shape {tuple(x.shape)}.")
    else:
        raise TypeError(f"{where} is a {type(x).__name__}; an image must be a PIL image, array, tensor or path.")
    _check_channels(x.shape[0], f"{where} of shape {tuple(x.shape)}")
    _check_range(x, where)
    return x


def _check_channels(channels: int, what: str) -> None:
    if channels not in (1, 3, 4):
        raise ValueError(
            f"{what} has {channels} channels; images need 1 (grayscale), 3 (RGB) or 4 (RGBA). "
            "numpy images are channels last (N, H, W, C), torch tensors channels first (N, C, H, W)."
        )


def _check_range(x, what: str) -> None:
    """Integer images lie in [0, 255], float images in [0, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{what} has dtype {t.dtype}; images must be integers in [0, 255] or floats in [0, 1].")
    if t.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(t.shape)}); it must hold at least one image pixel.")
    if t.dtype == torch.uint8:
        return
    low, high = t.min().item(), t.max().item()
    if t.is_floating_point():
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{what} contains NaN or infinity; images must be finite floats in [0, 1].")
        if low < 0 or high > 1:
            raise ValueError(
                f"{what} holds float images with values in [{low:g}, {high:g}]; float images must lie "
                "in [0, 1] (divide by the maximum first, e.g. load_digits images by 16), or pass "
                "uint8 images in [0, 255]."
            )
    elif low < 0 or high > 255:
        raise ValueError(
            f"{what} holds integer images with values in [{low}, {high}]; integer images must lie in "
            "[0, 255] (scale them, or pass floats in [0, 1])."
        )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Scale a uint8/integer batch to float32 in [0, 1] and make it 3-channel."""
    if not images.is_floating_point():
        images = images.float() / 255.0
    else:
        images = images.float()
    return to_rgb(images)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Make a batch (or image) 3-channel: grey is repeated, alpha dropped; dtype kept."""
    if images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    elif images.shape[-3] == 4:
        images = images[..., :3, :, :]
    return images

