"""Decoding ahead of the encoder: order kept, memory bounded, errors and early stops clean."""

import random
import threading
import time

import numpy as np
import pytest
from helpers import TinyEncoder
from PIL import Image

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.io._prefetch import ordered_map, prefetch


def _live_threads(prefix):
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_ordered_map_keeps_order_and_bounds_the_work_ahead():
    started, consumed, ahead = [], [0], []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
            ahead.append(len(started) - consumed[0])
        time.sleep(random.Random(i).random() / 500)
        return i * i

    results = []
    for value in ordered_map(work, range(200), n_threads=3, window=6):
        results.append(value)
        consumed[0] += 1
    assert results == [i * i for i in range(200)]
    assert max(ahead) <= 6


def test_ordered_map_raises_in_place_and_cancels_the_rest():
    calls = []

    def work(i):
        calls.append(i)
        if i == 5:
            raise ValueError("item 5 is bad")
        time.sleep(0.001)
        return i

    seen = []
    with pytest.raises(ValueError, match="item 5"):
        for value in ordered_map(work, range(1000), n_threads=2, window=4):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert len(calls) < 20  # the queued work was cancelled, not run to the end
    time.sleep(0.05)
    assert not _live_threads("skretrieval-decode")


def test_prefetch_runs_ahead_by_at_most_depth():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    for i, value in enumerate(prefetch(items(), depth=2)):
        assert value == i
        time.sleep(0.002)
        assert len(produced) - (i + 1) <= 3  # in the queue (2) and one being put


def test_prefetch_reraises_the_producers_error():
    def items():
        yield 1
        raise KeyError("from the producer")

    got = []
    with pytest.raises(KeyError, match="from the producer"):
        for value in prefetch(items(), depth=2):
            got.append(value)
    assert got == [1]


def test_stopping_early_stops_the_producer_and_runs_its_clean_up():
    cleaned = threading.Event()

    def items():
        try:
            yield from range(10_000)
        finally:
            cleaned.set()

    for value in prefetch(items(), depth=2):
        if value == 3:
            break
    assert cleaned.wait(2)
    assert not _live_threads("skretrieval-prefetch")


def _write_pngs(folder, n, bad=()):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        if i in bad:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_decoding_threads_give_the_serial_result(tmp_path, on_error):
    bad = () if on_error == "raise" else (0, 7, 8, 22)
    paths = _write_pngs(tmp_path, 23, bad)
    params = {"preprocessing": {"size": 8}, "device": "cpu", "batch_size": 5, "on_error": on_error}
    serial = ImageRetriever(ImageEncoder(TinyEncoder(), n_jobs=1, **params)).fit(paths)
    parallel = ImageRetriever(ImageEncoder(TinyEncoder(), n_jobs=3, **params)).fit(paths)
    np.testing.assert_array_equal(parallel.prototype_, serial.prototype_)
    assert parallel.skipped_ == serial.skipped_
    assert [index for index, _, _ in parallel.skipped_] == list(bad)
    np.testing.assert_array_equal(parallel.transform(paths), serial.transform(paths))


def test_a_bad_file_raises_its_own_error_with_threads(tmp_path):
    paths = _write_pngs(tmp_path, 12, bad=(9,))
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), n_jobs=2, preprocessing={"size": 8}, device="cpu", batch_size=4),
    )
    with pytest.raises(ValueError, match="009.png"):
        model.fit(paths)
    time.sleep(0.05)
    assert not _live_threads("skretrieval-")
