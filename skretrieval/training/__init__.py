"""Fine-tuning in ``fit``: the loop, its data, batch augments, schedule, early stopping."""

from ._batch_augments import CutMix, Mixup, build_batch_augments
from ._data import CachedFeatures, Images, load_images
from ._early_stopping import EarlyStopping
from ._history import History
from ._image_augment import build_train_transform, random_resized_crop
from ._loop import Trainer, TrainingConfig, compute_loss
from ._mixin import TRAINING_CONSTRAINTS, FineTuneMixin
from ._schedule import build_scheduler, warmup_cosine

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
    "build_batch_augments",
    "build_scheduler",
    "build_train_transform",
    "compute_loss",
    "load_images",
    "random_resized_crop",
    "warmup_cosine",
]
