"""Early stopping on a validation score, with the best state kept (as scikit-learn's MLP)."""

from __future__ import annotations

import copy


class EarlyStopping:
    """Stop when the score has not improved by ``tol`` for ``n_iter_no_change`` epochs.

    Parameters
    ----------
    n_iter_no_change : int
        Epochs without improvement before stopping.
    tol : float
        Minimum improvement.

    Examples
    --------
    >>> from skretrieval.training import EarlyStopping
    >>> stopper = EarlyStopping(n_iter_no_change=2, tol=0.0)
    >>> [stopper.step(s, lambda: s) for s in [0.5, 0.7, 0.6, 0.65]]
    [False, False, False, True]
    >>> stopper.best_score, stopper.best_state
    (0.7, 0.7)
    """

    def __init__(self, n_iter_no_change: int, tol: float):
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.best_score = float("-inf")
        self.best_state = None
        self.no_improvement = 0

    def step(self, score: float, get_state) -> bool:
        """Record an epoch's score; True when training should stop."""
        self.no_improvement = self.no_improvement + 1 if score < self.best_score + self.tol else 0
        if score > self.best_score:
            self.best_score = score
            self.best_state = copy.deepcopy(get_state())
        return self.no_improvement >= self.n_iter_no_change
