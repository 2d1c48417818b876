"""Training history: one dict per epoch, as skorch's ``History``."""

from __future__ import annotations


class History(list):
    """A list of per-epoch dicts (``epoch``, ``loss``, ``lr``, ``dur``, ``valid_score``).

    Examples
    --------
    >>> from skretrieval.training import History
    >>> history = History()
    >>> history.record(epoch=1, loss=0.5)
    >>> history.record(epoch=2, loss=0.25)
    >>> history.column("loss")
    [0.5, 0.25]
    """

    def record(self, **values) -> None:
        self.append(dict(values))

    def column(self, key: str) -> list:
        return [row[key] for row in self if key in row]
