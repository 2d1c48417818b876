"""The encoder's fast paths (ONNX Runtime, frozen, compiled, bf16, channels-last) keep its answers and its state."""

import copy
import os
import pickle
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyEncoder
from sklearn.base import clone

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval._inference import (
    AUTO_COMPILE_MIN_IMAGES,
    InferenceRunner,
    resolve_compile,
    resolve_encode_precision,
)

TINY = {"preprocessing": {"size": 8, "crop_pct": 1.0}, "device": "cpu"}


def _images(n, seed=0, size=10):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype(np.float32)


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("compile_mode", ["onnx", "freeze", "inductor"])
def test_fast_copies_give_the_eager_features(compile_mode):
    if compile_mode == "inductor":
        pytest.importorskip("torch._inductor")
    images = _images(13)  # batches of 5, 5 and 3: a padded last batch
    eager = ImageEncoder(TinyEncoder(), batch_size=5, compile="off", **TINY).fit(images[:1])
    fast = ImageEncoder(TinyEncoder(), batch_size=5, compile=compile_mode, **TINY).fit(images[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fall-back to eager
        got = fast.transform(images)
    np.testing.assert_allclose(got, eager.transform(images), rtol=1e-5, atol=1e-6)
    assert fast._inference_runner.warmup_seconds[compile_mode] > 0


def test_default_encoder_frozen_and_bf16_stay_close_to_fp32_eager():
    """The pretrained built-in encoder (packaged weights), frozen in fp32 and in bf16."""
    images = _images(6, size=80)
    params = {"encoder": "efficientnet_lite0", "preprocessing": {"size": 64}, "device": "cpu", "batch_size": 4}
    reference = ImageEncoder(compile="off", encode_precision="fp32", **params).fit(images[:1]).transform(images)
    frozen = ImageEncoder(compile="freeze", encode_precision="fp32", **params).fit(images[:1])
    np.testing.assert_allclose(frozen.transform(images), reference, rtol=1e-4, atol=1e-5)
    for compile_mode in ("off", "freeze"):
        bf16 = ImageEncoder(compile=compile_mode, encode_precision="bf16", **params).fit(images[:1])
        assert _cosines(bf16.transform(images), reference).min() > 0.99


def test_frozen_copies_one_per_batch_bucket():
    runner = InferenceRunner(TinyEncoder(), "cpu", batch_size=12, channels_last=True, verify=False)
    x = torch.rand(12, 3, 8, 8)
    expected = TinyEncoder()(x).detach()
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 12):  # buckets 1, 2, 4, 8, 12
        torch.testing.assert_close(runner(x[:n], mode="freeze"), expected[:n], rtol=1e-5, atol=1e-6)
    assert len(runner._frozen) == 5


@pytest.mark.parametrize("compile_mode", ["freeze", "onnx"])
def test_a_trace_that_took_one_branch_falls_back_to_eager(compile_mode):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            pooled = x.mean(dim=(2, 3))
            return pooled * 2 if pooled.mean() > 0.5 else -pooled  # data-dependent

    dark, bright = _images(4) * 0.2, 0.8 + _images(4, seed=1) * 0.2
    model = ImageEncoder(Branchy(), compile=compile_mode, batch_size=4, **TINY).fit(dark)
    model.transform(dark)  # traced on the dark branch
    with pytest.warns(RuntimeWarning, match="disagrees"):
        got = model.transform(bright)
    expected = ImageEncoder(Branchy(), compile="off", batch_size=4, **TINY).fit(dark).transform(bright)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(model.transform(bright), expected, rtol=1e-6)  # eager from now


def test_an_untraceable_module_warns_and_runs_eagerly(compile_mode="freeze"):
    class WithNote(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), "a note"  # tracing refuses non-tensor outputs

    images = _images(3)
    expected = ImageEncoder(WithNote(), compile="off", **TINY).fit(images).transform(images)
    model = ImageEncoder(WithNote(), compile=compile_mode, **TINY).fit(images)
    with pytest.warns(RuntimeWarning, match=f"compile='{compile_mode}' is not available"):
        got = model.transform(images)
    np.testing.assert_array_equal(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # warned once; eager from now
        np.testing.assert_array_equal(model.transform(images), expected)


def test_threads_build_each_copy_once_and_agree():
    images = _images(40)
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), compile="freeze", batch_size=8, **TINY),
        topk=3,
    ).fit(images)
    queries = [_images(8, seed=s) for s in range(16)]
    serial = [model.transform(q) for q in queries]
    model._inference_runner = model._new_runner()  # threads race to build the copies
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(model.transform, queries))
    for got, expected in zip(results, serial):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert list(model._inference_runner._frozen) and len(model._inference_runner._frozen) == 1


def test_fast_copies_are_never_pickled_or_cloned():
    images = _images(10)
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), compile="freeze", batch_size=4, **TINY),
    ).fit(images)
    expected = model.transform(images)
    assert model._inference_runner._frozen  # built
    for restored in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        runner = restored._inference_runner
        assert runner is not model._inference_runner and not runner._frozen  # nothing carried over
        np.testing.assert_allclose(restored.transform(images), expected, rtol=1e-6)
        assert restored._inference_runner is runner and runner._frozen  # rebuilt on first use
    assert "_inference_runner" not in clone(model).__dict__


def test_threads_querying_an_unpickled_model_build_its_copy_once():
    images = _images(16)
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), compile="freeze", batch_size=8, **TINY),
    ).fit(images)
    model.transform(images)
    restored = pickle.loads(pickle.dumps(model))

    def query(batch):
        restored.transform(batch)
        return restored._inference_runner

    with ThreadPoolExecutor(8) as pool:
        runners = {id(runner): runner for runner in pool.map(query, [images[:8]] * 16)}
    assert len(runners) == 1  # one runner for every thread, so one frozen copy built
    (runner,) = runners.values()
    assert len(runner._frozen) == 1


def test_refit_after_training_rebuilds_the_copies():
    rng = np.random.default_rng(0)
    images, labels = rng.random((16, 10, 10, 3)).astype(np.float32), np.repeat([0, 1], 8)
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), compile="freeze", batch_size=8, **TINY),
        head="linear", fine_tune="all", max_epochs=2, lr=0.1, random_state=0,
    ).fit(images, labels)
    before = model._inference_runner
    model.transform(images)
    model.set_params(warm_start=True).fit(images, labels)  # trains the encoder further
    assert model._inference_runner is not before
    np.testing.assert_allclose(model.transform(images), model.prototype_, rtol=1e-4, atol=1e-5)


def test_auto_rules():
    assert resolve_encode_precision("bf16") == torch.bfloat16
    assert resolve_encode_precision("fp32") == torch.float32
    with pytest.raises(ValueError, match="encode_precision='fp16' is not supported"):
        resolve_encode_precision("fp16")
    big, small = AUTO_COMPILE_MIN_IMAGES, AUTO_COMPILE_MIN_IMAGES - 1
    assert resolve_compile("auto", big, checked=True, is_module=True) == "inductor"
    assert resolve_compile("auto", None, checked=True, is_module=True) == "eager"  # length unknown
    assert resolve_compile("auto", small, checked=True, is_module=True) == "eager"
    assert resolve_compile("auto", big, checked=False, is_module=True) == "eager"
    assert resolve_compile("freeze", small, checked=False, is_module=True) == "freeze"
    assert resolve_compile("inductor", 1, checked=False, is_module=False) == "eager"
    assert resolve_compile("off", big, checked=True, is_module=True) == "eager"
    # ONNX Runtime for modules of known parts, on the CPU, in fp32, whatever the job size
    for n in (1, None, big):
        assert resolve_compile("auto", n, checked=False, is_module=True, exportable=True) == "onnx"
    assert resolve_compile("auto", big, True, True, exportable=True, device_type="cuda") == "inductor"
    assert resolve_compile("auto", small, True, True, exportable=True, device_type="cuda") == "eager"
    assert resolve_compile("auto", small, True, True, exportable=True, precision="bf16") == "eager"
    assert resolve_compile("onnx", 1, checked=False, is_module=True) == "onnx"  # asked for: tried
    assert resolve_compile("onnx", 1, checked=False, is_module=False) == "eager"  # a plain callable
    with pytest.raises(ValueError, match="compile='jit' is not supported"):
        resolve_compile("jit", 1, True, True)


def test_a_fit_that_trains_a_head_encodes_in_fp32_eagerly():
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), encode_precision="bf16", compile="freeze", device="cpu"),
        head="linear",
    )
    model._fit_encoder()
    assert model._inference_mode(10_000, exact=True) == ("eager", torch.float32)
    assert model._inference_mode(10_000, exact=False) == ("freeze", torch.bfloat16)  # queries
    assert ImageEncoder().get_params()["encode_precision"] == "fp32"


def test_bf16_features_are_cached_apart_from_fp32(tmp_path):
    images = _images(6)
    for precision in ("fp32", "bf16", "fp32"):
        ImageEncoder(TinyEncoder(), encode_precision=precision, memory=tmp_path, **TINY).fit(images).transform(images)
    fingerprints = list((tmp_path / "skretrieval-features").iterdir())
    assert len(fingerprints) == 2
    assert all(len(list(f.rglob("*.npy"))) == 6 for f in fingerprints)


@pytest.mark.parametrize("param, value, accepted", [
    ("compile", "jit", "auto"), ("encode_precision", "fp16", "bf16"), ("n_jobs", 1.5, "int"),
])
def test_invalid_parameters_are_named(param, value, accepted):
    with pytest.raises(ValueError, match=f"'{param}' parameter.*{accepted}"):
        ImageEncoder(TinyEncoder(), **{param: value}, **TINY).fit(_images(2))


_WITHOUT_COMPILER = """
import warnings
import numpy as np
from helpers import TinyEncoder
from skretrieval import ImageEncoder

images = np.random.default_rng(0).random((5, 10, 10, 3)).astype(np.float32)
tiny = {"preprocessing": {"size": 8, "crop_pct": 1.0}, "device": "cpu", "batch_size": 4}
expected = ImageEncoder(TinyEncoder(), compile="off", **tiny).fit(images).transform(images)
model = ImageEncoder(TinyEncoder(), compile="inductor", **tiny).fit(images)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = model.transform(images)
    again = model.transform(images)
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1 and "compile='inductor' is not available" in messages[0], messages
np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)  # the failed compile may leave other kernels chosen
np.testing.assert_array_equal(again, got)
print("fell back")
"""


def test_inductor_without_a_compiler_warns_once_and_runs_eagerly(tmp_path):
    """A machine without a C++ compiler: torch.compile fails at the first batch."""
    pytest.importorskip("torch._inductor")
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),  # inductor's C++ compiler, absent
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),  # nothing compiled before
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_COMPILER], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "fell back" in result.stdout, result.stderr[-3000:]
