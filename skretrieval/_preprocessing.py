"""How raw images become the batch an encoder expects.

A :class:`Preprocessing` is the pretrained configuration of an encoder (input size, resize
policy, mean and std). Built-in encoders carry their own; users override it with a dict, a
:class:`Preprocessing`, a callable, or ``"none"`` when their inputs are already model-ready.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # torchvision's InterpolationMode values
_RESIZE_MODES = ("crop", "stretch")


@dataclass(frozen=True)
class Preprocessing:
    """Resize, crop and normalise a batch of images for an encoder.

    Parameters
    ----------
    size : int or tuple of (int, int), default=224
        Height and width the encoder sees. An int means a square.
    crop_pct : float, default=0.875
        With ``resize_mode="crop"``, the shorter side is first resized to
        ``size / crop_pct`` and the centre ``size`` is cropped, as ImageNet models are
        evaluated. ``1.0`` resizes the shorter side straight to ``size``.
    resize_mode : {"crop", "stretch"}, default="crop"
        ``"crop"`` keeps the aspect ratio (resize, then centre crop); ``"stretch"`` resizes
        to ``size`` directly.
    mean, std : tuple of float, default=ImageNet statistics
        Per-channel normalisation applied after resizing, on images scaled to [0, 1].
    interpolation : {"bilinear", "bicubic", "nearest"}, default="bilinear"
        Resampling filter (antialiased when shrinking).

    Examples
    --------
    >>> import torch
    >>> from skretrieval import Preprocessing
    >>> prep = Preprocessing(size=32)
    >>> prep(torch.rand(2, 3, 48, 64)).shape
    torch.Size([2, 3, 32, 32])
    """

    size: int | tuple[int, int] = 224
    crop_pct: float = 0.875
    resize_mode: str = "crop"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        size = (self.size, self.size) if isinstance(self.size, Integral) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(s, Integral) and s > 0 for s in size):
            raise ValueError(f"Preprocessing size must be a positive int or (h, w); got {self.size!r}.")
        object.__setattr__(self, "size", tuple(int(s) for s in size))
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"Preprocessing crop_pct must lie in (0, 1]; got {self.crop_pct!r}.")
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"Preprocessing resize_mode must be one of {_RESIZE_MODES}; got {self.resize_mode!r}."
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing interpolation must be one of {tuple(_INTERPOLATIONS)}; "
                f"got {self.interpolation!r}."
            )
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) not in (1, 3):
                raise ValueError(f"Preprocessing {name} needs 1 or 3 values; got {value!r}.")
            object.__setattr__(self, name, value)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocess a batch ``(N, 3, H, W)``: float in [0, 1], or uint8 in [0, 255].

        One image gives the same input whatever holds it (a file, a uint8 or float array, a
        tensor): a float batch is first rounded to the 256 levels an image file holds
        (``uint8_images / 255`` round-trips exactly), and the choice of kernel depends on
        the geometry only. A batch that is shrunk is resized as uint8, about five times
        faster than floats on a CPU, the result rounded to integers as PIL does (averaging
        many pixels, the rounding is noise of half a level). A batch that is enlarged (a
        small image, e.g. 8 x 8 digits) is resized as floats: rounding a smooth
        interpolation to integers would band it into steps, which moves the features.
        Bicubic resizing runs on floats too: torch's uint8 bicubic is another filter.
        """
        # torchvision only when images are resized: importing it takes seconds
        from torchvision.transforms.v2 import functional as TF

        mode = TF.InterpolationMode(self.interpolation)
        if images.dtype != torch.uint8:
            images = to_uint8(images)
        if self.interpolation == "bicubic" or self._enlarges(*images.shape[-2:]):
            images = images.float().div_(255.0)
        elif images.ndim == 4:
            # torch's uint8 kernel works channels-last; a contiguous batch resized to 1 x 1
            # trips an internal assertion of torch 2.x.
            images = images.contiguous(memory_format=torch.channels_last)
        if self.resize_mode == "stretch":
            images = TF.resize(images, list(self.size), interpolation=mode, antialias=True)
        else:
            images = TF.resize(images, [self._shorter_side()], interpolation=mode, antialias=True)
            images = TF.center_crop(images, list(self.size))
        if not images.is_floating_point():
            images = images.float().div_(255.0)
        return TF.normalize(images, list(self.mean), list(self.std))

    def decode_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest ``(height, width)`` an image of this shape may be decoded at.

        Shrinking the image this far before preprocessing it loses nothing it would keep:
        the resize still shrinks (or keeps) it. Image decoders use it to decode large JPEG
        files at a reduced scale.
        """
        if self.resize_mode == "stretch":
            return min(height, self.size[0]), min(width, self.size[1])
        shorter = min(height, width)
        scale = min(self._shorter_side() / shorter, 1.0)
        return math.ceil(height * scale), math.ceil(width * scale)

    def _enlarges(self, height: int, width: int) -> bool:
        if self.resize_mode == "stretch":
            return self.size[0] > height or self.size[1] > width
        return self._shorter_side() > min(height, width)

    def _shorter_side(self) -> int:
        return round(min(self.size) / self.crop_pct)

    def replace(self, **changes) -> Preprocessing:
        """A copy with some fields changed; unknown names raise a ``ValueError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"Unknown preprocessing key(s) {unknown}; accepted: "
                f"{[f.name for f in dataclasses.fields(self)]}."
            )
        return dataclasses.replace(self, **changes)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] rounded to the uint8 levels 0..255; integer images in [0, 255] cast."""
    if images.is_floating_point():
        images = images.mul(255.0).round_()
    return images.clamp(0, 255).to(torch.uint8)


def identity(images: torch.Tensor) -> torch.Tensor:
    """Pass model-ready inputs through unchanged (``preprocessing="none"``)."""
    return images


def resolve_preprocessing(preprocessing, default: Preprocessing | None):
    """The callable that turns a [0, 1] batch into encoder input.

    ``preprocessing`` is the user's parameter (None, dict, Preprocessing, callable or
    ``"none"``); ``default`` is the encoder's own configuration (None when it has none).
    """
    if preprocessing is None:
        return default if default is not None else Preprocessing()
    if isinstance(preprocessing, str):
        if preprocessing == "none":
            return identity
        raise ValueError(
            f"preprocessing={preprocessing!r} is not accepted; use None, 'none', a dict of "
            "Preprocessing fields, a Preprocessing or a callable."
        )
    if isinstance(preprocessing, Preprocessing) or callable(preprocessing):
        return preprocessing
    if isinstance(preprocessing, dict):
        return (default if default is not None else Preprocessing()).replace(**preprocessing)
    raise TypeError(
        f"preprocessing must be None, 'none', a dict, a Preprocessing or a callable; "
        f"got {type(preprocessing).__name__}."
    )
