"""The fit loop, split into small steps as skorch does: fit_loop -> run_epoch -> train_step."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._progress import progress_bar
from ..losses import BaseLoss
from ._early_stopping import EarlyStopping
from ._history import History
from ._schedule import build_scheduler


@dataclass
class TrainingConfig:
    """The training parameters of :class:`~skretrieval.ImageRetriever`, gathered."""

    max_epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    backbone_lr_scale: float = 0.1
    batch_augments: list = field(default_factory=list)
    early_stopping: bool = False
    validation_fraction: float = 0.1
    n_iter_no_change: int = 5
    tol: float = 1e-4
    verbose: int = 0


class Trainer:
    """Trains ``projection`` (and the backbone, for image data) with the loss ``head``.

    Parameters
    ----------
    data : CachedFeatures or Images
        Where batches come from, and the backbone they go through.
    projection : nn.Module
        Backbone output -> embedding.
    head : nn.Module or callable
        ``head(embeddings, labels) -> loss``.
    config : TrainingConfig
    similarity : Similarity
        Scores validation Recall@1 when early stopping.
    rng : numpy.random.Generator
        Drives shuffling, the validation split and the batch augments.
    device : torch.device

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skretrieval.heads import Projection
    >>> from skretrieval.losses import ArcFaceLoss
    >>> from skretrieval.search import get_similarity
    >>> from skretrieval.training import CachedFeatures, History, Trainer, TrainingConfig
    >>> _ = torch.manual_seed(0)
    >>> features, codes = np.random.default_rng(0).random((40, 6), dtype=np.float32), np.arange(40) % 2
    >>> trainer = Trainer(
    ...     CachedFeatures(features, "cpu"), Projection(6, 4), ArcFaceLoss(4, 2),
    ...     TrainingConfig(max_epochs=3, batch_size=8), similarity=get_similarity("cosine"),
    ...     rng=np.random.default_rng(0), device=torch.device("cpu"),
    ... )
    >>> len(trainer.fit_loop(codes, History()))
    3
    """

    def __init__(self, data, projection, head, config: TrainingConfig, *, similarity, rng, device):
        self.data, self.projection, self.head, self.config = data, projection, head, config
        self.similarity, self.rng, self.device = similarity, rng, device
        self.progress = progress_bar(0, "training", verbose=0)  # fit_loop replaces it with one of its own

    # -- the loop ----------------------------------------------------------------------------
    def fit_loop(self, codes: np.ndarray, history: History) -> History:
        """Train for ``max_epochs`` (fewer when early stopping); returns ``history``."""
        cfg = self.config
        labels = torch.as_tensor(codes, dtype=torch.long, device=self.device)
        train_idx, valid_idx = self.split(codes)
        steps_per_epoch = max(1, len(self._batches(train_idx)))
        self.optimizer = self.initialize_optimizer()
        self.scheduler = build_scheduler(
            self.optimizer, cfg.lr_schedule, round(cfg.warmup_epochs * steps_per_epoch),
            cfg.max_epochs * steps_per_epoch,
        )
        stopper = None if valid_idx is None else EarlyStopping(cfg.n_iter_no_change, cfg.tol)
        self.progress = progress_bar(cfg.max_epochs * self._n_trained(train_idx), "training", cfg.verbose)
        try:
            for _ in range(cfg.max_epochs):
                start = time.perf_counter()
                row = {"epoch": len(history) + 1, "loss": self.run_epoch(train_idx, labels)}
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                if stopper is not None:
                    row["valid_score"] = self.validate(train_idx, valid_idx, codes)
                row["dur"] = time.perf_counter() - start
                history.record(**row)
                self.report(row)
                if stopper is not None and stopper.step(row["valid_score"], self.state_dict):
                    break
        finally:
            self.progress.close()
            self.set_train(False)
        if stopper is not None:
            self.load_state_dict(stopper.best_state)
        return history

    def run_epoch(self, train_idx: np.ndarray, labels: torch.Tensor) -> float:
        """One pass over shuffled training batches; the mean batch loss."""
        self.set_train(True)
        losses = []
        for idx in self._batches(self.rng.permutation(train_idx)):
            losses.append(self.train_step(idx, labels))
            self.progress.update(len(idx))
        return float(np.mean(losses)) if losses else float("nan")

    def train_step(self, idx: np.ndarray, labels: torch.Tensor) -> float:
        """Forward one batch (augmented, mixed), backpropagate, step optimiser and schedule."""
        x = self.data.inputs(idx, train=True, rng=self.rng)
        y = labels[torch.as_tensor(idx, device=labels.device)]
        mixed = None
        if self.config.batch_augments:
            augment = self.config.batch_augments[int(self.rng.integers(len(self.config.batch_augments)))]
            x, y, y_b, lam = augment(x, y, self.rng)
            mixed = (y_b, lam)
        loss = compute_loss(self.head, self.projection(self.data.backbone(x)), y, mixed)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss.item()}; lower lr (now {self.config.lr}) or the "
                "head's scale, or use fine_tune='head'."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def validate(self, train_idx, valid_idx, codes) -> float:
        """Recall@1 of the validation items queried against the training items."""
        from ..metrics import recall_at_k
        from ..search import topk_search

        gallery, queries = self.embed(train_idx), self.embed(valid_idx)
        _, nearest = topk_search(queries, gallery, 1, self.similarity, device=self.device)
        return recall_at_k(
            k=1, query_labels=codes[valid_idx], gallery_labels=codes[train_idx], ranked_indices=nearest
        )

    def embed(self, idx: np.ndarray) -> np.ndarray:
        """Embeddings of items ``idx`` in evaluation mode."""
        self.set_train(False)
        out = []
        with torch.inference_mode():
            for start in range(0, len(idx), self.config.batch_size):
                batch = idx[start : start + self.config.batch_size]
                x = self.data.inputs(batch, train=False)
                out.append(self.projection(self.data.backbone(x)).float().cpu().numpy())
        return np.concatenate(out)

    # -- pieces ------------------------------------------------------------------------------
    def initialize_optimizer(self) -> torch.optim.Optimizer:
        """AdamW: projection and head at ``lr``, the backbone at ``lr * backbone_lr_scale``."""
        cfg = self.config
        head = list(self.head.parameters()) if isinstance(self.head, nn.Module) else []
        groups = [{"params": list(self.projection.parameters()) + head, "lr": cfg.lr}]
        backbone = [p for m in self.data.modules() for p in m.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale})
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def split(self, codes: np.ndarray):
        """``(train_idx, valid_idx or None)``: a stratified hold-out when early stopping."""
        n = len(codes)
        if not self.config.early_stopping:
            return np.arange(n), None
        from sklearn.model_selection import train_test_split

        seed = int(self.rng.integers(2**31 - 1))
        try:
            train_idx, valid_idx = train_test_split(
                np.arange(n), test_size=self.config.validation_fraction, stratify=codes, random_state=seed
            )
        except ValueError:  # a class too small to stratify
            train_idx, valid_idx = train_test_split(
                np.arange(n), test_size=self.config.validation_fraction, random_state=seed
            )
        if len(valid_idx) == 0 or len(train_idx) < 2:
            raise ValueError(
                f"early_stopping with validation_fraction={self.config.validation_fraction} leaves "
                f"{len(train_idx)} training and {len(valid_idx)} validation items of {n}; give more "
                "items, change validation_fraction, or set early_stopping=False."
            )
        return np.sort(train_idx), np.sort(valid_idx)

    def set_train(self, mode: bool) -> None:
        for module in [self.projection, self.head]:
            if isinstance(module, nn.Module):
                module.train(mode)
        self.data.train(mode)

    def state_dict(self) -> list:
        modules = [self.projection, self.head, *self.data.modules()]
        return [m.state_dict() if isinstance(m, nn.Module) else None for m in modules]

    def load_state_dict(self, states: list) -> None:
        for module, state in zip([self.projection, self.head, *self.data.modules()], states):
            if state is not None:
                module.load_state_dict(state)

    def report(self, row: dict) -> None:
        if self.config.verbose:
            score = f"  valid Recall@1 {row['valid_score']:.4f}" if "valid_score" in row else ""
            self.progress.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}")
            # tqdm.write prints above the bar (to stdout, as before the bar existed)
            self.progress.write(
                f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}{score}  lr {row['lr']:.2e}  "
                f"{row['dur']:.1f}s",
                file=sys.stdout,
            )

    def _n_trained(self, train_idx: np.ndarray) -> int:
        """Items one epoch trains on (a last batch of one item is dropped)."""
        return sum(len(batch) for batch in self._batches(train_idx))

    def _batches(self, order: np.ndarray) -> list:
        size = self.config.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm and pair losses need 2 items
            batches.pop()
        return batches


def compute_loss(head, embeddings, labels, mixed=None) -> torch.Tensor:
    """Call a head with hard or mixed labels (see :class:`~skretrieval.losses.BaseLoss`)."""
    if isinstance(head, BaseLoss):
        return head(embeddings, labels, mixed=mixed)
    if mixed is None:
        return head(embeddings, labels)
    labels_b, lam = mixed
    return lam * head(embeddings, labels) + (1 - lam) * head(embeddings, labels_b)


def check_mixing(head, batch_augments) -> None:
    """Fail before training when batch augments mix labels the head cannot take."""
    if batch_augments and not getattr(head, "supports_mixed_labels", False):
        name = head.__name__ if isinstance(head, type) else type(head).__name__
        raise ValueError(
            f"batch_augments mix labels, which the head {name} cannot take (a "
            "mixed sample has no single class for pair-based losses). Use head='linear' or "
            "'arcface', set batch_augments=None, or give your head module the attribute "
            "supports_mixed_labels = True to be scored lam * loss(y) + (1 - lam) * loss(y_b)."
        )
