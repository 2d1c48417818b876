"""Encoders by name: the registry, the default EfficientNet-Lite0 and torchvision models."""

from . import efficientnet_lite  # noqa: F401  (registers "efficientnet_lite0")
from ._built import BuiltEncoder
from ._registry import create_encoder, list_encoders, register_encoder

__all__ = [
    "BuiltEncoder",
    "create_encoder",
    "list_encoders",
    "register_encoder",
]
