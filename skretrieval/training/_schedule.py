"""Learning-rate schedules, as multipliers of the base rate per optimisation step."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from ``1 / (warmup_steps + 1)`` to 1, then cosine decay to 0.

    Examples
    --------
    >>> from skretrieval.training import warmup_cosine
    >>> [round(warmup_cosine(s, 2, 6), 3) for s in range(6)]
    [0.333, 0.667, 1.0, 0.854, 0.5, 0.146]
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int) -> LambdaLR:
    """``lr_schedule="cosine"`` (with warm-up) or ``"constant"`` (warm-up, then flat)."""
    if schedule == "cosine":
        return LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    if schedule == "constant":
        return LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup_steps + 1)))
    raise ValueError(f"lr_schedule={schedule!r} is not accepted; use 'cosine' or 'constant'.")
