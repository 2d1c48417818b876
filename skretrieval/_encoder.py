"""ImageEncoder: the encoder alone, as a scikit-learn transformer."""

from __future__ import annotations

import io
import os
import warnings
from functools import partial
from numbers import Integral

import numpy as np
import torch
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted
from torch import nn

from ._cache import FeatureCache, cache_location, encoder_fingerprint
from ._device import resolve_device
from ._encoding import build_encoder, encode
from ._inference import (
    COMPILE_MODES,
    ENCODE_PRECISIONS,
    InferenceRunner,
    fast_paths_checked,
    resolve_compile,
    resolve_encode_precision,
)
from ._onnx import exportable
from ._sklearn_compat import (
    HasMethods,
    Interval,
    StrOptions,
    TransformerTags,
    _fit_context,
    validate_data,
)
from ._version import __version__, check_pickled_version
from .io import FeatureInput, read_input
from .search._storage import check_finite, file_backing

ENCODER_CONSTRAINTS = {
    "encoder": [str, callable],
    "weights": [None, str, os.PathLike, object],
    "preprocessing": [None, StrOptions({"none"}), dict, callable],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "device": [str, torch.device],
    "memory": [None, str, os.PathLike, HasMethods(["cache"])],
    "cache_key": [None, str],
    "on_error": [StrOptions({"raise", "skip", "warn"})],
    "n_jobs": [None, Integral],
    "encode_precision": [StrOptions(set(ENCODE_PRECISIONS))],
    "compile": [StrOptions(set(COMPILE_MODES))],
    "verbose": ["verbose"],
}


class EncoderMixin:
    """Fitting an encoder and turning any accepted ``X`` into features (shared by estimators).

    The encoding options are read from ``_options``: the estimator itself for
    :class:`ImageEncoder`, the :class:`ImageEncoder` it composes for a retriever.
    """

    @property
    def _options(self):
        return self

    def _fit_encoder(self) -> None:
        options = self._options
        self.device_ = resolve_device(options.device)
        self.encoder_, self.preprocessing_ = build_encoder(
            options.encoder, options.weights, options.preprocessing
        )
        if isinstance(self.encoder_, nn.Module):
            self.encoder_.to(self.device_).eval()
        self._inference_runner = self._new_runner()
        self._fingerprints = {}  # the encoder's fingerprint per precision, hashed on first use

    def _new_runner(self) -> InferenceRunner:
        checked = fast_paths_checked(self.encoder_)
        return InferenceRunner(
            self.encoder_, self.device_, self._options.batch_size,
            channels_last=checked or self._options.compile in ("freeze", "inductor"),
            verify=not (checked or exportable(self.encoder_)),
        )

    def _runner(self) -> InferenceRunner:
        """The runner of the encoder as fitted, built anew if it is missing or out of date."""
        runner = self.__dict__.get("_inference_runner")
        if runner is None or (runner.encoder, runner.device, runner.batch_size) != (
            self.encoder_, self.device_, self._options.batch_size
        ):
            runner = self._inference_runner = self._new_runner()
        return runner

    def _inference_mode(self, n_images, exact: bool):
        """``(compile mode, autocast dtype)`` for encoding ``n_images`` now."""
        if exact:
            return "eager", torch.float32
        is_module = isinstance(self.encoder_, nn.Module)
        options = self._options
        mode = resolve_compile(
            options.compile, n_images, fast_paths_checked(self.encoder_), is_module,
            exportable=exportable(self.encoder_), device_type=self.device_.type,
            precision=options.encode_precision,
        )
        if mode == "onnx":  # ONNX Runtime computes in float32 whatever encode_precision says
            return mode, torch.float32
        return mode, resolve_encode_precision(options.encode_precision)

    def _encode_input(self, X, *, reset: bool, exact: bool = False, keep_rows=None, embedded=False):
        """``(features float32 (n, d), labels or None, ids or None, skipped)`` for any ``X``.

        A memory-mapped feature matrix of float32 or float16 is returned as it is (still
        on disk), checked to be finite in blocks.

        Image files that cannot be decoded follow ``on_error``: with "skip"/"warn" they are
        listed in ``skipped`` as ``(index, path, reason)`` and, unless ``keep_rows`` (the
        default for queries, ``reset=False``), left out; kept rows are all NaN, so that
        rows stay aligned with ``X``. ``reset`` starts a fit (feature count, fast copies).
        ``exact`` encodes in float32, eagerly (the features a training starts from).
        ``embedded``: ``X`` must be a feature matrix, taken as it is (no feature count
        check: embeddings may be narrower than the encoder's features).
        """
        options = self._options
        on_error = options.on_error
        keep_rows = not reset if keep_rows is None else keep_rows
        source = read_input(X, on_error=on_error)
        if isinstance(source, FeatureInput):
            # A memory-mapped float32/float16 array stays on disk: checked in blocks read
            # from its file, not through its mapping (which would make it all resident).
            on_disk = file_backing(source.features) is not None
            dtypes = [np.float32, np.float64, np.float16] if on_disk else [np.float32, np.float64]
            if embedded:
                features = check_array(source.features, dtype=dtypes, ensure_all_finite=False if on_disk else "allow-nan")
            else:
                features = validate_data(self, source.features, reset=reset, dtype=dtypes, ensure_all_finite=not on_disk)
                if on_disk:
                    check_finite(features)
            if not (on_disk and features.dtype == np.float16):
                features = features.astype(np.float32, copy=False)
            return features, source.labels, source.ids, []
        if embedded:
            raise ValueError(
                f"embedded=True takes embeddings (a 2-D matrix, as transform returns); got "
                f"{source.description}. Pass images with embedded=False."
            )
        if self.encoder_ is None:
            raise ValueError(
                f"encoder='precomputed' expects X to be a 2-D feature matrix; got {source.description}. "
                "Pass features, or choose an encoder (e.g. 'efficientnet_lite0')."
            )
        if reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_  # images have no feature count; drop one from an earlier fit
        if reset:  # fit may have trained the encoder: fast copies and fingerprints are stale
            self._inference_runner = self._new_runner()
            self._fingerprints = {}
        mode, dtype = self._inference_mode(source.n, exact)
        try:
            features, labels = encode(
                source, partial(self._runner(), mode=mode, dtype=dtype), self.preprocessing_,
                batch_size=options.batch_size, device=self.device_,
                n_jobs=effective_n_jobs(options.n_jobs), verbose=options.verbose or self.verbose,
                cache=self._feature_cache(dtype),
            )
        except ValueError:
            # Every query skipped: a retriever still answers, row for row (its gallery
            # gives the width); a fit, or an ImageEncoder, has nothing to return.
            if reset or len(source.skipped) != source.n or not hasattr(self, "prototype_"):
                raise
            features, labels = np.empty((0, 1), np.float32), None  # all NaN rows: any width
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        if bad.size:
            raise ValueError(
                f"the encoder returned NaN or infinite features for {bad.size} item(s) of "
                f"{source.description} (first: index {bad[0]}); check the encoder and the images."
            )
        skipped = list(source.skipped)
        if skipped and on_error == "warn":
            warnings.warn(
                f"skipped {len(skipped)} unreadable image(s) of {source.description}: "
                + "; ".join(reason for _, _, reason in skipped),
                UserWarning,
                stacklevel=3,
            )
        ids = source.ids
        if skipped and not keep_rows:
            if ids is not None:
                ids = np.delete(ids, [index for index, _, _ in skipped])
        elif skipped:  # queries stay aligned with X: the skipped rows are all NaN
            kept = np.setdiff1d(np.arange(len(features) + len(skipped)), [index for index, _, _ in skipped])
            aligned = np.full((len(features) + len(skipped), features.shape[1]), np.nan, np.float32)
            aligned[kept] = features
            features = aligned
        return features, labels, ids, skipped

    def _feature_cache(self, dtype=torch.float32) -> FeatureCache | None:
        """The ``memory`` cache for the encoder as it is now (None when not caching)."""
        location = cache_location(self._options.memory)
        if location is None:
            return None
        # Hashed once per fit (the weights change only there), filled in place on first use.
        variant = None if dtype == torch.float32 else str(dtype)
        memo = self.__dict__.setdefault("_fingerprints", {})
        if variant not in memo:
            memo[variant] = encoder_fingerprint(
                self.encoder_, self.preprocessing_, self._options.cache_key, variant=variant
            )
        fingerprint = memo[variant]
        return None if fingerprint is None else FeatureCache(location, fingerprint)

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns the live __dict__
        state.pop("_inference_runner", None)  # frozen/compiled copies: rebuilt after loading
        if isinstance(state.get("encoder_"), nn.Module):
            buffer = io.BytesIO()
            torch.save(state["encoder_"], buffer)
            state["encoder_"] = _SavedModule(buffer.getvalue())
        state["_skretrieval_version"] = __version__
        return state

    def __setstate__(self, state):
        check_pickled_version(state.pop("_skretrieval_version", None))
        device = state.get("device_")
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            state["device_"] = device = torch.device("cpu")  # a GPU model served on a CPU machine
        if isinstance(state.get("encoder_"), _SavedModule):
            state["encoder_"] = torch.load(
                io.BytesIO(state["encoder_"].data), map_location=device, weights_only=False
            )
        super().__setstate__(state)
        if "encoder_" in state:  # a fresh runner now, so that concurrent first queries share it
            self._inference_runner = self._new_runner()


class _SavedModule:
    """An ``nn.Module`` serialised with ``torch.save``, so loading can remap its device."""

    def __init__(self, data: bytes):
        self.data = data


class ImageEncoder(EncoderMixin, TransformerMixin, BaseEstimator):
    """Encode images into feature vectors, as a scikit-learn transformer.

    Use it as the first step of a :class:`~sklearn.pipeline.Pipeline` (e.g. followed by PCA
    and an :class:`ImageRetriever` with ``encoder="precomputed"``).

    Parameters
    ----------
    encoder : str, nn.Module or callable, default="efficientnet_lite0"
        A name from :func:`skretrieval.encoders.list_encoders` (the default EfficientNet-Lite0
        works offline with ImageNet weights; any torchvision model name works), a
        ``torch.nn.Module`` or callable mapping an ``(N, C, H, W)`` batch to ``(N, D)``
        features, or ``"precomputed"`` when ``X`` already is features. A module is
        deep-copied into ``encoder_``; yours is never modified.
    weights : str, path or None, default="DEFAULT"
        For a named encoder: ``"DEFAULT"``, a torchvision weights name such as
        ``"IMAGENET1K_V2"``, ``None`` (random initialisation) or a path to a state dict. For a
        module: an optional state-dict path loaded into the copy.
    preprocessing : None, "none", dict, Preprocessing or callable, default=None
        How images in [0, 1] become encoder input. ``None`` takes the encoder's own
        (ImageNet statistics and input size for named encoders; :class:`Preprocessing`
        defaults otherwise); a dict overrides some fields (``size``, ``crop_pct``,
        ``resize_mode``, ``mean``, ``std``, ``interpolation``); a callable receives a float
        batch ``(N, 3, H, W)``; ``"none"`` passes images through unchanged.
    batch_size : int, default=32
        Images encoded per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    memory : str, path or joblib.Memory, default=None
        A directory caching each image's features, keyed by the image's content and a
        fingerprint of the encoder (class, weights, preprocessing): a clone, a re-fit, another
        cross-validation fold or another process reuses them instead of encoding again, and
        an interrupted job resumes where it stopped. None disables caching.
    cache_key : str, default=None
        Fingerprint of a plain callable encoder, which has no weights to hash; without it such
        an encoder is not cached. Change it whenever the callable's output changes.
    on_error : {"raise", "skip", "warn"}, default="raise"
        An image file that cannot be decoded (truncated, empty, not an image, too large)
        raises a ``ValueError`` naming it, or (``"skip"``, ``"warn"`` which also warns) is
        left out: its row of ``transform`` is all NaN, so rows stay aligned with ``X``.
    n_jobs : int, default=None
        Threads decoding image files, at most two batches ahead of the encoder (decoding
        and resizing overlap the forward pass). None means 1 unless in a
        :func:`joblib.parallel_config` context; -1 means all CPUs. Other inputs are read in
        one background thread.
    encode_precision : {"fp32", "bf16"}, default="fp32"
        Dtype the encoder computes in; features are float32 either way. ``"bf16"`` runs it
        in torch under a bf16 autocast: 1.4-1.7x faster than eager fp32 torch on CPUs with
        AMX-BF16 or AVX512-BF16 (slow without them) and on recent GPUs, but on a CPU no
        faster than the default (ONNX Runtime in fp32). With ``efficientnet_lite0`` every
        feature keeps a cosine of at least 0.999 to its fp32 value and the demo's Recall@1
        is unchanged, but its kNN accuracy drops by 0.7 points on average over ten splits
        (see the user guide), so it is not the default. A fit that trains a head encodes in
        fp32.
    compile : {"auto", "off", "onnx", "freeze", "inductor"}, default="auto"
        How the encoder module runs at inference. ``"onnx"``: exported to ONNX and run by
        ONNX Runtime on the CPU, in fp32 whatever ``encode_precision`` says: about 4x eager
        torch for ``efficientnet_lite0`` with the same features (cosine 1.0000 per image).
        The export takes a second or two once; it is cached on disk, keyed by the encoder's
        weights and input shape, so other processes, clones and re-fits load it in a tenth
        of a second. The cache folder is ``$SKRETRIEVAL_CACHE_DIR/onnx``, else
        ``$XDG_CACHE_HOME/skretrieval/onnx`` (``~/.cache/skretrieval/onnx``; on Windows
        ``%LOCALAPPDATA%\\skretrieval\\onnx``); deleting it is always safe.
        ``"inductor"``: :func:`torch.compile` (needs a C++ compiler; about 30 s to compile on
        two CPU cores); ``"freeze"``: a frozen TorchScript trace per input shape (BatchNorm
        folded into the convolutions), about a second to build; ``"off"``: eager torch.
        ``"auto"`` takes ``"onnx"`` on the CPU in fp32 for an encoder made of torch,
        torchvision and skretrieval modules only (the default ``"efficientnet_lite0"``, any
        torchvision model); on a GPU or in bf16 it stays in torch and compiles the default
        encoder for jobs of 8192 images or more; your own module classes run eagerly.
        A copy that cannot be built (no ``onnxruntime``, an op it lacks, no compiler) or,
        for your own module, disagrees with it on one of its first batches, warns once and
        falls back to eager. Fast copies are never pickled or cloned; they are rebuilt on
        first use. Training always runs the eager float32 encoder in torch. Channels-last
        memory is used in torch for ``"efficientnet_lite0"`` (a module declaring
        ``fast_paths_checked = True``), and for any module with ``"freeze"``/``"inductor"``.
    verbose : int, default=0
        Show a progress bar (images/s, on stderr) while encoding when > 0.

    Attributes
    ----------
    encoder_ : nn.Module, callable or None
        The encoder used (a copy of a given module); None for ``"precomputed"``.
    preprocessing_ : callable or None
        The resolved preprocessing.
    device_ : torch.device
        The device encoding runs on.
    n_features_in_ : int
        Only when fitted on a 2-D feature matrix.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skretrieval import ImageEncoder
    >>> encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> images = np.random.default_rng(0).random((4, 16, 16, 3))
    >>> ImageEncoder(encoder, preprocessing={"size": 8}, device="cpu").fit_transform(images).shape
    (4, 3)
    """

    _parameter_constraints = dict(ENCODER_CONSTRAINTS)  # the encoding options, declared here only

    def __init__(
        self,
        encoder="efficientnet_lite0",
        *,
        weights="DEFAULT",
        preprocessing=None,
        batch_size=32,
        device="auto",
        memory=None,
        cache_key=None,
        on_error="raise",
        n_jobs=None,
        encode_precision="fp32",
        compile="auto",
        verbose=0,
    ):
        self.encoder = encoder
        self.weights = weights
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.device = device
        self.memory = memory
        self.cache_key = cache_key
        self.on_error = on_error
        self.n_jobs = n_jobs
        self.encode_precision = encode_precision
        self.compile = compile
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Build the encoder; ``X`` is only validated (encoders are not trained here).

        Parameters
        ----------
        X : images or features
            Any input :class:`ImageRetriever` accepts.
        y : None
            Ignored.

        Returns
        -------
        self : ImageEncoder
        """
        self._fit_encoder()
        source = read_input(X)
        if isinstance(source, FeatureInput):
            validate_data(self, source.features, reset=True, dtype=[np.float32, np.float64])
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_
        return self

    def transform(self, X):
        """Encode ``X``; a 2-D feature matrix is returned as float32 unchanged.

        Parameters
        ----------
        X : images or features
            Any input :class:`ImageRetriever` accepts.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), float32
        """
        check_is_fitted(self)
        return self._encode_input(X, reset=False)[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])
        return tags
