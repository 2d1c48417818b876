"""Fine-tuning in ``fit``: the loop, batch augments, image augmentation, schedule, early stopping."""

from ._batch_augments import CutMix, Mixup
from ._data import CachedFeatures, Images
from ._early_stopping import EarlyStopping
from ._history import History
from ._image_augment import random_resized_crop
from ._loop import Trainer, TrainingConfig
from ._mixin import TRAINING_CONSTRAINTS, FineTuneMixin
from ._schedule import warmup_cosine

__all__ = [
    "TRAINING_CONSTRAINTS",
    "CachedFeatures",
    "CutMix",
    "EarlyStopping",
    "FineTuneMixin",
    "History",
    "Images",
    "Mixup",
    "Trainer",
    "TrainingConfig",
    "random_resized_crop",
    "warmup_cosine",
]
