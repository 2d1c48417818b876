"""Fine-tuning inside ``fit``: the estimator side of training (parameters -> Trainer -> fitted state)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import column_or_1d
from torch import nn

from .._neighbors import _aligned_labels
from .._sklearn_compat import Interval, StrOptions
from ..heads import HEAD_NAMES, Projection, build_head, head_options
from ..heads._registry import _losses
from ..io import FeatureInput, read_input
from ..search import get_similarity
from ._batch_augments import build_batch_augments
from ._data import CachedFeatures, Images, load_images
from ._history import History
from ._image_augment import build_train_transform
from ._loop import Trainer, TrainingConfig, check_mixing

TRAINING_CONSTRAINTS = {
    "head": [None, StrOptions(set(HEAD_NAMES)), callable],
    "head_params": [None, dict],
    "embedding_dim": [None, Interval(Integral, 1, None, closed="left")],
    "fine_tune": [StrOptions({"head", "all"})],
    "batch_augments": [None, StrOptions({"mixup", "cutmix"}), list, tuple, dict],
    "train_transform": [None, StrOptions({"crop"}), callable],
    "max_epochs": [Interval(Integral, 1, None, closed="left")],
    "lr": [Interval(Real, 0, None, closed="neither")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "lr_schedule": [StrOptions({"cosine", "constant"})],
    "warmup_epochs": [Interval(Real, 0, None, closed="left")],
    "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="left")],
    "random_state": ["random_state"],
    "warm_start": ["boolean"],
}

_FITTED = ("head_", "history_", "loss_curve_", "validation_scores_", "best_validation_score_", "n_iter_")


class FineTuneMixin:
    """Train a projection (and with ``fine_tune="all"`` the encoder) with a metric-learning head.

    Expects the estimator to have ``encoder_``, ``preprocessing_``, ``device_`` (from
    ``EncoderMixin``) and the parameters in :data:`TRAINING_CONSTRAINTS`.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever
    >>> rng = np.random.default_rng(0)
    >>> y = np.arange(30) % 3
    >>> X = rng.normal(size=(30, 5)) + 3 * np.eye(5)[y]
    >>> retriever = ImageRetriever("precomputed", head="arcface", embedding_dim=4, max_epochs=2,
    ...                            random_state=0).fit(X, y)
    >>> retriever.prototype_.shape, retriever.n_iter_
    ((30, 4), 2)
    """

    def _check_training(self) -> bool:
        """Validate the training parameters before any work; True when warm-starting."""
        if self.head is None:
            return False
        build_batch_augments(self.batch_augments, self.fine_tune)
        if isinstance(self.head, str):
            accepted = head_options(self.head)
            unknown = sorted(set(self.head_params or {}) - set(accepted))
            if unknown:
                raise ValueError(f"head_params {unknown} are not options of head={self.head!r}; accepted: {accepted}.")
            if self.batch_augments:
                check_mixing(_losses()[self.head], True)
        else:
            if self.head_params:
                raise ValueError(
                    f"head_params={self.head_params!r} only applies to a named head; configure your "
                    f"own head ({type(self.head).__name__}) directly."
                )
            if self.batch_augments:
                check_mixing(self.head, True)
        encoder = self._options.encoder
        if self.fine_tune == "all" and (isinstance(encoder, str) and encoder == "precomputed"):
            raise ValueError(
                "fine_tune='all' trains the encoder, but encoder='precomputed' has none; use "
                "fine_tune='head' to train a projection on the given features."
            )
        if self.fine_tune == "all" and not isinstance(encoder, (str, nn.Module)):
            raise ValueError(
                f"fine_tune='all' trains the encoder, but {type(encoder).__name__} is a plain "
                "callable without parameters; pass an nn.Module, or use fine_tune='head'."
            )
        return bool(self.warm_start) and getattr(self, "projection_", None) is not None

    def _fit_embedding_images(self, X, y, warm: bool) -> None:
        """``fine_tune="all"``: train ``encoder_`` and the projection on the images of ``X``."""
        source = read_input(X, on_error=self._options.on_error)
        if isinstance(source, FeatureInput):
            raise ValueError(
                "fine_tune='all' trains the encoder on images, but X is a feature matrix; pass "
                "images, or use fine_tune='head'."
            )
        # unreadable files are left out, as the encoding of the gallery leaves them out
        images, source_labels = load_images(source, self._options.batch_size)
        labels = source_labels if y is None else _aligned_labels(y, len(images), source.skipped)
        codes, n_classes = self._training_codes(labels, len(images), warm)
        self.encoder_.requires_grad_(True)
        transform = build_train_transform(self.train_transform)
        data = Images(images, self.encoder_, self.preprocessing_, transform, self.device_)
        self._train(data, codes, n_classes, warm)

    def _fit_embedding(self, features: np.ndarray, labels, warm: bool) -> None:
        """``fine_tune="head"``: train the projection on cached features; clear it with no head."""
        if self.head is None:
            self.projection_ = None
            for name in _FITTED:
                self.__dict__.pop(name, None)
            return
        if self.fine_tune != "head":
            return
        codes, n_classes = self._training_codes(labels, len(features), warm)
        self._train(CachedFeatures(features, self.device_), codes, n_classes, warm)

    def _embed(self, features: np.ndarray) -> np.ndarray:
        """Encoder features -> the learned embedding (unchanged without a head)."""
        projection = getattr(self, "projection_", None)
        return features if projection is None else projection.project(features)

    def _training_codes(self, labels, n: int, warm: bool):
        if labels is None:
            raise ValueError(
                f"head={self.head!r} learns from labels, but fit got no y; pass y (or a Dataset "
                "yielding (image, label) pairs), or set head=None."
            )
        labels = column_or_1d(labels, warn=True)
        if len(labels) != n:
            raise ValueError(f"X has {n} samples but y has {len(labels)}; they must match.")
        classes, codes = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"head={self.head!r} needs at least 2 classes in y to learn an embedding; got 1 class "
                f"({classes.tolist()}). Give labels of several classes, or set head=None."
            )
        if warm and not np.array_equal(classes, getattr(self, "classes_", classes)):
            raise ValueError(
                "warm_start=True continues the previous training, which had classes "
                f"{self.classes_.tolist()}; this y has {classes.tolist()}. Use the same classes or "
                "warm_start=False."
            )
        return codes, len(classes)

    def _train(self, data, codes: np.ndarray, n_classes: int, warm: bool) -> None:
        device = self.device_
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            if warm:
                projection, head, history = self.projection_, self.head_, History(self.history_)
            else:
                projection = Projection(self._backbone_width(data), self.embedding_dim)
                head = build_head(self.head, self.head_params, projection.linear.out_features, n_classes)
                history = History()
            projection.to(device)
            if isinstance(head, nn.Module):
                head.to(device)
            augments = build_batch_augments(self.batch_augments, self.fine_tune)
            check_mixing(head, augments)
            config = TrainingConfig(
                max_epochs=self.max_epochs, batch_size=self._options.batch_size, lr=self.lr,
                weight_decay=self.weight_decay, lr_schedule=self.lr_schedule,
                warmup_epochs=self.warmup_epochs, backbone_lr_scale=self.backbone_lr_scale,
                batch_augments=augments, early_stopping=self.early_stopping,
                validation_fraction=self.validation_fraction, n_iter_no_change=self.n_iter_no_change,
                tol=self.tol, verbose=self.verbose,
            )
            trainer = Trainer(
                data, projection, head, config, similarity=get_similarity(self.similarity_fn),
                rng=np.random.default_rng(seed), device=device,
            )
            trainer.fit_loop(codes, history)
        self.projection_ = projection.cpu().eval()
        self.head_ = head.cpu().eval() if isinstance(head, nn.Module) else head
        self.history_ = history
        self.loss_curve_ = history.column("loss")
        self.validation_scores_ = history.column("valid_score") if self.early_stopping else None
        self.best_validation_score_ = max(self.validation_scores_) if self.early_stopping else None
        self.n_iter_ = len(history)

    @staticmethod
    def _backbone_width(data) -> int:
        if not data.has_images:
            return data.features.shape[1]
        for module in data.modules():
            module.eval()
        with torch.inference_mode():
            return data.backbone(data.inputs(np.arange(1), train=False)).shape[1]
