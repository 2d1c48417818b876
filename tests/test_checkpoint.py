"""An encoding job killed with SIGKILL resumes from ``memory`` and loses at most one batch."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import CallCounter, TinyEncoder
from PIL import Image

from skretrieval import ImageEncoder, ImageRetriever

N_IMAGES, BATCH = 40, 4
PARAMS = {"preprocessing": {"size": 8}, "device": "cpu", "batch_size": BATCH}

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from helpers import SlowCounter, TinyEncoder
    from skretrieval import ImageEncoder, ImageRetriever

    ImageRetriever(ImageEncoder(TinyEncoder(SlowCounter()), memory={memory!r}, **{params!r})).fit({folder!r})
    print("done", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_fit_resumes_and_equals_uninterrupted(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    memory = tmp_path / "checkpoint"
    script = tmp_path / "job.py"
    tests = str(Path(__file__).parent)
    script.write_text(SCRIPT.format(tests=tests, memory=str(memory), params=PARAMS, folder=str(folder)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, *sys.path])}
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    started = 0
    for line in job.stdout:
        started += line.strip() == "batch"
        if started == 4:  # batches 1-3 are finished and stored; the 4th is being encoded
            os.kill(job.pid, signal.SIGKILL)
            break
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"

    counter = CallCounter()
    resumed = ImageRetriever(
        ImageEncoder(TinyEncoder(counter), memory=memory, **PARAMS),
    ).fit(folder)
    # At most the batch in flight is lost: three batches are never encoded again.
    assert counter.images <= N_IMAGES - 3 * BATCH
    assert counter.images >= N_IMAGES - 4 * BATCH  # and the restart really did the rest
    uninterrupted = ImageRetriever(ImageEncoder(TinyEncoder(), **PARAMS)).fit(folder)
    np.testing.assert_array_equal(resumed.prototype_, uninterrupted.prototype_)
    np.testing.assert_array_equal(resumed.prototype_ids_, uninterrupted.prototype_ids_)
