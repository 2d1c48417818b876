"""``ImageRetriever.update``: only new and changed files are encoded; the result equals a fresh fit."""

import os
import time

import numpy as np
import pytest
from helpers import CallCounter, TinyEncoder
from PIL import Image

from skretrieval import ImageEncoder, ImageRetriever, load
from skretrieval.io import list_labelled_images
from skretrieval.io._stats import RACY_NS

HOUR = 3600 * 10**9


def _write(path, seed, *, age_ns=HOUR):
    """A small PNG of random pixels, modified ``age_ns`` ago (not racy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    when = time.time_ns() - age_ns - seed  # distinct times
    os.utime(path, ns=(when, when))
    return str(path)


def _folder(root, n=12):
    for i in range(n):
        _write(root / ("cat", "dog", "eel")[i % 3] / f"{i:02d}.png", i)
    return root


def _retriever(counter=None):
    encoding = ImageEncoder(TinyEncoder(counter), preprocessing={"size": 8}, device="cpu", batch_size=4, compile="off")
    return ImageRetriever(encoding, topk=3)


def _assert_equal_fits(got, expected):
    np.testing.assert_allclose(got.prototype_, expected.prototype_, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got.prototype_ids_, expected.prototype_ids_)
    np.testing.assert_array_equal(got.prototype_labels_, expected.prototype_labels_)
    np.testing.assert_array_equal(got.classes_, expected.classes_)
    np.testing.assert_array_equal(got.prototype_file_stats_, expected.prototype_file_stats_)
    queries = expected.prototype_[::2] + 0.01
    np.testing.assert_array_equal(got.kneighbors(queries)[1], expected.kneighbors(queries)[1])
    np.testing.assert_array_equal(got.predict(queries), expected.predict(queries))


def _change(root):
    """One file rewritten, one deleted, one new in a known class and one of a new class."""
    _write(root / "dog" / "04.png", 100, age_ns=HOUR // 2)
    os.remove(root / "eel" / "05.png")
    _write(root / "cat" / "20.png", 20)
    _write(root / "fox" / "21.png", 21)


@pytest.mark.parametrize("labelled", [True, False])
def test_only_new_and_changed_files_are_encoded_and_the_result_equals_a_fit(tmp_path, labelled, capsys):
    root = _folder(tmp_path / "gallery")
    counter = CallCounter()

    def files():
        return list_labelled_images(root) if labelled else (str(root), None)

    retriever = _retriever(counter).fit(*files())
    assert counter.images == 12
    _change(root)
    counter.images = 0
    retriever.set_params(verbose=1).update(*files())
    assert counter.images == 3  # dog/04 (changed), cat/20 and fox/21 (new); eel/05 dropped
    assert "update: 10 files unchanged, 3 to encode (new or changed), 2 gallery items dropped" in capsys.readouterr().err
    _assert_equal_fits(retriever, _retriever().fit(*files()))
    counter.images = 0
    retriever.update(*files())  # nothing changed since: nothing encoded, nothing moves
    assert counter.images == 0
    _assert_equal_fits(retriever, _retriever().fit(*files()))


def test_a_saved_model_updates_and_an_old_one_without_stats_re_encodes_everything(tmp_path):
    root = _folder(tmp_path / "gallery")
    counter = CallCounter()
    path = _retriever().fit(root).save(tmp_path / "model.skr")
    _change(root)
    updated = load(path, encoder=TinyEncoder(counter)).update(root)
    assert counter.images == 3
    _assert_equal_fits(updated, _retriever().fit(root))
    old = load(path, encoder=TinyEncoder(counter))
    del old.prototype_file_stats_  # as skretrieval wrote models before update existed
    counter.images = 0
    _assert_equal_fits(old.update(root), _retriever().fit(root))
    assert counter.images == 13  # every file


def test_a_file_modified_while_it_was_encoded_is_encoded_again(tmp_path):
    root = _folder(tmp_path / "gallery", n=4)
    fresh = _write(root / "cat" / "09.png", 9, age_ns=0)  # written just now: it may change again
    counter = CallCounter()
    retriever = _retriever(counter).fit(root)
    row = retriever.prototype_ids_.tolist().index(fresh)
    assert (retriever.prototype_file_stats_[row] == -1).all()
    assert (np.delete(retriever.prototype_file_stats_, row, axis=0) >= 0).all()
    counter.images = 0
    when = time.time_ns() - 2 * RACY_NS
    os.utime(fresh, ns=(when, when))
    retriever.update(root)
    assert counter.images == 1  # only the racy file is read again
    assert (retriever.prototype_file_stats_[row] == [os.path.getsize(fresh), when]).all()


def test_unreadable_new_files_are_skipped_with_their_index_in_x(tmp_path):
    root = _folder(tmp_path / "gallery", n=3)
    encoding = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu", on_error="skip")
    retriever = ImageRetriever(encoding, topk=1).fit(root)
    bad = root / "cat" / "01.png"  # a new file, second of the folder: cat/00, cat/01, dog/01, eel/02
    bad.write_bytes(b"not an image")
    retriever.update(root)
    files = sorted(str(p) for p in root.rglob("*.png"))
    assert retriever.skipped_ == [(1, str(bad), retriever.skipped_[0][2])] and "01.png" in retriever.skipped_[0][2]
    assert retriever.prototype_ids_.tolist() == [files[0], *files[2:]]


def test_update_errors_name_what_is_accepted(tmp_path):
    root = _folder(tmp_path / "gallery", n=3)
    files, labels = list_labelled_images(root)
    retriever = _retriever().fit(files, labels)
    with pytest.raises(ValueError, match="fitted with labels, so update needs the labels"):
        retriever.update(files)
    with pytest.raises(ValueError, match="takes a folder or a list of image file paths; got ndarray"):
        retriever.update(np.zeros((3, 11)), labels)
    with pytest.raises(ValueError, match="which is not a folder"):
        retriever.update(str(tmp_path / "missing"), labels)
    with pytest.raises(ValueError, match="X has 3 samples but y has 2"):
        retriever.update(files, labels[:2])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        retriever.update(empty, [])
    (empty / "bad.png").write_bytes(b"not an image")
    skipping = _retriever().set_params(encoder__on_error="skip").fit(root)
    with pytest.raises(ValueError, match=r"no readable image file in .*empty' \(1 unreadable\).*left as it was"):
        skipping.update(empty)
    assert len(skipping.prototype_) == 3  # still whole
