"""Encoders by name: the registry, the default EfficientNet-Lite0 and torchvision models."""

try:  # TEMP until the helper lands efficientnet_lite
    from . import efficientnet_lite  # noqa: F401  (registers "efficientnet_lite0")
except ImportError:
    pass
from ._registry import BuiltEncoder, create_encoder, list_encoders, register_encoder

__all__ = [
    "BuiltEncoder",
    "create_encoder",
    "list_encoders",
    "register_encoder",
]
