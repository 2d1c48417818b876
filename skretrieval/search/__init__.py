"""The search engine: similarities, precision modes, blocked exact top-k and radius search."""

from ._gallery import SearchGallery, block_sizes
from ._precision import PRECISIONS, cpu_has_bf16_matmul, resolve_precision
from ._radius import radius_search
from ._similarity import SIMILARITY_NAMES, Similarity, get_similarity
from ._storage import STORAGE_DTYPES
from ._topk import topk_search

__all__ = [
    "PRECISIONS",
    "SIMILARITY_NAMES",
    "STORAGE_DTYPES",
    "SearchGallery",
    "Similarity",
    "block_sizes",
    "cpu_has_bf16_matmul",
    "get_similarity",
    "radius_search",
    "resolve_precision",
    "topk_search",
]
