"""skretrieval: image-to-image retrieval as a scikit-learn estimator.

The public names load on first use (PEP 562), so ``import skretrieval`` and
``skretrieval --help`` import neither torch nor scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from ._duplicates import duplicates_to_remove
    from ._encoder import ImageEncoder
    from ._preprocessing import Preprocessing
    from ._retriever import ImageRetriever, load
    from ._version import InconsistentVersionWarning
    from .encoders import list_encoders
    from .io import FileFormatError

_WHERE = {
    "duplicates_to_remove": "._duplicates",
    "ImageEncoder": "._encoder",
    "FileFormatError": ".io",
    "ImageRetriever": "._retriever",
    "InconsistentVersionWarning": "._version",
    "Preprocessing": "._preprocessing",
    "list_encoders": ".encoders",
    "load": "._retriever",
}

__all__ = [
    "FileFormatError",
    "ImageEncoder",
    "ImageRetriever",
    "InconsistentVersionWarning",
    "Preprocessing",
    "__version__",
    "duplicates_to_remove",
    "list_encoders",
    "load",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'skretrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
