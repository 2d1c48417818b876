"""An on-disk cache of image features, shared by folds, clones, re-fits and processes.

Each entry is one image's feature vector, stored under
``<location>/skretrieval-features/<encoder fingerprint>/<key[:2]>/<key>.npy`` where ``key``
hashes the decoded image. Entries are written to a temporary file and renamed into place, so
a reader (in this or another process) sees a whole entry or none, and a job killed midway
keeps everything it finished: re-running it resumes where it stopped.

A cache directory may be shared between processes and users, so an entry is read only when
it is a regular file (not a link, FIFO or device) holding one float32 vector of the width
recorded in ``<fingerprint>/width`` by the first write, its ``.npy`` header checked against
its size (reading one costs at most its width in memory): anything else is a miss, encoded
again and overwritten. The values themselves are trusted: share a cache only with users
you trust with your results.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .io._untrusted import npy_header

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
        self._width = None  # of every vector under this fingerprint, from the "width" file

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        """The stored vector of each key, or None where there is none (or it is not a proper entry)."""
        if self._width is None:
            data = _read_regular(self.root / "width", 32)
            self._width = int(data) if data is not None and data.strip().isdigit() else None
        if self._width is None:  # no width recorded: nothing here can be trusted yet
            return [None] * len(keys)
        return [self._read(self._path(key)) for key in keys]

    def put_many(self, keys: list[str], features: np.ndarray) -> None:
        if len(features) and features.shape[1] != self._width:  # the encoder's own width
            self._width = features.shape[1]
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.root / "width", str(self._width).encode())
        for key, vector in zip(keys, features):
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            _write_atomically(path, buffer.getvalue())

    def _read(self, path: Path):
        data = _read_regular(path, 128 + 4 * self._width)
        if data is None:
            return None
        try:
            file = io.BytesIO(data)
            shape, dtype = npy_header(file, len(data), path, "feature cache entry", "it", "f")
        except ValueError:  # FileFormatError, or a header numpy cannot parse
            return None
        if dtype != np.float32 or shape != (self._width,):
            return None
        return np.frombuffer(data, np.float32, offset=file.tell()).copy()


def _read_regular(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` when it is a regular file of at most ``max_bytes``, else None."""
    try:
        # O_NOFOLLOW: a link planted in a shared cache is not followed; O_NONBLOCK: opening a
        # FIFO does not block (and it is refused below, as every file that is not regular).
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        with os.fdopen(os.open(path, flags), "rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode) or status.st_size > max_bytes:
                return None
            return file.read(max_bytes + 1)
    except OSError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file, then rename into place: readers see the whole file or none."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
