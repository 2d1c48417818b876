"""Duplicates: ``find_duplicates`` within the gallery and against it, against numpy brute force;
its memory bound (in a subprocess); ``duplicates_to_remove``."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import TinyEncoder, reference_scores
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from skretrieval import ImageEncoder, ImageRetriever, duplicates_to_remove

GAP = 1e-5  # float64 scores this close to the threshold could fall either side in float32


def _planted(rng, n, dim):
    """Random rows, a third of them overwritten by near-copies of others (chains included)."""
    X = rng.standard_normal((n, dim)).astype(np.float32)
    for _ in range(n // 3):
        source, target = rng.integers(0, n, 2)
        X[target] = X[source] + 1e-3 * rng.standard_normal(dim).astype(np.float32)
    return X


def _threshold(scores, rng):
    """A threshold halfway between two consecutive scores, clear of both."""
    values = np.unique(scores[np.isfinite(scores)])
    assume(len(values) >= 2)
    i = rng.integers(0, len(values) - 1)
    assume(values[i + 1] - values[i] > 2 * GAP)
    return float((values[i] + values[i + 1]) / 2)


def _brute_force_groups(scores, threshold):
    """Connected components of ``scores >= threshold`` (scipy), as ``find_duplicates`` orders them."""
    _, component = connected_components(csr_matrix(scores >= threshold), directed=False)
    groups = [np.flatnonzero(component == c) for c in np.unique(component)]
    return sorted((g.tolist() for g in groups if len(g) > 1), key=lambda g: g[0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40), name=st.sampled_from(["cosine", "euclidean"]))
def test_groups_equal_brute_force(seed, n, name):
    rng = np.random.default_rng(seed)
    X = _planted(rng, n, 3)
    scores = reference_scores(X, X, name)
    np.fill_diagonal(scores, -np.inf)
    threshold = _threshold(scores, rng)
    retriever = ImageRetriever("precomputed", similarity_fn=name, working_memory=1e-3).fit(X)
    groups = retriever.find_duplicates(min_similarity=threshold)
    assert [g.tolist() for g in groups] == _brute_force_groups(scores, threshold)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), n=st.integers(1, 30), m=st.integers(1, 12),
    name=st.sampled_from(["cosine", "euclidean"]),
)
def test_matches_against_the_gallery_equal_brute_force(seed, n, m, name):
    rng = np.random.default_rng(seed)
    gallery = _planted(rng, n, 3)
    new = rng.standard_normal((m, 3)).astype(np.float32)
    copied = rng.random(m) < 0.5  # half the new items are near-copies of gallery rows
    new[copied] = gallery[rng.integers(0, n, copied.sum())] + 1e-3 * rng.standard_normal((copied.sum(), 3))
    scores = reference_scores(new, gallery, name)
    threshold = _threshold(scores, rng)
    retriever = ImageRetriever("precomputed", similarity_fn=name, working_memory=1e-3).fit(gallery)
    similarities, matches = retriever.find_duplicates(new, threshold, return_similarity=True)
    assert matches.dtype == object and len(matches) == m
    for row_scores, sims, rows in zip(scores, similarities, matches):
        expected = np.flatnonzero(row_scores >= threshold)
        assert sorted(rows.tolist()) == expected.tolist()
        np.testing.assert_allclose(sims, row_scores[rows], atol=GAP)
        assert np.all(sims >= np.float32(threshold))
        # most similar first, equal similarities by row
        assert all(s0 > s1 or (s0 == s1 and r0 < r1) for s0, s1, r0, r1 in zip(sims, sims[1:], rows, rows[1:]))
    np.testing.assert_array_equal(
        np.concatenate([*retriever.find_duplicates(new, threshold), []]), np.concatenate([*matches, []])
    )


def test_against_unreadable_and_embedded_queries(colour_images, tmp_path):
    """Image files go through the query core: an unreadable one has no match; embeddings too."""
    from PIL import Image

    images, _ = colour_images
    paths = []
    for n in (0, 8, 16):  # a red, a green and a blue image
        paths.append(str(tmp_path / f"{n:02d}.png"))
        Image.fromarray(images[n]).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    encoding = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu", on_error="skip")
    retriever = ImageRetriever(encoding).fit(paths)
    new = [paths[1], str(tmp_path / "bad.png"), paths[2]]
    matches = retriever.find_duplicates(new, 0.99999)
    assert [m.tolist() for m in matches] == [[1], [], [2]]
    features = retriever.transform(new)
    embedded = retriever.find_duplicates(features, 0.99999, embedded=True)
    assert [m.tolist() for m in embedded] == [[1], [], [2]]


def test_against_auto_threshold_is_the_gallery_one():
    rng = np.random.default_rng(3)
    X = _planted(rng, 60, 4)
    retriever = ImageRetriever("precomputed", false_match_rate=0.2).fit(X)
    estimated = ImageRetriever("precomputed", threshold="auto", false_match_rate=0.2).fit(X).threshold_
    new = X[:10] + 1e-4
    for got, expected in zip(retriever.find_duplicates(new, "auto"), retriever.find_duplicates(new, estimated)):
        np.testing.assert_array_equal(got, expected)


def test_the_threshold_given_first_is_a_clear_error():
    retriever = ImageRetriever("precomputed").fit(np.eye(3))
    with pytest.raises(TypeError, match=r"find_duplicates\(min_similarity=0.95\)"):
        retriever.find_duplicates(0.95)
    with pytest.raises(TypeError, match="min_similarity='auto'"):
        retriever.find_duplicates("auto")


# -- memory ------------------------------------------------------------------------------------

MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from skretrieval import ImageRetriever

    n, d, n_copies = map(int, sys.argv[1:4])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    sources, targets = rng.permutation(n)[: 2 * n_copies].reshape(2, -1)
    X[targets] = X[sources] + 1e-3 * rng.standard_normal((n_copies, d), dtype=np.float32)
    ImageRetriever("precomputed").fit(X[:3000]).find_duplicates(min_similarity=0.99)  # threads, caches
    retriever = ImageRetriever("precomputed", working_memory=16).fit(X)

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    before = rss("VmRSS")
    groups = retriever.find_duplicates(min_similarity=0.99)
    peak = rss("VmHWM")
    pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    print(json.dumps({"increase": peak - before, "groups": len(groups), "pairs": pairs}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_groups_of_a_large_gallery_stay_within_the_stated_memory():
    """40,000 x 16 against itself: an n x n float32 matrix would be 6.0 GiB; the bound, ~0.1 GiB.

    The bound of the docstring: ``4 n d`` bytes (the normalised search copy) + 0.5 KB per item
    + 0.5 KB per linked pair + ``working_memory`` (16 MiB here) + 64 MiB of allocator slack
    (the peak is the process's, measured after a warm-up run).
    """
    n, d, n_copies = 40_000, 16, 2_000
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(n), str(d), str(n_copies)],
        capture_output=True, text=True, check=True, env=env, timeout=600,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["groups"] >= n_copies * 0.9  # the planted copies were found (chains may merge some)
    bound = 4 * n * d + 512 * n + 512 * result["pairs"] + 16 * 2**20 + 64 * 2**20
    assert result["increase"] <= bound, (result, bound)
    assert bound < (n * n * 4) / 50  # the bound is far below any n x n float32 object


# -- which to remove -------------------------------------------------------------------------


def test_duplicates_to_remove_keeps_one_per_group(tmp_path):
    sizes = {"b.png": 30, "a.png": 10, "c.png": 30, "d.png": 5, "e.png": 7}
    paths = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        paths.append(str(tmp_path / name))
    groups = [np.array([0, 1, 2]), np.array([3, 4])]  # {b, a, c} and {d, e}
    names = lambda removable: [os.path.basename(p) for p in removable]  # noqa: E731
    assert names(duplicates_to_remove(groups, paths)) == ["b.png", "c.png", "e.png"]  # keeps a, d
    # largest: b and c tie at 30 bytes, the first of them in sorted order (b) is kept
    assert names(duplicates_to_remove(groups, paths, keep="largest")) == ["a.png", "c.png", "d.png"]
    assert names(duplicates_to_remove(groups, paths, keep="smallest")) == ["b.png", "c.png", "e.png"]
    assert duplicates_to_remove([], paths).tolist() == []
    assert duplicates_to_remove([[0, 2]], [7, 8, 3]).tolist() == [7]  # ids need not be paths
    ids = np.arange(10)
    removable = duplicates_to_remove([[1, 4, 6], [2, 9]], ids, keep="first")
    assert removable.tolist() == [4, 6, 9] and removable.dtype == ids.dtype


def test_duplicates_to_remove_errors(tmp_path):
    with pytest.raises(ValueError, match="keep='biggest' is not a rule; use one of 'first', 'largest'"):
        duplicates_to_remove([[0, 1]], ["a", "b"], keep="biggest")
    with pytest.raises(FileNotFoundError, match="compares file sizes, but item .*missing.png"):
        duplicates_to_remove([[0, 1]], [str(tmp_path / "missing.png"), "b"], keep="largest")
