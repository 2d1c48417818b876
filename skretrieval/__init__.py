"""skretrieval: image-to-image retrieval as a scikit-learn estimator."""

__version__ = "0.1.0"

from ._encoder import ImageEncoder
from ._persistence import InconsistentVersionWarning, load
from ._preprocessing import Preprocessing
from ._retriever import ImageRetriever
from .encoders import list_encoders
from .io import FileFormatError

__all__ = [
    "FileFormatError",
    "ImageEncoder",
    "ImageRetriever",
    "InconsistentVersionWarning",
    "Preprocessing",
    "__version__",
    "list_encoders",
    "load",
]
