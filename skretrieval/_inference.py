"""How the encoder runs at inference: ONNX Runtime, eager, frozen (TorchScript) or compiled; fp32 or bf16.

The fast copies are derived state, never the estimator's: built on first use under a lock
(so concurrent queries build each one once), left out of pickles and clones (rebuilt after
loading), and thrown away whenever ``fit`` may have changed the weights. Training never
uses them; it runs ``encoder_`` eagerly in float32.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import warnings

import torch
from torch import nn

# Filters set once at import: warnings.catch_warnings around each trace would race with
# the decoding threads (it swaps the process-wide filter list).
# Shape arithmetic in skretrieval's encoders becomes constants when traced: right, since each
# frozen copy serves one input shape.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"skretrieval\.")
# TorchScript is deprecated in favour of torch.compile, which takes tens of seconds where a
# trace takes one; if it goes, freezing falls back to eager.
warnings.filterwarnings("ignore", r"`torch\.jit\.(trace|trace_method|freeze)` is deprecated", FutureWarning)

from ._modes import COMPILE_MODES, ENCODE_PRECISIONS  # noqa: E402  (re-exported: defined torch-free)

# compile="auto" compiles a checked encoder (torch.compile) for jobs of at least this many
# images: compiling takes about 30 s on two cores and then saved ~13 ms an image (fp32,
# 36.8 -> 69.0 img/s), so it pays from ~2,400 images; the margin covers slower compilers.
AUTO_COMPILE_MIN_IMAGES = 8192
# A traced copy of a module whose code is not known must agree with the eager module (cosine
# per row, at least this) on its first few batches: a trace that recorded the branch of
# data-dependent code its first batch took is far off on a batch that takes another one.
_TRACE_AGREEMENT = 0.99
_VERIFIED_CALLS = 3


def resolve_encode_precision(precision: str) -> torch.dtype:
    """The autocast dtype of an ``encode_precision`` value (``"fp32"`` means no autocast)."""
    if precision not in ENCODE_PRECISIONS:
        raise ValueError(f"encode_precision={precision!r} is not supported; use one of {ENCODE_PRECISIONS}.")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def fast_paths_checked(encoder) -> bool:
    """Whether ``encoder`` declares its fast paths checked (``fast_paths_checked = True``).

    compile="auto" and channels-last apply to such modules only, and their traced copies
    are not re-checked: another module may, e.g., ``view()`` a channels-last tensor.
    """
    return isinstance(encoder, nn.Module) and bool(getattr(encoder, "fast_paths_checked", False))


def resolve_compile(
    mode: str, n_images: int | None, checked: bool, is_module: bool, *,
    exportable: bool = False, device_type: str = "cpu", precision: str = "fp32",
) -> str:
    """``"eager"``, ``"onnx"``, ``"freeze"`` or ``"inductor"`` for a ``compile`` value and a job.

    ``"auto"`` takes ONNX Runtime for a module made of torch/torchvision/skretrieval parts
    (``exportable``) on the CPU in fp32: about 4x eager torch, same features, and its export
    is cached on disk. Otherwise (a GPU, bf16, your own module) it stays in torch, compiling
    a checked encoder for big jobs only.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} is not supported; use one of {COMPILE_MODES}.")
    if not is_module or mode == "off":
        return "eager"  # a plain callable has no graph to freeze
    if mode == "auto":
        if exportable and device_type == "cpu" and precision == "fp32":
            return "onnx"
        big = n_images is not None and n_images >= AUTO_COMPILE_MIN_IMAGES
        return "inductor" if checked and big else "eager"
    return mode


class InferenceRunner:
    """Run an encoder on preprocessed batches, the fastest way asked for that works.

    Parameters
    ----------
    encoder : nn.Module or callable
        The fitted encoder. It is never modified; fast paths use copies.
    device : torch.device
        Where batches and the encoder live.
    batch_size : int
        The largest batch the runner is given. Frozen copies are traced for a few batch
        sizes only (powers of two below it, and it); smaller batches are padded up.
    channels_last : bool
        Run a channels-last copy of a module (faster convolutions on CPUs and GPUs).
    verify : bool
        Check each traced or exported copy against the eager module on its first few
        batches, and fall back to eager when they disagree (for modules whose code paths
        are not known).

    Attributes
    ----------
    warmup_seconds : dict
        Seconds spent building each fast copy (exporting or loading the ONNX model,
        tracing, freezing, compiling), by mode.
    exported : bool
        Whether this runner exported its ONNX model (False: loaded from the disk cache).
    builds : list of str
        The mode of each fast copy built, in order (one entry per copy: threads share them).
    """

    def __init__(self, encoder, device, batch_size: int, *, channels_last: bool, verify: bool):
        self.encoder = encoder
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.channels_last = channels_last and isinstance(encoder, nn.Module)
        self.verify = verify
        self.warmup_seconds: dict[str, float] = {}
        self._lock = threading.RLock()  # building a fast copy needs the eager one
        self._eager = None
        self._frozen: dict[tuple, object] = {}
        self._compiled = None
        self._compiled_shapes: set[tuple] = set()
        self._onnx: dict[tuple, object] = {}
        self.exported = False
        self.builds: list[str] = []
        self._failed: set[str] = set()
        self._checks_left: dict[tuple, int] = {}

    def __call__(self, batch: torch.Tensor, mode: str = "eager", dtype=torch.float32):
        """The encoder's output for a preprocessed float batch ``(N, C, H, W)``."""
        mode = "eager" if mode in self._failed else mode
        if self.channels_last and batch.ndim == 4 and mode != "onnx":  # ONNX Runtime takes NCHW
            batch = batch.contiguous(memory_format=torch.channels_last)
        run = {"onnx": self._run_onnx, "freeze": self._run_frozen, "inductor": self._run_compiled}.get(
            mode, self._run_eager
        )
        with torch.inference_mode():
            if mode in ("freeze", "inductor") and len(batch) > self.batch_size:  # copies serve batch_size at most
                return torch.cat([run(chunk, dtype) for chunk in batch.split(self.batch_size)])
            return run(batch, dtype)

    def _eager_model(self):
        if self._eager is None:
            with self._lock:
                if self._eager is None:
                    self._eager = self._copy() if self.channels_last else self.encoder
        return self._eager

    def _copy(self):
        model = copy.deepcopy(self.encoder).eval()
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _run_frozen(self, batch, dtype):
        n = len(batch)
        padded = _pad(batch, self._bucket(n))
        key = _signature(padded, dtype)
        model = self._frozen.get(key)
        if model is None:
            with self._lock:
                model = self._frozen.get(key)
                if model is None:
                    model = self._build_frozen(padded, dtype)
                    if model is None:
                        return self._run_eager(batch, dtype)
                    self._frozen[key] = model
                    self._checks_left[key] = _VERIFIED_CALLS if self.verify else 0
        out = _first_output(model(padded))[:n]
        if self._checks_left.get(key, 0) > 0:
            return self._checked(out, batch, dtype, key, "freeze")
        return out

    def _checked(self, out, batch, dtype, key, mode):
        """``out`` if the eager module agrees on ``batch``; else its own output, eager from now."""
        self._checks_left[key] -= 1  # a race only changes how many calls are checked
        expected = _first_output(self._run_eager(batch, dtype))
        if _agree(out, expected):
            return out
        self._fall_back(mode, RuntimeError(
            "the traced copy disagrees with the module (data-dependent control flow?)"
        ))
        {"freeze": self._frozen, "onnx": self._onnx}[mode].clear()
        return expected

    def _run_onnx(self, batch, dtype):
        """ONNX Runtime, float32 whatever ``dtype``: one export per input shape, any batch size."""
        key = ("onnx", tuple(batch.shape[1:]))
        model = self._onnx.get(key)
        if model is None:
            with self._lock:  # the first call exports (or loads the cached export): once
                if "onnx" in self._failed:
                    return self._run_eager(batch, dtype)
                model = self._onnx.get(key)
                if model is None:
                    model = self._build_onnx(batch)
                    if model is None:
                        return self._run_eager(batch, dtype)
                    self._onnx[key] = model
                    self._checks_left[key] = _VERIFIED_CALLS if self.verify else 0
        out = model(batch)
        if self._checks_left.get(key, 0) > 0:
            return self._checked(out, batch, torch.float32, key, "onnx")
        return out

    def _build_onnx(self, example):
        """The cached or a new export for ``example``'s shape; None (eager from now) if that fails."""
        start = time.perf_counter()
        try:
            if self.device.type != "cpu":
                raise RuntimeError(f"it runs on the CPU only, and the encoder is on {self.device}")
            from ._onnx import load_or_export

            model, exported = load_or_export(self.encoder, example)
        except Exception as exc:  # noqa: BLE001 - no runtime, an op it lacks, ...: run eagerly
            return self._fall_back("onnx", exc)
        self.exported = self.exported or exported
        self.builds.append("onnx")
        self.warmup_seconds["onnx"] = self.warmup_seconds.get("onnx", 0.0) + time.perf_counter() - start
        return model

    def _run_eager(self, batch, dtype):
        with _autocast(self.device, dtype):
            return self._eager_model()(batch)

    def _bucket(self, n: int) -> int:
        """The traced batch size a batch of ``n`` runs at: a power of two, or ``batch_size``."""
        size = 1
        while size < n:
            size *= 2
        return min(size, self.batch_size)

    def _build_frozen(self, example, dtype):
        """Trace and freeze a copy for ``example``'s shape; None (eager from now) if that fails.

        The trace runs under the autocast, so it records the casts the eager module makes
        (and keeps the float32 regions the module asks for): the copy runs without one.
        TorchScript's own autocast pass, which would re-cast every op, is off meanwhile.
        """
        start = time.perf_counter()
        eager = self._eager_model()
        try:
            with _autocast(self.device, dtype), _without_jit_autocast():
                traced = torch.jit.trace(eager, example, check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
            with _without_jit_autocast():
                for _ in range(2):  # the first runs optimise the graph
                    frozen(example)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            return self._fall_back("freeze", exc)
        self.warmup_seconds["freeze"] = self.warmup_seconds.get("freeze", 0.0) + time.perf_counter() - start
        self.builds.append("freeze")
        return frozen

    def _run_compiled(self, batch, dtype):
        """Every batch runs padded to ``batch_size``: one shape, so one compilation."""
        n = len(batch)
        padded = _pad(batch, self.batch_size)
        key = _signature(padded, dtype)
        if key not in self._compiled_shapes:
            with self._lock:  # the first call of a shape compiles: once, whoever asks first
                if "inductor" in self._failed:
                    return self._run_eager(batch, dtype)
                if key not in self._compiled_shapes:
                    start = time.perf_counter()
                    try:
                        if self._compiled is None:
                            self._compiled = torch.compile(self._eager_model(), dynamic=False)
                        with _autocast(self.device, dtype):
                            out = _first_output(self._compiled(padded))
                    except Exception as exc:  # noqa: BLE001 - no compiler, unsupported op...
                        self._fall_back("inductor", exc)
                        return self._run_eager(batch, dtype)
                    self._compiled_shapes.add(key)
                    self.builds.append("inductor")
                    self.warmup_seconds["inductor"] = (
                        self.warmup_seconds.get("inductor", 0.0) + time.perf_counter() - start
                    )
                    return out[:n]
        with _autocast(self.device, dtype):
            return _first_output(self._compiled(padded))[:n]

    def _fall_back(self, mode: str, exc: Exception):
        self._failed.add(mode)
        reason = (str(exc).strip().splitlines() or [""])[0]  # the exporter appends whole graphs
        warnings.warn(
            f"compile={mode!r} is not available for this encoder ({type(exc).__name__}: {reason}); "
            "encoding runs eagerly instead (set compile='off' to silence this).",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


@contextlib.contextmanager
def _without_jit_autocast():
    """Turn TorchScript's autocast pass off (a process-wide switch), then restore it."""
    switch = getattr(torch._C, "_jit_set_autocast_mode", None)
    previous = switch(False) if switch is not None else None
    try:
        yield
    finally:
        if switch is not None:
            switch(previous)


def _autocast(device: torch.device, dtype):
    enabled = dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)


def _signature(padded: torch.Tensor, dtype) -> tuple:
    """What a frozen or compiled copy is specialised to: the input's layout, the autocast."""
    return tuple(padded.shape), padded.dtype, padded.stride(), dtype


def _pad(batch: torch.Tensor, size: int) -> torch.Tensor:
    if len(batch) == size:
        return batch
    padding = batch[-1:].expand(size - len(batch), *batch.shape[1:])  # real pixels, not zeros
    return torch.cat([batch, padding]).contiguous(memory_format=_memory_format(batch))


def _memory_format(batch: torch.Tensor):
    if batch.ndim == 4 and batch.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _first_output(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.float().flatten(1), b.float().flatten(1)
    return bool(torch.nn.functional.cosine_similarity(a, b).min() >= _TRACE_AGREEMENT)
