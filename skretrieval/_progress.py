"""Progress bars: one look for encoding and training, silent unless ``verbose``."""

from __future__ import annotations


def progress_bar(total: int | None, desc: str, verbose):
    """A tqdm bar counting images (its rate reads images/s) on stderr; a no-op when not ``verbose``.

    ``total`` is None when the source has no length. The bar is cleared when closed: the
    caller reports the outcome.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not verbose, desc=desc, unit="img", leave=False)
