"""Encoders by name: a registry of builder functions, as timm's ``create_model`` does."""

from __future__ import annotations

from collections.abc import Callable

from ._built import BuiltEncoder
from ._torchvision import build_torchvision_encoder, torchvision_model_names

_BUILDERS: dict[str, Callable[..., BuiltEncoder]] = {}


def register_encoder(name: str):
    """Register ``builder(weights) -> BuiltEncoder`` under ``name`` (a decorator).

    Parameters
    ----------
    name : str
        The ``encoder=`` name; registering a name again replaces its builder.

    Returns
    -------
    decorator : callable
        Registers the function it decorates and returns it unchanged.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.encoders import BuiltEncoder, register_encoder, create_encoder
    >>> from skretrieval import Preprocessing
    >>> @register_encoder("tiny_pool_demo")
    ... def tiny_pool(weights=None):
    ...     return BuiltEncoder(torch.nn.AdaptiveAvgPool2d(1), Preprocessing(size=8))
    >>> create_encoder("tiny_pool_demo").preprocessing.size
    (8, 8)
    """

    def decorator(builder):
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_encoders(torchvision_models: bool = True) -> list[str]:
    """Names accepted by ``encoder=``: the built-ins, then torchvision's classification models.

    Parameters
    ----------
    torchvision_models : bool, default=True
        Also list torchvision's classification models (built with the last linear layer
        removed; their weights come from torchvision's cache or a download).

    Returns
    -------
    names : list of str
        The registered names, sorted, then torchvision's.

    Examples
    --------
    >>> from skretrieval.encoders import list_encoders
    >>> "efficientnet_lite0" in list_encoders()
    True
    """
    names = sorted(_BUILDERS)
    if torchvision_models:
        names += [n for n in torchvision_model_names() if n not in _BUILDERS]
    return names


def create_encoder(name: str, weights="DEFAULT") -> BuiltEncoder:
    """Build the encoder registered as ``name`` (or a torchvision model of that name).

    Parameters
    ----------
    name : str
        A name from :func:`list_encoders`.
    weights : str, path or None, default="DEFAULT"
        ``"DEFAULT"`` (the pretrained weights), a torchvision weights name such as
        ``"IMAGENET1K_V2"``, a path to a state dict, or ``None`` for random initialisation.

    Returns
    -------
    BuiltEncoder
        The feature extractor (classifier removed) and its preprocessing.

    Examples
    --------
    >>> from skretrieval.encoders import create_encoder
    >>> built = create_encoder("resnet18", weights=None)
    >>> built.preprocessing.size
    (224, 224)
    """
    if name in _BUILDERS:
        return _BUILDERS[name](weights=weights)
    if name in torchvision_model_names():
        return build_torchvision_encoder(name, weights=weights)
    raise ValueError(
        f"Unknown encoder {name!r}. Accepted: 'precomputed', an nn.Module or callable, or one of "
        f"the names from skretrieval.encoders.list_encoders(), e.g. {sorted(_BUILDERS)} or a "
        "torchvision model such as 'resnet50'."
    )
