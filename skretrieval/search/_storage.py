"""Where gallery rows are stored, and how a block of them is read.

A gallery is searched from one of two stores:

* resident: a float32 tensor on the search device (the fastest; what an in-memory float32
  gallery becomes);
* streamed: the rows stay as they are stored, a float16 array or a memory-mapped file, and
  each block is read, upcast to float32 and prepared when the scan reaches it.

A memory-mapped array (:class:`numpy.memmap`, ``np.load(path, mmap_mode="r")`` or a view of
one) is read with plain file reads into one reused buffer, never by touching its mapping:
the mapped pages a slice reads stay in the process's resident memory until the map is
closed, so scanning a gallery larger than memory through its mapping would hold it all.
File reads go through the page cache, which the kernel frees as it needs.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch

# Rows read at once by the passes over a whole store (statistics, checks, copies): 16 MiB.
_PASS_BYTES = 16 << 20
STORAGE_DTYPES = ("float32", "float16")


def file_backing(array) -> tuple[str, int] | None:
    """``(file name, byte offset of the first row)`` of a C-contiguous memory-mapped array.

    Follows ``array.base`` to the :class:`numpy.memmap` that owns the map (a slice, or
    ``np.asarray`` of a memmap, is a view of it). None for arrays in memory, and for
    mappings without a file name or whose layout is not contiguous rows.
    """
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        return None
    owner = array
    while owner is not None and not (isinstance(owner, np.memmap) and isinstance(owner.base, mmap.mmap)):
        owner = owner.base if isinstance(owner, np.ndarray) else None
    if owner is None or not getattr(owner, "filename", None):
        return None
    return owner.filename, owner.offset + (array.ctypes.data - owner.ctypes.data)


def rows_at_once(n_features: int, itemsize: int = 4, limit: int = _PASS_BYTES) -> int:
    """Rows of ``n_features`` values of ``itemsize`` bytes that fit ``limit`` bytes (at least 1)."""
    return max(1, limit // max(1, n_features * itemsize))


def read_blocks(array, rows: int | None = None, start: int = 0):
    """Yield ``(start, block)``: consecutive numpy blocks of ``rows`` rows of a 2-D array,
    from row ``start``.

    A memory-mapped array is read with file reads into one buffer, reused from block to
    block (a block is valid until the next one); others are sliced.
    """
    n, d = array.shape
    rows = rows or rows_at_once(d, array.dtype.itemsize)
    backing = file_backing(array)
    if backing is None:
        for row in range(start, n, rows):
            yield row, array[row : row + rows]
        return
    filename, offset = backing
    buffer = np.empty((min(rows, n), d), array.dtype)
    row_bytes = d * array.dtype.itemsize
    with open(filename, "rb", buffering=0) as file:
        for row in range(start, n, rows):
            block = buffer[: min(rows, n - row)]
            file.seek(offset + row * row_bytes)
            view = memoryview(block).cast("B")
            done = 0
            while done < len(view):  # a raw read may return fewer bytes than asked
                got = file.readinto(view[done:])
                if not got:
                    raise OSError(f"{filename!r} ended before row {row + len(block)} of {n}")
                done += got
            yield row, block


class RowStore:
    """The rows of a streamed gallery on ``device``, read a block at a time.

    Parameters
    ----------
    array : ndarray of shape (n, d)
        A float16 array, or a memory-mapped float32 or float16 array (see
        :func:`file_backing`).
    device : torch.device
    """

    def __init__(self, array: np.ndarray, device: torch.device):
        self.array, self.device = array, device
        self.shape = array.shape
        self.itemsize = array.dtype.itemsize
        # An in-memory array is used where it is (on a GPU: one device copy, in its dtype).
        self._resident = None if file_backing(array) else torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def blocks(self, rows: int, start: int = 0):
        """Yield ``(start, float32 tensor of the stored rows)`` of every block of ``rows`` rows
        from row ``start``.

        Every block is written into one float32 buffer (valid until the next block, and
        free to be modified in place): a fresh block each time would let the allocator
        spread them over ever new pages, which a scan of millions of rows makes resident.
        """
        n, d = self.shape
        out = torch.empty((min(rows, n), d), dtype=torch.float32, device=self.device)
        if self._resident is not None:
            for g0 in range(start, n, rows):
                stored = self._resident[g0 : g0 + rows]
                yield g0, out[: len(stored)].copy_(stored)
            return
        for g0, block in read_blocks(self.array, rows, start):
            stored = torch.from_numpy(block)
            if stored.dtype == torch.float32 and self.device.type == "cpu":
                yield g0, stored  # the read buffer itself
            else:
                yield g0, out[: len(stored)].copy_(stored)


def streamed(gallery) -> bool:
    """Whether ``gallery`` is searched from its own storage: float16, or memory-mapped float32/16."""
    if not isinstance(gallery, np.ndarray) or gallery.ndim != 2:
        return False
    if gallery.dtype == np.float16:
        return True
    return gallery.dtype == np.float32 and file_backing(gallery) is not None


def check_finite(array, what: str = "X") -> None:
    """Raise a ``ValueError`` naming the first row holding a NaN or infinity, in blocks."""
    for start, block in read_blocks(array):
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            raise ValueError(
                f"{what} holds NaN or infinity (first in row {start + bad[0]}); a gallery must be finite."
            )


def to_storage(features: np.ndarray, gallery_dtype: str) -> np.ndarray:
    """``features`` stored in ``gallery_dtype``: kept as they are (memory-mapped too) when of
    that dtype, else converted in memory, in blocks.

    float16 holds magnitudes up to 65504: features beyond raise a ``ValueError``.
    """
    dtype = np.dtype(gallery_dtype)
    if features.dtype == dtype:
        return features
    out = np.empty(features.shape, dtype)
    with np.errstate(over="ignore"):  # an overflow to float16's inf is reported below
        for start, block in read_blocks(features):
            out[start : start + len(block)] = block
    if dtype == np.float16 and len(out) and not np.isfinite(out).all():
        top = max(float(np.abs(block).max()) for _, block in read_blocks(features))
        raise ValueError(
            f"gallery_dtype='float16' holds magnitudes up to {float(np.finfo(np.float16).max):.0f}, but "
            f"these features reach {top:.6g}; use gallery_dtype='float32', or scale the features "
            "(cosine similarity does not depend on their scale)."
        )
    return out
