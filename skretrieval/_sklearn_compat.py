"""The one place that imports scikit-learn's semi-private helpers.

scikit-learn moves these between releases; keeping the imports here means a version
change touches one file.
"""

from sklearn.base import _fit_context
from sklearn.utils import ClassifierTags, Tags, TargetTags, TransformerTags
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_params,
)
from sklearn.utils.validation import validate_data

__all__ = [
    "ClassifierTags",
    "HasMethods",
    "Interval",
    "InvalidParameterError",
    "Options",
    "StrOptions",
    "Tags",
    "TargetTags",
    "TransformerTags",
    "_fit_context",
    "validate_data",
    "validate_params",
]
