"""``skretrieval index --update MODEL FOLDER``: only new and changed files are encoded."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CallCounter, TinyEncoder
from PIL import Image

from skretrieval import Preprocessing, cli, load
from skretrieval.encoders import BuiltEncoder, register_encoder

COUNTER = CallCounter()


@register_encoder("cli_counting")
def _cli_counting(weights=None):
    """The tiny encoder, counting the images it encodes (in this process)."""
    return BuiltEncoder(TinyEncoder(COUNTER), Preprocessing(size=8, crop_pct=1.0))


ENCODER = ["--encoder", "cli_counting", "--device", "cpu", "--compile", "off"]
HOUR = 3600 * 10**9


def _write(path, seed, *, age_ns=HOUR):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    when = time.time_ns() - age_ns - seed
    os.utime(path, ns=(when, when))


def _gallery(root, n=12):
    for i in range(n):
        _write(root / ("cat", "dog", "eel")[i % 3] / f"{i:02d}.png", i)
    return root


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _index(capsys, gallery, model, *extra):
    code, _, err = _run(capsys, "index", gallery, "-o", model, *ENCODER, *extra)
    assert code == 0, err


def _assert_same_model(path, expected_path):
    got, expected = load(path), load(expected_path)
    np.testing.assert_allclose(got.prototype_, expected.prototype_, rtol=1e-6, atol=1e-7)
    for name in ("prototype_ids_", "prototype_labels_", "classes_", "prototype_file_stats_"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    queries = expected.prototype_ + 0.01
    np.testing.assert_array_equal(got.kneighbors(queries)[1], expected.kneighbors(queries)[1])


@pytest.mark.parametrize("labels", [[], ["--labels-from-folders"]])
def test_update_encodes_only_new_and_changed_files_and_equals_a_fresh_index(tmp_path, capsys, labels):
    gallery, model = _gallery(tmp_path / "gallery"), tmp_path / "model.skr"
    _index(capsys, gallery, model, *labels)
    _write(gallery / "dog" / "04.png", 100, age_ns=HOUR // 2)  # changed
    os.remove(gallery / "eel" / "05.png")  # deleted
    _write(gallery / "cat" / "20.png", 20)  # new
    _write(gallery / "fox" / "21.png", 21)  # new, of a new label
    COUNTER.images = 0
    code, out, err = _run(capsys, "index", "--update", model, gallery)
    assert code == 0, err
    assert COUNTER.images == 3
    assert "update: 10 files unchanged, 3 to encode (new or changed), 2 gallery items dropped" in err
    assert out == f"updated 13 images (11-d{', 4 labels' if labels else ''}) -> {model}\n"
    _index(capsys, gallery, tmp_path / "fresh.skr", *labels)
    _assert_same_model(model, tmp_path / "fresh.skr")
    COUNTER.images = 0
    other = tmp_path / "copy.skr"
    before = model.read_bytes()
    code, _, err = _run(capsys, "index", "--update", model, gallery, "-o", other, "--batch-size", "2")
    assert code == 0 and COUNTER.images == 0, err  # nothing changed since: nothing encoded
    assert model.read_bytes() == before  # -o writes elsewhere, the model stays as it is
    _assert_same_model(other, tmp_path / "fresh.skr")


def test_a_float16_model_stays_float16_through_an_update(tmp_path, capsys):
    gallery, model = _gallery(tmp_path / "gallery"), tmp_path / "model.skr"
    _index(capsys, gallery, model, "--gallery-dtype", "float16")
    assert load(model).prototype_.dtype == np.float16
    _write(gallery / "cat" / "20.png", 20)
    code, _, err = _run(capsys, "index", "--update", model, gallery)
    assert code == 0, err
    _index(capsys, gallery, tmp_path / "fresh.skr", "--gallery-dtype", "float16")
    assert load(model).prototype_.dtype == np.float16
    _assert_same_model(model, tmp_path / "fresh.skr")


def test_a_model_without_file_stats_is_encoded_again_whole(tmp_path, capsys):
    gallery, model = _gallery(tmp_path / "gallery"), tmp_path / "model.skr"
    _index(capsys, gallery, model)
    old = load(model)
    del old.prototype_file_stats_  # as models were written before index --update existed
    old.save(model)
    COUNTER.images = 0
    code, _, err = _run(capsys, "index", "--update", model, gallery)
    assert code == 0 and COUNTER.images == 12, err
    assert "update: 0 files unchanged, 12 to encode" in err
    _index(capsys, gallery, tmp_path / "fresh.skr")
    _assert_same_model(model, tmp_path / "fresh.skr")


KILLED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from helpers import SlowCounter, TinyEncoder
    from skretrieval import Preprocessing, cli
    from skretrieval.encoders import BuiltEncoder, register_encoder

    register_encoder("cli_counting")(lambda weights=None: BuiltEncoder(TinyEncoder(SlowCounter(0.3)), Preprocessing(size=8, crop_pct=1.0)))
    sys.exit(cli.main(["index", "--update", {model!r}, {gallery!r}, "--batch-size", "2"]))
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_an_update_killed_while_encoding_leaves_the_model_intact(tmp_path, capsys):
    gallery, model = _gallery(tmp_path / "gallery"), tmp_path / "model.skr"
    _index(capsys, gallery, model)
    before = model.read_bytes()
    for i in range(30, 40):
        _write(gallery / "cat" / f"{i}.png", i)
    script = tmp_path / "update.py"
    script.write_text(KILLED.format(tests=str(Path(__file__).parent), model=str(model), gallery=str(gallery)))
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = 0
    for line in job.stdout:
        started += line.strip() == "batch"
        if started == 3:  # two batches of new files encoded, the third in flight
            os.kill(job.pid, signal.SIGKILL)
            break
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, "the update ended before it could be killed"
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery", "model.skr", "update.py"]
    assert len(load(model).prototype_) == 12  # the old model, loadable
    COUNTER.images = 0
    code, _, err = _run(capsys, "index", "--update", model, gallery)  # and the next run completes
    assert code == 0 and COUNTER.images == 10, err


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["index", "--update", "{tmp}/missing.skr", "{tmp}/gallery"], 1,
         "model file '{tmp}/missing.skr' (--update) does not exist; create it with `skretrieval index`."),
        (["index", "--update", "{tmp}/model.skr", "{tmp}/nowhere"], 1,
         "'{tmp}/nowhere' is not a folder; give the folder of gallery images."),
        (["index", "--update", "{tmp}/gallery/cat/00.png", "{tmp}/gallery"], 1, "is not a skretrieval model file"),
        (["index", "--update", "{tmp}/model.skr", "{tmp}/gallery", "--encoder", "resnet18"], 2,
         "--update encodes with the model's own encoder, options and labels; leave out --encoder"),
        (["index", "--update", "{tmp}/model.skr", "{tmp}/gallery", "--labels-from-folders"], 2,
         "leave out --labels-from-folders"),
        (["index", "{tmp}/gallery"], 2, "give the model file to write, -o/--output MODEL (or --update MODEL"),
        (["index", "--update", "{tmp}/model.skr", "{tmp}/gallery", "--gallery-dtype", "float16"], 2,
         "leave out --gallery-dtype"),
    ],
)
def test_update_errors_are_one_line(tmp_path, capsys, argv, code, message):
    gallery, model = _gallery(tmp_path / "gallery", n=3), tmp_path / "model.skr"
    _index(capsys, gallery, model)
    got, out, err = _run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert got == code and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint: "), err
    assert lines[0].startswith("skretrieval index: error: ") and message.format(tmp=tmp_path) in lines[0], lines[0]
