"""What a gallery file looked like when it was encoded: its size and modification time.

``index --update`` (:meth:`ImageRetriever.update`) re-encodes a file when its path, size
or modification time (``st_mtime_ns``) differ from those recorded when it was encoded.
No content hash: hashing would read every file of the folder, which is most of the cost
of encoding it (decoding aside). The price: a file rewritten with the same size and its
old modification time restored (``cp -p``, ``rsync -t`` or ``tar`` of an other version
of the same size) is not seen as changed; index such a folder anew.
"""

from __future__ import annotations

import os

import numpy as np

# A file whose modification time is this close to the start of its encoding may change
# again within the same timestamp tick after it was read (FAT keeps 2 s, the kernel's
# file clock lags the wall clock by a tick): its stats are not recorded, so the next
# update encodes it again (git's "racily clean" entries, the same rule).
RACY_NS = 2_000_000_000
UNKNOWN = -1  # the stats of an item that is no file (or was changing while encoded)


def file_stats(ids, *, changed_since_ns: int | None = None) -> np.ndarray | None:
    """``(size, st_mtime_ns)`` per item, int64 ``(n, 2)``; None when no item is a file.

    Items that are not paths of existing files get ``UNKNOWN`` in both columns, and so do
    the files modified within ``RACY_NS`` of ``changed_since_ns`` (or later): they are
    re-encoded by the next update.

    Examples
    --------
    >>> import os, tempfile
    >>> from skretrieval.io._stats import file_stats
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> with open(path, "wb") as file:
    ...     _ = file.write(b"12345")
    >>> os.utime(path, ns=(0, 7))
    >>> file_stats([path, 3, "no such file"])
    array([[ 5,  7],
           [-1, -1],
           [-1, -1]])
    """
    if ids is None:
        return None
    stats = np.full((len(ids), 2), UNKNOWN, np.int64)
    any_file = False
    for row, item in enumerate(np.asarray(ids).tolist()):
        if not isinstance(item, str):
            continue
        try:
            found = os.stat(item)
        except (OSError, ValueError):  # gone, unreadable folder, or no path at all
            continue
        any_file = True
        if changed_since_ns is not None and found.st_mtime_ns >= changed_since_ns - RACY_NS:
            continue
        stats[row] = found.st_size, found.st_mtime_ns
    return stats if any_file else None
