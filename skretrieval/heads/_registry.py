"""``head=`` names and how a head (loss module) is built from them."""

from __future__ import annotations

import copy
import inspect

from torch import nn

from ..losses import ArcFaceLoss, SoftmaxLoss, SupConLoss, TripletLoss


def _losses():
    return {"linear": SoftmaxLoss, "arcface": ArcFaceLoss, "triplet": TripletLoss, "supcon": SupConLoss}


HEAD_NAMES = ("linear", "arcface", "triplet", "supcon")


def head_options(name: str) -> list[str]:
    """The ``head_params`` keys accepted by head ``name``.

    Parameters
    ----------
    name : {"linear", "arcface", "triplet", "supcon"}

    Returns
    -------
    options : list of str
        The keyword arguments of the head's loss, beyond the sizes ``fit`` fills in.

    Examples
    --------
    >>> from skretrieval.heads import head_options
    >>> "margin" in head_options("arcface")
    True
    """
    signature = inspect.signature(_losses()[name].__init__)
    return [p for p in signature.parameters if p not in ("self", "embedding_dim", "n_classes")]


def build_head(head, head_params: dict | None, embedding_dim: int, n_classes: int):
    """The loss module for ``head=`` (a name, or the user's module/callable, copied).

    Parameters
    ----------
    head : {"linear", "arcface", "triplet", "supcon"}, nn.Module or callable
        A head name, or the user's own ``head(embeddings, labels) -> loss`` (a module is
        deep-copied, so training never changes the caller's object).
    head_params : dict or None
        Options of a named head (see :func:`head_options`); must be empty for your own head.
    embedding_dim : int
        Width of the embeddings the head receives.
    n_classes : int
        Number of classes, for heads with class weights.

    Returns
    -------
    head : nn.Module or callable
        The loss to train with.

    Examples
    --------
    >>> from skretrieval.heads import build_head
    >>> build_head("arcface", {"margin": 0.3}, embedding_dim=8, n_classes=4).margin
    0.3
    """
    params = dict(head_params or {})
    if not isinstance(head, str):
        if params:
            raise ValueError(
                f"head_params={head_params!r} only applies to a named head; configure your own "
                f"head module ({type(head).__name__}) directly."
            )
        return copy.deepcopy(head) if isinstance(head, nn.Module) else head
    losses = _losses()
    if head not in losses:
        raise ValueError(f"Unknown head {head!r}; accepted: {list(HEAD_NAMES)}, an nn.Module or None.")
    accepted = head_options(head)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"head_params {unknown} are not options of head={head!r}; accepted: {accepted}.")
    cls = losses[head]
    if "n_classes" in inspect.signature(cls.__init__).parameters:
        return cls(embedding_dim, n_classes, **params)
    return cls(**params)
