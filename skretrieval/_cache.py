"""An on-disk cache of image features, shared by folds, clones, re-fits and processes.

Each entry is one image's feature vector, stored under
``<location>/skretrieval-features/<encoder fingerprint>/<key[:2]>/<key>.npy`` where ``key``
hashes the decoded image. Entries are written to a temporary file and renamed into place, so
a reader (in this or another process) sees a whole entry or none, and a job killed midway
keeps everything it finished: re-running it resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

# v2: uint8 images are resized as uint8 (within one level of the v1 float resize).
# v3: float images are rounded to uint8 levels first, and enlarged images are resized as
# floats (one path per image, chosen by the geometry, not the container).
_FORMAT = "v3"


def image_key(image: torch.Tensor) -> str:
    """Hash of one decoded image (its dtype, shape and pixels)."""
    image = image.detach().cpu().contiguous()
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.dtype}{tuple(image.shape)}".encode())
    digest.update(image.view(torch.uint8).numpy().tobytes() if image.numel() else b"")
    return digest.hexdigest()


def encoder_fingerprint(encoder, preprocessing, cache_key=None, variant=None) -> str | None:
    """What makes features differ: the encoder's class and weights, and the preprocessing.

    Never ``id()`` or a pickle of the module, which change under deep copies. A plain
    callable has no weights to hash: it is fingerprinted only by a user ``cache_key``
    (None means "do not cache").
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_FORMAT.encode())
    if cache_key is not None:
        digest.update(f"key:{cache_key}".encode())
    elif isinstance(encoder, nn.Module):
        digest.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    else:
        return None
    digest.update(repr(preprocessing).encode())
    if variant is not None:  # how it runs, when that changes the numbers (e.g. bf16)
        digest.update(f"variant:{variant}".encode())
    return digest.hexdigest()


def cache_location(memory) -> Path | None:
    """The directory of a ``memory`` parameter: a path, a ``joblib.Memory`` or None."""
    if memory is None:
        return None
    location = getattr(memory, "location", memory)
    return None if location is None else Path(location)


class FeatureCache:
    """Batched look-up and storage of per-image features for one encoder fingerprint."""

    def __init__(self, location, fingerprint: str):
        self.root = Path(location) / "skretrieval-features" / fingerprint

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        """The stored vector of each key, or None where there is none (or it is unreadable)."""
        return [self._read(self._path(key)) for key in keys]

    def put_many(self, keys: list[str], features: np.ndarray) -> None:
        for key, vector in zip(keys, features):
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as file:
                    np.save(file, np.asarray(vector, dtype=np.float32), allow_pickle=False)
                os.replace(temporary, path)  # atomic: readers never see a partial entry
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise

    @staticmethod
    def _read(path: Path):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
