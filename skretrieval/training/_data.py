"""What a training batch is made of: cached features (frozen backbone) or images (all)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._encoding import _preprocess_batch, output_features


class CachedFeatures:
    """``fine_tune="head"``: the gallery was encoded once; a batch is rows of its features.

    The backbone is never called during training.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.training import CachedFeatures
    >>> CachedFeatures(np.eye(3), "cpu").inputs([2, 0], train=True)
    tensor([[0., 0., 1.],
            [1., 0., 0.]])
    """

    has_images = False

    def __init__(self, features: np.ndarray, device):
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)

    def __len__(self) -> int:
        return len(self.features)

    def inputs(self, idx, *, train: bool, rng=None) -> torch.Tensor:
        return self.features[torch.as_tensor(idx, device=self.features.device)]

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def modules(self) -> list:
        return []

    def train(self, mode: bool) -> None:
        """Nothing to switch: the backbone is not part of training."""


class Images:
    """``fine_tune="all"``: decoded images, preprocessed, augmented and encoded per batch.

    Parameters
    ----------
    images : Tensor (n, C, H, W) or list of (C, H, W) tensors
        uint8 or float in [0, 1].
    encoder : nn.Module
        Trained in place.
    preprocess : callable
        The encoder's preprocessing (resize, normalise).
    transform : callable or None
        Train-time augmentation ``(x, rng) -> x`` applied after preprocessing.

    Examples
    --------
    >>> import torch
    >>> from skretrieval import Preprocessing
    >>> from skretrieval.training import Images
    >>> encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> data = Images(torch.rand(4, 3, 6, 6), encoder, Preprocessing(size=8), None, "cpu")
    >>> data.backbone(data.inputs([0, 3], train=False)).shape
    torch.Size([2, 3])
    """

    has_images = True

    def __init__(self, images, encoder: nn.Module, preprocess, transform, device):
        self.images, self.encoder, self.preprocess = images, encoder, preprocess
        self.transform, self.device = transform, device

    def __len__(self) -> int:
        return len(self.images)

    def inputs(self, idx, *, train: bool, rng=None) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            batch = self.images[torch.as_tensor(idx)]
        else:
            batch = [self.images[i] for i in idx]
        x = _preprocess_batch(batch, self.preprocess, self.device)
        if train and self.transform is not None:
            x = self.transform(x, rng)
        return x

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return output_features(self.encoder(x))

    def modules(self) -> list:
        return [self.encoder]

    def train(self, mode: bool) -> None:
        """Training mode for the encoder, except BatchNorm, which keeps its running statistics.

        Batch statistics of small fine-tuning batches differ from the pretrained running
        statistics (which, with a small momentum, barely move in a few epochs), so training in
        BatchNorm's training mode and evaluating in its evaluation mode would see two different
        networks. Frozen statistics keep them one network; BatchNorm's affine weights still
        train.
        """
        self.encoder.train(mode)
        if mode:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def load_images(source, batch_size: int):
    """Read every image of an ``ImageInput`` once: ``(images, labels or None)``.

    Images of one shape are stacked into a tensor, others kept as a list.
    """
    images, labels = [], []
    for batch, batch_labels in source.batches(batch_size):
        images.extend(batch.unbind(0) if isinstance(batch, torch.Tensor) else batch)
        labels.append(batch_labels)
    if not images:
        raise ValueError(f"{source.description} yielded no image; X must hold at least one sample.")
    if len({tuple(im.shape) for im in images}) == 1 and len({im.dtype for im in images}) == 1:
        images = torch.stack(images)
    all_labels = None if any(lab is None for lab in labels) else np.concatenate(labels)
    return images, all_labels
