"""Safe save/load of a fitted :class:`ImageRetriever`: JSON, safetensors and ``.npy``, never pickle.

A model file is a zip archive of uncompressed entries:

* ``meta.json``: ``format_version``, the class, the skretrieval version, the parameters
  (``get_params``; an ``ImageEncoder`` given as ``encoder=`` by its own options), the
  device it was fitted on, how the encoder and head are stored, and
  every fitted attribute that is a JSON value (``n_iter_``, ``history_``, ``skipped_``, ...);
* ``arrays.safetensors``: ``prototype_`` and the label codes;
* ``<attribute>.npy``: every other fitted array (``prototype_labels_``, ``prototype_ids_``,
  ``classes_``, ...; strings too), read with ``allow_pickle=False``;
* ``weights.safetensors``, ``projection_.safetensors``, ``head_.safetensors``: the
  ``state_dict`` of the encoder, the trained projection and the trained head (each when it
  is an ``nn.Module``).

A file is written beside the target and then renamed over it (``os.replace``), so an
interrupted save leaves the previous model file intact.

No code is ever loaded from the file: a built-in encoder or head is rebuilt by name and its
weights loaded; a user's module or callable is passed again as ``load(path, encoder=...,
head=...)``. Every entry is checked before it is read (:mod:`skretrieval.io._untrusted`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .io._untrusted import (
    FileFormatError,
    entry_pattern,
    map_safetensors,
    open_archive,
    read_json,
    read_npy,
    read_safetensors,
    refusing,
    write_safetensors,
)

FORMAT_VERSION = 2  # 2: fine-tuned models (projection_, head_) and every fitted attribute
_READABLE_VERSIONS = (1, 2)
_KIND = "skretrieval model file"
_MODULES = {"encoder_": "weights.safetensors", "projection_": "projection_.safetensors", "head_": "head_.safetensors"}
# Fitted attributes load rebuilds itself (from the parameters, or the entries above).
_REBUILT = {"encoder_", "preprocessing_", "device_", "projection_", "head_", "prototype_"}
_REQUIRED = ("meta.json", "arrays.safetensors", "prototype_labels_.npy", "prototype_ids_.npy", "classes_.npy")
_GALLERY_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}  # and gallery_dtype's names
_FITTED_NAME = re.compile(r"[a-z][a-z0-9_]*_")
_ENTRY = entry_pattern(
    r"meta\.json", r"arrays\.safetensors", *(re.escape(e) for e in _MODULES.values()), r"[a-z][a-z0-9_]*_\.npy"
)


def save(estimator, path) -> Path:
    """Write a fitted ``estimator`` to the zip archive ``path`` (see the module docstring)."""
    import zipfile

    from safetensors.torch import save as save_tensors
    from sklearn.utils.validation import check_is_fitted

    from ._encoder import ImageEncoder
    check_is_fitted(estimator)
    params = estimator.get_params(deep=False)
    options = None  # the encoding options of an ImageEncoder given as encoder=
    if isinstance(params["encoder"], ImageEncoder):
        options = params["encoder"].get_params(deep=False)
        params["encoder"] = options.pop("encoder")
    kinds = {role: _kind(params[role]) for role in ("encoder", "head")}
    classes = {role: None if kinds[role] in (None, "name") else type(params[role]).__qualname__ for role in kinds}
    for role, kind in kinds.items():
        if kind in ("module", "callable"):
            params[role] = None  # rebound by load(path, encoder=..., head=...)
    params = {name: _jsonable(f"parameter {name}", value) for name, value in params.items()}
    if options is not None:
        options = {name: _jsonable(f"parameter encoder__{name}", value) for name, value in options.items()}
    fitted, arrays, modules = _fitted_state(estimator)
    meta = {
        "format_version": FORMAT_VERSION,
        "class": type(estimator).__name__,
        "skretrieval_version": __version__,
        "params": params,
        "encoder_options": options,
        "encoder_kind": kinds["encoder"],
        "encoder_class": classes["encoder"],
        "head_kind": kinds["head"],
        "head_class": classes["head"],
        "head_n_classes": _head_n_classes(getattr(estimator, "head_", None)),
        "fitted_device": str(estimator.device_),
        "fitted": fitted,
    }
    prototype = estimator.prototype_  # float32 or float16 (gallery_dtype), maybe memory-mapped
    gallery = {
        "prototype_": prototype if prototype.dtype in _GALLERY_DTYPES else prototype.astype(np.float32),
        "label_codes": np.ascontiguousarray(estimator._label_codes, dtype=np.int64),
    }
    n_bytes = sum(a.size * a.dtype.itemsize for a in gallery.values()) + (1 << 20)  # + the header
    path = Path(path)
    with _replacing(path) as file, zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=1))
        # Streamed into the entry: a gallery larger than memory is never copied whole.
        with archive.open("arrays.safetensors", "w", force_zip64=n_bytes >= zipfile.ZIP64_LIMIT) as entry:
            write_safetensors(entry, gallery)
        for name, values in arrays.items():
            archive.writestr(f"{name}.npy", _npy_bytes(values))
        for name, module in modules.items():
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            archive.writestr(_MODULES[name], save_tensors(state))
    return path


@contextlib.contextmanager
def _replacing(path: Path):
    """A new file beside ``path`` that takes its place only once completely written.

    ``os.replace`` is atomic, so a save that fails or is killed leaves the previous file
    at ``path`` as it was: a model file is never half written. The file is written as
    ``.NAME.<random hex>.tmp`` in the same folder (a rename cannot cross file systems), removed
    on a failure; only a killed process leaves it behind. Through a symbolic link the file
    it points to is replaced; an existing file keeps its permission bits.
    """
    target = Path(os.path.realpath(path))
    mode = target.stat().st_mode & 0o7777 if target.is_file() else None
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never another file of that name; 0o666: the permissions the umask gives a new file
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _kind(value) -> str | None:
    """How a parameter's encoder or head is stored: by name, or rebound at load."""
    if value is None or isinstance(value, str):
        return None if value is None else "name"
    return "module" if isinstance(value, nn.Module) else "callable"


def _fitted_state(estimator):
    """The public fitted attributes, split into JSON values, arrays and modules.

    Generic on purpose: a new fitted attribute (a float ``threshold_``, an array) is saved
    and loaded without code here. Those load rebuilds itself are left out.
    """
    fitted, arrays, modules = {}, {}, {}
    for name, value in vars(estimator).items():
        if not _FITTED_NAME.fullmatch(name):
            continue
        if name in _MODULES:
            if isinstance(value, nn.Module):
                modules[name] = value
        elif name in _REBUILT:
            continue
        elif isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            fitted[name] = _jsonable(f"fitted attribute {name}", value)
    return fitted, arrays, modules


def _head_n_classes(head) -> int | None:
    """The class count a named head was built with, read from its classifier (None: it has none)."""
    classifier = getattr(head, "classifier", None)
    if classifier is None:
        return None
    return int(getattr(classifier, "n_classes", None) or classifier.out_features)


def read_model(path, cls, *, encoder=None, head=None, device=None, mmap=False):
    """The fitted ``cls`` estimator a model file holds (:func:`skretrieval.load` documents it)."""
    path = Path(path)
    meta, gallery, arrays, states = _read(path, cls, mmap)
    estimator = _rebuild(meta, cls, encoder, head, device, path)
    _load_modules(estimator, meta, states, gallery[0].shape[1], path)
    estimator.prototype_, estimator._label_codes = gallery
    for name, values in arrays.items():
        setattr(estimator, name, values)
    for name, value in meta["fitted"].items():
        setattr(estimator, name, _RESTORE.get(name, lambda v: v)(value))
    return estimator


def _read(path: Path, cls, mmap: bool = False):
    """Everything in the model file, checked: ``(meta, (prototype, codes), arrays, module states)``.

    ``mmap``: ``prototype`` is memory-mapped in the file, not read.
    """
    archive = open_archive(path, _KIND, _ENTRY)
    with archive, refusing(path, _KIND):
        infos = {info.filename: info for info in archive.infolist()}
        missing = [name for name in _REQUIRED if name not in infos]
        if missing:
            raise FileFormatError(path, _KIND, f"entries {missing} are missing")
        meta = _check_meta(read_json(archive, infos["meta.json"], path, _KIND), cls, path)
        reserved = sorted(n for n in infos if n.endswith(".npy") and n[:-4] in _REBUILT | set(_MODULES))
        if reserved:
            raise FileFormatError(path, _KIND, f"entries {reserved} would replace what load rebuilds")
        arrays = {n[:-4]: read_npy(archive, info, path, _KIND) for n, info in infos.items() if n.endswith(".npy")}
        read_gallery = map_safetensors if mmap else read_safetensors
        tensors = read_gallery(archive, infos["arrays.safetensors"], path, _KIND)
        states = {
            name: {key: _tensor(*value) for key, value in read_safetensors(archive, infos[entry], path, _KIND).items()}
            for name, entry in _MODULES.items() if entry in infos
        }
        gallery = _check_gallery(tensors, arrays, meta, path)
    return meta, gallery, arrays, states


def _check_meta(meta, cls, path: Path) -> dict:
    if not isinstance(meta, dict):
        raise FileFormatError(path, _KIND, "meta.json is not a JSON object")
    version = meta.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise FileFormatError(
            path, _KIND, f"format_version {version!r} is not supported (this skretrieval reads "
            f"{', '.join(map(str, _READABLE_VERSIONS))}); load it with the skretrieval version that "
            f"wrote it ({meta.get('skretrieval_version')!r})"
        )
    if meta.get("class") != cls.__name__:
        raise FileFormatError(path, _KIND, f"class {meta.get('class')!r} is unknown; accepted: {cls.__name__}")
    if not isinstance(meta.get("params"), dict):
        raise FileFormatError(path, _KIND, "meta.json holds no parameters")
    if version == 1:  # the first format kept two fitted attributes apart, and was closed-set
        meta["fitted"] = {"skipped_": meta.get("skipped", []), "threshold_": None, "outlier_label_": None}
        if meta.get("n_features_in") is not None:
            meta["fitted"]["n_features_in_"] = meta["n_features_in"]
    fitted = meta.get("fitted")
    if not isinstance(fitted, dict) or any(
        not _FITTED_NAME.fullmatch(name) or name in _REBUILT or name in _MODULES for name in fitted
    ):
        raise FileFormatError(path, _KIND, "meta.json lists fitted attributes that are not plain fitted values")
    return meta


def _check_gallery(tensors: dict, arrays: dict, meta: dict, path: Path):
    """``prototype_`` and the label codes, consistent with the labels, classes and ``gallery_dtype``."""
    if set(tensors) != {"prototype_", "label_codes"}:
        raise FileFormatError(path, _KIND, f"arrays.safetensors holds {sorted(tensors)}, not prototype_ and label_codes")
    (prototype, prototype_dtype), (codes, codes_dtype) = tensors["prototype_"], tensors["label_codes"]
    codes = np.array(codes)  # in memory (a memory-mapped file's codes are small)
    expected_dtype = _GALLERY_DTYPES.get(np.dtype(meta["params"].get("gallery_dtype", "float32")))
    if prototype_dtype != expected_dtype or prototype.ndim != 2:
        raise FileFormatError(
            path, _KIND, f"prototype_ is {prototype_dtype}{list(prototype.shape)}, not 2-D {expected_dtype} "
            f"(gallery_dtype={meta['params'].get('gallery_dtype', 'float32')!r})"
        )
    n = len(prototype)
    for name in ("prototype_labels_", "prototype_ids_"):
        if arrays[name].shape != (n,):
            raise FileFormatError(path, _KIND, f"{name} has shape {arrays[name].shape} for a gallery of {n}")
    stats = arrays.get("prototype_file_stats_")  # absent in older files and galleries of no files
    if stats is not None and (stats.shape != (n, 2) or stats.dtype != np.int64):
        raise FileFormatError(
            path, _KIND, f"prototype_file_stats_ is {stats.dtype}{list(stats.shape)}, not int64 [{n}, 2]"
        )
    classes, expected = np.unique(arrays["prototype_labels_"], return_inverse=True)
    if codes_dtype != "I64" or not (np.array_equal(codes, expected) and np.array_equal(arrays["classes_"], classes)):
        raise FileFormatError(path, _KIND, "its label codes, labels and classes_ disagree")
    return prototype, codes


def _tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "BF16" else tensor


def _rebuild(meta: dict, cls, encoder, head, device, path: Path):
    """The estimator of the saved parameters, its encoder built (weights not yet loaded)."""
    from ._device import resolve_device
    from ._encoder import ImageEncoder
    params, options = dict(meta["params"]), meta.get("encoder_options")
    known, known_options = set(cls().get_params(deep=False)), set(ImageEncoder().get_params(deep=False))
    moved = {name: params.pop(name) for name in list(params) if name not in known and name in known_options}
    if moved:  # written when the encoding options were the retriever's own
        options = {**moved, **(options or {})}
    unknown = sorted(set(params) - known) + sorted(f"encoder__{n}" for n in set(options or {}) - known_options)
    if unknown or not isinstance(options, (dict, type(None))):
        raise FileFormatError(
            path, _KIND, f"it has parameters {unknown} that skretrieval {__version__} does not know; it was "
            f"written by skretrieval {meta.get('skretrieval_version')!r}: load it with that version"
        )
    for role, given in (("encoder", encoder), ("head", head)):
        saved = params.get(role)
        kind = meta.get(f"{role}_kind", _kind(saved))
        if kind in ("module", "callable"):
            if given is None:
                raise ValueError(
                    f"{str(path)!r} was fitted with your own {role} ({meta.get(f'{role}_class')}); the "
                    f"file holds its weights, not its code. Pass it: load(path, {role}=YourModule())."
                )
            params[role] = given
        elif given is not None:
            raise ValueError(f"{str(path)!r} uses the {role} {saved!r}; do not pass {role}=.")
    if device is not None:
        options = {**(options or {}), "device": device}
    inner = params.pop("encoder")
    estimator = cls(inner if options is None else ImageEncoder(inner, **options), **params)
    # Built without loading or downloading weights (the saved ones follow), on a device
    # this machine has; get_params stays as saved.
    building = {**(options or {}), "weights": None}
    try:
        device_ = resolve_device(building.get("device", "auto"))
    except ValueError:
        device_ = torch.device("cpu")
    if device_.type == "cuda" and not torch.cuda.is_available():
        building["device"] = "cpu"
    given_encoder, estimator.encoder = estimator.encoder, ImageEncoder(inner, **building)
    try:
        with refusing(path, _KIND):  # a name or option this version lacks
            estimator._fit_encoder()
    finally:
        estimator.encoder = given_encoder
    return estimator


def _load_modules(estimator, meta: dict, states: dict, width: int, path: Path) -> None:
    """Give the encoder, the projection and the head their saved weights."""
    from .heads import Projection, build_head

    encoder_ = estimator.encoder_
    if isinstance(encoder_, nn.Module) or "encoder_" in states:
        if not isinstance(encoder_, nn.Module):
            raise ValueError(f"{str(path)!r} holds encoder weights, but encoder={estimator.encoder!r} is not an nn.Module.")
        _load_state(encoder_, states, "encoder_", path)
        encoder_.to(estimator.device_).eval()
    if (estimator.head is None) != ("projection_" not in states):
        raise FileFormatError(path, _KIND, "its head parameter and its projection weights disagree")
    estimator.projection_ = None
    if estimator.head is None:
        return
    weight = states["projection_"].get("linear.weight")
    if weight is None or weight.shape[:1] != (width,) or weight.ndim != 2:
        raise FileFormatError(path, _KIND, f"its projection does not map to the {width}-d gallery embeddings")
    estimator.projection_ = Projection(weight.shape[1], width)
    _load_state(estimator.projection_, states, "projection_", path)
    estimator.projection_.eval()
    with refusing(path, _KIND):  # head_params this version rejects
        head_ = build_head(estimator.head, estimator.head_params, width, meta.get("head_n_classes") or 2)
    if isinstance(head_, nn.Module):
        _load_state(head_, states, "head_", path)
        head_.eval()
    estimator.head_ = head_


def _load_state(module: nn.Module, states: dict, name: str, path: Path) -> None:
    """``module.load_state_dict`` of the saved state, which must match it name for name, in shape and dtype."""
    if name not in states:
        raise FileFormatError(path, _KIND, f"entry {_MODULES[name]} (the weights of {name}) is missing")
    state, expected = states[name], module.state_dict()
    wrong = sorted(set(state) ^ set(expected)) + [
        key for key in expected
        if key in state and (state[key].shape != expected[key].shape or state[key].dtype != expected[key].dtype)
    ]
    if wrong:
        raise FileFormatError(
            path, _KIND, f"the saved weights of {name} do not fit {type(module).__name__} (first differences: "
            f"{wrong[:3]}); pass the module it was fitted with"
        )
    module.load_state_dict(state)


def _jsonable(what: str, value):
    if isinstance(value, (os.PathLike, torch.device)):
        return str(value)
    try:
        return json.loads(json.dumps(value, default=_json_item))
    except (TypeError, ValueError):
        pass
    raise ValueError(
        f"{what}={value!r} cannot be saved safely (only JSON values are); use a named option "
        "instead, or persist the model with joblib.dump (pickle: load only files you trust)."
    )


def _json_item(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _history(rows):
    from .training import History

    return History(rows)


# JSON has no tuples and no History: what some fitted attributes turn back into.
_RESTORE = {"skipped_": lambda rows: [tuple(row) for row in rows], "history_": _history}


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
