"""Which duplicates to remove: one item kept per group of ``find_duplicates``, the rest listed.

Nothing here deletes a file: the caller (or ``skretrieval duplicates --list-removable``)
decides what to do with the list.
"""

from __future__ import annotations

import os

import numpy as np

KEEP_RULES = ("first", "largest", "smallest")


def duplicates_to_remove(groups, ids, keep: str = "first") -> np.ndarray:
    """The items to remove so that exactly one item of each group of duplicates is kept.

    Parameters
    ----------
    groups : list of array-like of int
        Groups of rows, as :meth:`ImageRetriever.find_duplicates` returns them.
    ids : array-like of shape (n_items,)
        The item of each row: ``prototype_ids_`` (the image paths, for a gallery fitted on
        files).
    keep : {"first", "largest", "smallest"}, default="first"
        The item kept in each group: the first id in sorted order (for paths, the first
        alphabetically), or the largest or smallest file (``ids`` are paths; equal sizes
        keep the first of them in sorted order).

    Returns
    -------
    removable : ndarray of shape (n_removable,)
        The ids of every other member, group by group, in the groups' order; an item
        belongs to one group, so none is listed twice.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever, duplicates_to_remove
    >>> paths = ["b.png", "a.png", "c.png", "a_copy.png"]
    >>> retriever = ImageRetriever("precomputed").fit([[1.0, 0.0], [0.0, 1.0], [1.0, 0.001], [0.0, 1.0]])
    >>> groups = retriever.find_duplicates(min_similarity=0.99)
    >>> duplicates_to_remove(groups, paths).tolist()
    ['c.png', 'a_copy.png']
    """
    if keep not in KEEP_RULES:
        raise ValueError(f"keep={keep!r} is not a rule; use one of {', '.join(map(repr, KEEP_RULES))}.")
    ids = np.asarray(ids)
    removable = []
    for group in groups:
        members = ids[np.asarray(group, dtype=np.int64)]
        # A stable sort: equal ids (not expected) keep their row order.
        order = np.argsort(members, kind="stable")
        kept = order[0]
        if keep != "first":
            sizes = np.array([_file_size(member) for member in members[order]])
            # argmax/argmin take the first of equal sizes: the first id in sorted order.
            kept = order[np.argmax(sizes) if keep == "largest" else np.argmin(sizes)]
        removable.extend(members[np.arange(len(members)) != kept])
    return np.asarray(removable, dtype=ids.dtype)


def _file_size(path) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, TypeError, ValueError) as exc:
        raise FileNotFoundError(
            f"keep='largest'/'smallest' compares file sizes, but item {path!r} is not a readable file "
            f"({exc}); pass the image paths as ids (prototype_ids_ of a gallery fitted on files), "
            "or use keep='first'."
        ) from None
