"""An on-disk cache of image features, shared by folds, clones, re-fits and processes.

Each entry is one image's feature vector, stored under
``<location>/skretrieval-features/<encoder fingerprint>/<key[:2]>/<key>.npy`` where ``key``
hashes the decoded image. Entries are written to a temporary file and renamed into place, so
a reader (in this or another process) sees a whole entry or none, and a job killed midway
keeps everything it finished: re-running it resumes where it stopped.

A cache directory may be shared between processes and users, so an entry is read only when
it is a regular file (not a link, FIFO or device) holding one float32 vector of the width
the others have, its ``.npy`` header checked against its size: anything else is a miss
(encoded again and overwritten), in bounded memory. The values themselves are trusted:
share a cache only with users you trust with your results.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .io._untrusted import npy_header

# v2: uint8 images are resized as uint8 (within one level of the v1 float resize).
_FORMAT = "v2"


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
        self.width = None  # of the vectors: every entry of one fingerprint has the same

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        """The stored vector of each key, or None where there is none (or it is unreadable)."""
        return [self._read(self._path(key)) for key in keys]

    def put_many(self, keys: list[str], features: np.ndarray) -> None:
        self.width = features.shape[1] if len(features) else self.width  # the encoder's own
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

    def _read(self, path: Path):
        """The vector stored at ``path``, or None when it is missing or not a proper entry."""
        try:
            # O_NOFOLLOW: a link planted in a shared cache is not followed; O_NONBLOCK: a FIFO
            # does not block the open (and is refused below, as every non-regular file).
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            with os.fdopen(os.open(path, flags), "rb") as file:
                status = os.fstat(file.fileno())
                if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_ENTRY_BYTES:
                    return None
                shape, dtype = npy_header(file, status.st_size, path, "feature cache entry", "it", "f")
                if dtype != np.float32 or len(shape) != 1 or shape[0] != (self.width or shape[0]):
                    return None
                vector = np.frombuffer(file.read(shape[0] * 4), np.float32).copy()  # size checked above
        except Exception:  # whatever is wrong with an entry (FileFormatError, OSError, ...): a miss
            return None
        self.width = shape[0]
        return vector


_MAX_ENTRY_BYTES = 1 << 26  # one feature vector: 64 MiB is 16 M floats
