"""How raw images become the batch an encoder expects.

A :class:`Preprocessing` is the pretrained configuration of an encoder (input size, resize
policy, mean and std). Built-in encoders carry their own; users override it with a dict, a
:class:`Preprocessing`, a callable, or ``"none"`` when their inputs are already model-ready.
"""

from __future__ import annotations

import dataclasses
import math
import platform
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
        if images.dtype != torch.uint8:
            images = to_uint8(images)
        if self.interpolation == "bicubic" or self._enlarges(*images.shape[-2:]):
            images = images.float().div_(255.0)
        if self.resize_mode == "stretch":
            images = resize(images, self.size, self.interpolation)
        else:
            height, width = images.shape[-2:]
            images = resize(images, _shorter_side_to(height, width, self._shorter_side()), self.interpolation)
            images = center_crop(images, self.size)
        if not images.is_floating_point():
            images = images.float().div_(255.0)
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return images.sub(mean).div_(std)

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


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """``images`` (``(..., C, H, W)``) resized to ``size``, as torchvision's ``resize`` with
    ``antialias=True`` computes it (tests compare the two pixel for pixel), without importing
    torchvision: that import alone took ~1.8 s of a one-query search.

    uint8 images are resized by torch's native uint8 kernel where torchvision would use it
    (bilinear on an AVX2/AVX-512 or Arm CPU), else as float32 and rounded back; an image
    already of that size is returned as it is.
    """
    height, width = images.shape[-2:]
    if (height, width) == tuple(size) or images.numel() == 0:
        return images.reshape(*images.shape[:-2], *size) if images.numel() == 0 else images
    smooth = interpolation in ("bilinear", "bicubic")
    dtype = images.dtype
    cast = dtype not in (torch.float32, torch.float64) and not (
        interpolation == "nearest" or (interpolation == "bilinear" and _native_uint8_bilinear(images))
    )
    shape = images.shape
    batch = images.reshape(-1, *shape[-3:])
    if cast:
        batch = batch.float()
    elif batch.dtype == torch.uint8 and smooth:
        # torch's uint8 kernel works channels-last; a contiguous batch resized to 1 x 1
        # trips an internal assertion of torch 2.x.
        batch = batch.contiguous(memory_format=torch.channels_last)
    batch = torch.nn.functional.interpolate(
        batch, size=list(size), mode=interpolation, align_corners=False if smooth else None, antialias=smooth
    )
    if cast:
        if interpolation == "bicubic" and dtype == torch.uint8:
            batch = batch.clamp_(0, 255)
        batch = batch.round_().to(dtype)
    return batch.reshape(*shape[:-2], *size)


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre ``size`` of ``images``, zero-padded where it is larger, as torchvision's
    ``center_crop``."""
    crop_h, crop_w = size
    height, width = images.shape[-2:]
    if crop_h > height or crop_w > width:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        padding = (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2)
        images = torch.nn.functional.pad(images, padding, value=0.0)
        height, width = images.shape[-2:]
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return images[..., top : top + crop_h, left : left + crop_w]


def _shorter_side_to(height: int, width: int, shorter: int) -> tuple[int, int]:
    """The size with the shorter side ``shorter`` and the aspect ratio kept (truncated, as
    torchvision rounds a one-number resize)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def _native_uint8_bilinear(images: torch.Tensor) -> bool:
    if images.device.type != "cpu":
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


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
