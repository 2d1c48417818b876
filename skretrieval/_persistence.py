"""Safe save/load of a fitted :class:`ImageRetriever`: JSON, safetensors and ``.npy``, never pickle.

A model file is a zip archive holding

* ``meta.json``: ``format_version``, the class, the skretrieval version, the parameters
  (``get_params``), the device it was fitted on, how the encoder is stored and the fitted
  scalars (``threshold_``, ``outlier_label_``);
* ``arrays.safetensors``: ``prototype_`` and the label codes;
* ``labels.npy``/``ids.npy``/``classes.npy``: labels and ids (strings too), read with
  ``allow_pickle=False``;
* ``weights.safetensors``: the encoder's ``state_dict`` (when it is an ``nn.Module``).

No code is ever loaded from the file: a built-in encoder is rebuilt by name and its weights
loaded; a user's module or callable is passed again as ``load(path, encoder=...)``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1
_CLASSES = ("ImageRetriever",)
_ARRAY_ATTRIBUTES = ("prototype_labels_", "prototype_ids_", "classes_")
_SCALAR_ATTRIBUTES = ("threshold_", "outlier_label_")  # fitted JSON values, in meta["fitted"]


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
    from ._version import __version__

    if original_version is not None and original_version != __version__:
        warnings.warn(
            InconsistentVersionWarning(original_version=original_version, current_version=__version__),
            stacklevel=3,
        )


def save(estimator, path) -> Path:
    """Write a fitted ``estimator`` to the zip archive ``path`` (see the module docstring)."""
    from safetensors.numpy import save as save_arrays
    from safetensors.torch import save as save_tensors
    from sklearn.utils.validation import check_is_fitted

    from ._version import __version__

    check_is_fitted(estimator)
    if getattr(estimator, "projection_", None) is not None or getattr(estimator, "head", None) is not None:
        raise ValueError(
            "save does not store fine-tuned heads yet; persist this retriever with joblib.dump "
            "(pickle: load only files you trust), or save one fitted with head=None."
        )
    params = estimator.get_params(deep=False)
    encoder = params["encoder"]
    encoder_kind = "name" if isinstance(encoder, str) else "module" if isinstance(encoder, nn.Module) else "callable"
    if encoder_kind != "name":
        params["encoder"] = None  # rebound by load(path, encoder=...)
    params = {name: _jsonable(name, value) for name, value in params.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "class": type(estimator).__name__,
        "skretrieval_version": __version__,
        "params": params,
        "encoder_kind": encoder_kind,
        "encoder_class": None if encoder_kind == "name" else type(encoder).__qualname__,
        "fitted_device": str(estimator.device_),
        "n_features_in": getattr(estimator, "n_features_in_", None),
        "skipped": [list(map(_json_item, s)) for s in getattr(estimator, "skipped_", [])],
        "fitted": {name: _json_item(getattr(estimator, name, None)) for name in _SCALAR_ATTRIBUTES},
    }
    arrays = {
        "prototype_": np.ascontiguousarray(estimator.prototype_, dtype=np.float32),
        "label_codes": np.ascontiguousarray(estimator._label_codes, dtype=np.int64),
    }
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=1))
        archive.writestr("arrays.safetensors", save_arrays(arrays))
        for name in _ARRAY_ATTRIBUTES:
            archive.writestr(f"{name}.npy", _npy_bytes(getattr(estimator, name)))
        if isinstance(estimator.encoder_, nn.Module):
            state = {k: v.detach().cpu().contiguous() for k, v in estimator.encoder_.state_dict().items()}
            archive.writestr("weights.safetensors", save_tensors(state))
    return path


def load(path, *, encoder=None, device=None):
    """Load a model written by :meth:`ImageRetriever.save`, without unpickling anything.

    Parameters
    ----------
    path : str or Path
        The model file (a zip archive; ``.skr`` by convention).
    encoder : nn.Module or callable, default=None
        Required when the model was fitted with your own module or callable: the file holds
        its weights, never its code. The module must have the same architecture; its copy
        receives the saved weights.
    device : str or torch.device, default=None
        Where to run; None keeps the saved ``device`` parameter, falling back to the CPU
        when it names a GPU this machine lacks.

    Returns
    -------
    estimator : ImageRetriever
        Fitted; ``kneighbors`` and ``predict`` give the saved model's results.

    Examples
    --------
    >>> import tempfile, os
    >>> import skretrieval
    >>> model = skretrieval.ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0], [0.0, 1.0]], ["a", "b"])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.skr")
    >>> _ = model.save(path)
    >>> skretrieval.load(path).predict([[0.9, 0.1]])
    array(['a'], dtype='<U1')
    """
    from safetensors.numpy import load as load_arrays
    from safetensors.torch import load as load_tensors

    from ._device import resolve_device
    from ._retriever import ImageRetriever, _SearchCache

    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{str(path)!r} is not a skretrieval model file (a zip archive written by save): {exc}") from exc
    with archive:
        try:
            meta = json.loads(archive.read("meta.json"))
            if not isinstance(meta, dict):
                raise ValueError("meta.json is not an object")
            version = meta.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"format_version {version!r} is not supported (this skretrieval reads "
                    f"{FORMAT_VERSION}); load it with the skretrieval version that wrote it "
                    f"({meta.get('skretrieval_version')!r})."
                )
            if meta.get("class") not in _CLASSES:
                raise ValueError(f"class {meta.get('class')!r} is unknown; accepted: {', '.join(_CLASSES)}.")
            arrays = load_arrays(archive.read("arrays.safetensors"))
            extra = {
                name: np.load(io.BytesIO(archive.read(f"{name}.npy")), allow_pickle=False)
                for name in _ARRAY_ATTRIBUTES
            }
            weights = (
                load_tensors(archive.read("weights.safetensors"))
                if "weights.safetensors" in archive.namelist() else None
            )
        except ValueError as exc:
            raise ValueError(f"cannot load model file {str(path)!r}: {exc}") from exc
        except Exception as exc:  # safetensors, numpy and zipfile raise their own kinds
            raise ValueError(
                f"cannot load model file {str(path)!r}: it is damaged or not written by "
                f"skretrieval's save ({type(exc).__name__}: {exc})."
            ) from exc

    params = dict(meta["params"])
    unknown = sorted(set(params) - set(ImageRetriever().get_params(deep=False)))
    if unknown:
        raise ValueError(
            f"{str(path)!r} has parameters {unknown} that this skretrieval does not know; it was "
            f"written by skretrieval {meta.get('skretrieval_version')!r}: load it with that version."
        )
    kind = meta.get("encoder_kind")
    if kind in ("module", "callable"):
        if encoder is None:
            raise ValueError(
                f"{str(path)!r} was fitted with your own encoder ({meta.get('encoder_class')}); the "
                "file holds its weights, not its code. Pass it: load(path, encoder=YourModule())."
            )
        params["encoder"] = encoder
    elif encoder is not None:
        raise ValueError(f"{str(path)!r} uses the built-in encoder {params['encoder']!r}; do not pass encoder=.")
    if device is not None:
        params["device"] = device
    estimator = ImageRetriever(**params)
    if kind == "name":
        estimator.set_params(weights=None)  # the saved weights follow: nothing downloaded
    try:
        device_ = resolve_device(estimator.device)
    except ValueError:
        device_ = torch.device("cpu")
    if device_.type == "cuda" and not torch.cuda.is_available():
        estimator.set_params(device="cpu")
    estimator._fit_encoder()
    estimator.set_params(weights=params["weights"])
    if weights is not None:
        if not isinstance(estimator.encoder_, nn.Module):
            raise ValueError(f"{str(path)!r} holds encoder weights, but encoder={encoder!r} is not an nn.Module.")
        try:
            estimator.encoder_.load_state_dict(weights)
        except RuntimeError as exc:
            raise ValueError(
                f"the saved weights do not fit the given encoder ({type(estimator.encoder_).__name__}): {exc}"
            ) from exc
        estimator.encoder_.to(estimator.device_).eval()
    if device is None and str(estimator.device) != meta["params"]["device"]:
        estimator.set_params(device=meta["params"]["device"])  # get_params stays as saved
    estimator.prototype_ = arrays["prototype_"]
    estimator._label_codes = arrays["label_codes"]
    estimator.prototype_labels_ = extra["prototype_labels_"]
    estimator.prototype_ids_ = extra["prototype_ids_"]
    estimator.classes_ = extra["classes_"]
    estimator.skipped_ = [tuple(s) for s in meta.get("skipped", [])]
    for name in _SCALAR_ATTRIBUTES:
        setattr(estimator, name, meta.get("fitted", {}).get(name))
    estimator._search_cache = _SearchCache()  # as fit leaves it
    if meta.get("n_features_in") is not None:
        estimator.n_features_in_ = int(meta["n_features_in"])
    return estimator


def _jsonable(name, value):
    if isinstance(value, (os.PathLike, torch.device)):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.loads(json.dumps(value))
        except TypeError:
            pass
    raise ValueError(
        f"parameter {name}={value!r} cannot be saved safely (only JSON values are); use a "
        "named option instead, or persist the model with joblib.dump (pickle: load only files "
        "you trust)."
    )


def _json_item(value):
    return value.item() if isinstance(value, np.generic) else value


def _npy_bytes(values) -> bytes:
    values = np.asarray(values)
    if values.dtype == object:
        kinds = {type(v) for v in values}
        if kinds <= {str, np.str_}:
            values = values.astype(str)
        else:
            raise ValueError(
                f"labels or ids of mixed types {sorted(k.__name__ for k in kinds)} cannot be saved "
                "without pickle; use strings or numbers, or joblib.dump."
            )
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()
