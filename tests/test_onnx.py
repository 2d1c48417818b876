"""The ONNX Runtime path of compile="auto": same features as eager torch, exported once, cached on disk."""

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

from skretrieval import ImageEncoder
from skretrieval._onnx import CACHE_DIR_ENV, artefact_dir, exportable

pytest.importorskip("onnxruntime")

SMALL = {"preprocessing": {"size": 32, "crop_pct": 1.0}, "device": "cpu", "batch_size": 4}


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _photos(size):
    """Four of scikit-image's bundled photos, resized to ``size`` x ``size``, uint8."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in photos])


def _known_parts_module(seed=0):
    """A small CNN of torch.nn parts only: compile="auto" exports it."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()



def test_default_encoder_runs_on_onnx_runtime_with_the_eager_features():
    images = _photos(160)
    fast = ImageEncoder(device="cpu").fit(images[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fall-back to eager
        got = fast.transform(images)
    runner = fast._inference_runner
    assert runner.builds == ["onnx"] and runner._onnx  # the default path is ONNX Runtime
    expected = ImageEncoder(device="cpu", compile="off").fit(images[:1]).transform(images)
    assert _cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_a_torchvision_model_runs_on_onnx_runtime_with_the_eager_features():
    images = _photos(48)
    params = {"encoder": "resnet18", "weights": None, **SMALL}  # random weights: nothing to download
    torch.manual_seed(0)
    fast = ImageEncoder(**params).fit(images[:1])
    assert exportable(fast.encoder_)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = fast.transform(images)
    assert fast._inference_runner.builds == ["onnx"]
    torch.manual_seed(0)  # the same random weights
    expected = ImageEncoder(compile="off", **params).fit(images[:1]).transform(images)
    assert _cosines(got, expected).min() >= 0.9999


def test_own_modules_stay_eager_under_auto():
    model = ImageEncoder(TinyEncoder(), **SMALL).fit(_photos(32))
    assert not exportable(model.encoder_)
    model.transform(_photos(32))
    assert model._inference_runner.builds == []


class _Spectral(torch.nn.Module):
    """Singular values of the mean channel: an op the ONNX exporter does not have."""

    def forward(self, x):
        return torch.linalg.svdvals(x.mean(dim=1))


def test_a_module_that_cannot_be_exported_warns_once_and_runs_eagerly():
    images = _photos(32)
    expected = ImageEncoder(_Spectral(), compile="off", **SMALL).fit(images).transform(images)
    model = ImageEncoder(_Spectral(), compile="onnx", **SMALL).fit(images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = model.transform(images)  # one batch of 4
        again = model.transform(np.concatenate([images, images]))  # two more batches
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compile='onnx' is not available" in messages[0], messages
    assert "linalg_svdvals" in messages[0] and "\n" not in messages[0]  # the reason, in one line
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(again, np.concatenate([expected, expected]), rtol=1e-5)


def test_the_artefact_is_cached_on_disk_and_never_pickled(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    images = _photos(32)
    model = ImageEncoder(_known_parts_module(), **SMALL).fit(images)
    expected = model.transform(images)
    assert model._inference_runner.exported
    (artefact,) = artefact_dir().glob("*.onnx")
    assert artefact.parent == tmp_path / "onnx" and artefact.stat().st_size > 0
    assert len(pickle.dumps(model)) < artefact.stat().st_size + 20_000  # the weights, not a session
    for copy in (pickle.loads(pickle.dumps(model)), clone(model).fit(images)):
        runner = copy._inference_runner
        assert not runner._onnx  # nothing carried over
        np.testing.assert_allclose(copy.transform(images), expected, rtol=1e-6)
        assert runner.builds == ["onnx"] and not runner.exported  # loaded from the disk cache
    assert len(list(artefact_dir().glob("*.onnx"))) == 1


_ONE_PROCESS = """
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from test_onnx import SMALL, _known_parts_module, _photos
from skretrieval import ImageEncoder

images = _photos(32)
for seed in map(int, sys.argv[1:]):
    model = ImageEncoder(_known_parts_module(seed), **SMALL).fit(images)
    got = model.transform(images)
    eager = ImageEncoder(_known_parts_module(seed), compile="off", **SMALL).fit(images).transform(images)
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-6)
    print("exported" if model._inference_runner.exported else "loaded", model._inference_runner.builds)
"""


def test_a_second_process_reuses_the_artefact_and_new_weights_rebuild_it(tmp_path):
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path)}
    script = _ONE_PROCESS.format(tests=str(Path(__file__).parent))

    def run(*seeds):
        result = subprocess.run(
            [sys.executable, "-c", script, *map(str, seeds)], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip().splitlines()

    assert run(0) == ["exported ['onnx']"]
    # another process: no export for the same weights; other weights: another artefact
    assert run(0, 1) == ["loaded ['onnx']", "exported ['onnx']"]
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2


def test_threads_share_one_built_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    images = _photos(32)
    model = ImageEncoder(_known_parts_module(), **SMALL).fit(images)
    queries = [np.roll(images, s, axis=0) for s in range(12)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(model.transform, queries))
    runner = model._inference_runner
    assert runner.builds == ["onnx"] and runner.exported and len(runner._onnx) == 1
    expected = ImageEncoder(_known_parts_module(), compile="off", **SMALL).fit(images).transform(images)
    for shift, got in enumerate(results):
        np.testing.assert_allclose(got, np.roll(expected, shift, axis=0), rtol=1e-4, atol=1e-6)


_WITHOUT_RUNTIME = """
import sys, warnings
sys.path.insert(0, {tests!r})
import numpy as np
from test_onnx import SMALL, _known_parts_module, _photos
from skretrieval import ImageEncoder

sys.modules["onnxruntime"] = None  # as on a platform without its wheels: the import fails

images = _photos(32)
expected = ImageEncoder(_known_parts_module(), compile="off", **SMALL).fit(images).transform(images)
model = ImageEncoder(_known_parts_module(), **SMALL).fit(images)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = model.transform(images)
    again = model.transform(images)
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1 and "onnxruntime" in messages[0], messages
np.testing.assert_array_equal(got, expected)
np.testing.assert_array_equal(again, expected)
print("fell back")
"""


def test_without_the_runtime_auto_warns_once_and_runs_eagerly(tmp_path):
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path)}
    script = _WITHOUT_RUNTIME.format(tests=str(Path(__file__).parent))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "fell back" in result.stdout, result.stderr[-3000:]


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert artefact_dir() == tmp_path / "mine" / "onnx"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform != "win32":
        assert artefact_dir() == tmp_path / "xdg" / "skretrieval" / "onnx"


def test_an_unwritable_cache_folder_still_exports_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker))  # <file>/onnx cannot be created
    images = _photos(32)
    model = ImageEncoder(_known_parts_module(), **SMALL).fit(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = model.transform(images)
    assert model._inference_runner.builds == ["onnx"]
    expected = ImageEncoder(_known_parts_module(), compile="off", **SMALL).fit(images).transform(images)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
