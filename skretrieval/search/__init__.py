"""The search engine: similarities and blocked exact top-k."""

from ._similarity import SIMILARITY_NAMES, Similarity, get_similarity
from ._topk import block_sizes, topk_search

__all__ = [
    "SIMILARITY_NAMES",
    "Similarity",
    "block_sizes",
    "get_similarity",
    "topk_search",
]
