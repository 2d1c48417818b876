"""The encoder exported to ONNX and run by ONNX Runtime: the CPU path of ``compile="auto"``.

On CPUs, ONNX Runtime runs the default encoder about four times as fast as eager torch in
float32, with the same features (cosine 1.00000 per image): it folds BatchNorm into the
convolutions and runs them in its blocked memory layout. The export (a trace of the
module by ``torch.onnx.export``, a second or so) is cached on disk, keyed by the encoder's
fingerprint (class, weights, architecture) and input shape, so another process, a clone or
a re-fit with the same weights loads it instead (a tenth of a second). The artefact lives
under :func:`artefact_dir`; it is never pickled with an estimator.

``onnxruntime`` and ``onnx`` are imported on first use only, never at package import.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ._cache import encoder_fingerprint

CACHE_DIR_ENV = "SKRETRIEVAL_CACHE_DIR"
# Bumped whenever the export below changes what an artefact holds.
_ARTEFACT_FORMAT = "onnx-v1"
_OPSET = 17
# An export must reproduce the module on a random batch at least this closely (cosine per
# row) before it is used or stored; the default encoder's exports give 1.00000.
_EXPORT_AGREEMENT = 0.9999
# Modules made only of classes from these packages have no data-dependent Python code that
# a trace could freeze into one branch: compile="auto" exports them without further checks.
_KNOWN_PACKAGES = ("torch.nn.", "torchvision.", "skretrieval.")

# torch >= 2.9 warns that the TorchScript-based exporter is legacy; it is the one that needs
# no extra package (onnxscript) and exports the default encoder in about a second.
warnings.filterwarnings("ignore", r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
warnings.filterwarnings("ignore", r"The feature will be removed\. Please remove usage", DeprecationWarning)
# Shapes traced into constants are right here: each export serves one input shape.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torchvision\.")


def artefact_dir() -> Path:
    """Where exported encoders are cached: ``$SKRETRIEVAL_CACHE_DIR``, else the user cache.

    The user cache is ``$XDG_CACHE_HOME/skretrieval`` (``~/.cache/skretrieval`` when unset)
    on Linux and macOS, ``%LOCALAPPDATA%\\skretrieval`` on Windows. Artefacts are a few
    megabytes each (the default encoder's is 13 MB); deleting the folder is always safe.
    """
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser() / "onnx"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "skretrieval" / "onnx"


def exportable(module) -> bool:
    """Whether ``compile="auto"`` exports ``module``: every part is a torch/torchvision/skretrieval class."""
    if not isinstance(module, nn.Module):
        return False
    return all(type(part).__module__.startswith(_KNOWN_PACKAGES) for part in module.modules())


class OnnxEncoder:
    """An ONNX Runtime session that maps a float32 batch ``(N, C, H, W)`` to the first output.

    One session serves every thread (``InferenceSession.run`` is thread-safe).
    """

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def load_or_export(module: nn.Module, example: torch.Tensor) -> tuple[OnnxEncoder, bool]:
    """``(encoder, exported)``: the cached export of ``module`` for ``example``'s shape, or a new one.

    ``exported`` says whether this call exported (False: loaded from the disk cache). The
    export runs once across threads and processes (a file lock); it is checked against the
    module before it is stored. A folder that cannot be written means an export in memory.
    Raises what the export or the runtime raises (the caller falls back to eager torch).
    """
    import onnxruntime  # noqa: F401 - fail before exporting when the runtime is missing

    path = artefact_dir() / f"{_artefact_key(module, example)}.onnx"
    with _file_lock(path.with_suffix(".lock")) as locked:
        encoder = _load(path) if locked else None
        if encoder is not None:
            return encoder, False
        # One random image: the export traces it, and both must give the same features.
        generator = torch.Generator().manual_seed(0)
        image = torch.randn((1, *example.shape[1:]), generator=generator)
        data, expected = _export(module, image)
        encoder = OnnxEncoder(_session(data))
        _check(encoder(image).float().flatten(1), expected.float().flatten(1))
        if locked:
            _write_atomically(path, data)
        return encoder, True


def _artefact_key(module: nn.Module, example: torch.Tensor) -> str:
    """Fingerprint of the weights and class, plus what else shapes the export's graph."""
    from . import __version__

    shape = "x".join(str(s) for s in example.shape[1:])
    architecture = hashlib.blake2b(repr(module).encode(), digest_size=8).hexdigest()
    variant = f"{_ARTEFACT_FORMAT}:opset{_OPSET}:{shape}:torch{torch.__version__}:skretrieval{__version__}:{architecture}"
    return f"{encoder_fingerprint(module, None, variant=variant)}-{shape}"


def _load(path: Path) -> OnnxEncoder | None:
    if not path.is_file():
        return None
    try:
        return OnnxEncoder(_session(str(path)))
    except Exception:  # noqa: BLE001 - a damaged file: export it again
        return None


def _export(module: nn.Module, example: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """The ONNX model of ``module`` in eval mode, its batch dimension dynamic, and its output.

    The output is the module's own on ``example``, kept from the trace (a hook), so the
    check costs no second forward pass.
    """
    buffer, outputs = io.BytesIO(), []
    keep = module.register_forward_hook(lambda _, __, out: outputs.append(_first_output(out).detach().clone()))
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module, (example[:1].detach().to("cpu", torch.float32).clone(),), buffer,
                input_names=["images"], output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=_OPSET, training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True,
                **({"dynamo": False} if "dynamo" in _export_parameters() else {}),
            )
    finally:
        keep.remove()
    return buffer.getvalue(), outputs[0].cpu()


def _export_parameters():
    import inspect

    return inspect.signature(torch.onnx.export).parameters


def _session(model):
    """An ONNX Runtime CPU session for a model file or bytes, with torch's thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its warnings (e.g. unused initialisers) are not the user's
    # Idle threads sleep instead of spinning: the decoding threads need those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _check(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Raise unless the export's features are the module's (on the image it was traced with)."""
    if got.shape != expected.shape:
        raise RuntimeError(f"the export returns shape {tuple(got.shape)}, the module {tuple(expected.shape)}")
    agreement = torch.nn.functional.cosine_similarity(got, expected).min().item()
    if not agreement >= _EXPORT_AGREEMENT:
        raise RuntimeError(f"the export disagrees with the module (cosine {agreement:.5f} on a random image)")


def _first_output(output):
    return output[0] if isinstance(output, (tuple, list)) else output





def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file and rename it into place: readers see all of it or nothing.

    A failed write (disk full...) only means the next process exports again.
    """
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is shared like ~/.cache
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Hold an exclusive lock on ``path`` across threads and processes (POSIX ``flock``).

    Yields whether the cache folder is usable: False when it cannot be created or written
    (the caller then exports in memory, for this process only). Without ``fcntl``
    (Windows) there is no lock: two processes may both export, and the atomic rename still
    leaves one whole file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - closed below
    except OSError:
        yield False
        return
    try:
        try:
            import fcntl
        except ImportError:
            fcntl = None
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield True
    finally:
        handle.close()
