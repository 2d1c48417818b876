"""The package version and the check of pickles from other versions (imports nothing heavy)."""

import warnings

__version__ = "0.1.0"


class InconsistentVersionWarning(UserWarning):
    """A model pickled by another skretrieval version is being unpickled.

    As scikit-learn's warning of the same name: the model may behave differently or break.
    Files written by :meth:`ImageRetriever.save` are checked by :func:`load` instead.

    Parameters
    ----------
    original_version : str
        The skretrieval version that pickled the model.
    current_version : str
        The version unpickling it.

    Attributes
    ----------
    original_version : str
    current_version : str

    Examples
    --------
    >>> import warnings
    >>> from skretrieval import InconsistentVersionWarning
    >>> warnings.simplefilter("error", InconsistentVersionWarning)  # refuse such pickles
    >>> InconsistentVersionWarning(original_version="0.0.1", current_version="0.1.0").original_version
    '0.0.1'
    """

    def __init__(self, *, original_version, current_version):
        self.original_version = original_version
        self.current_version = current_version
        super().__init__(
            f"this model was pickled with skretrieval {original_version} and is unpickled with "
            f"{current_version}; it may give different results or fail. Re-fit it, or save it "
            "with ImageRetriever.save, which is checked on load."
        )


def check_pickled_version(original_version) -> None:
    """Warn (:class:`InconsistentVersionWarning`) when a pickle comes from another version."""
    if original_version is not None and original_version != __version__:
        warnings.warn(
            InconsistentVersionWarning(original_version=original_version, current_version=__version__),
            stacklevel=3,
        )
