"""On-disk (memory-mapped) and float16 galleries: streamed block by block, same results.

A streamed gallery must give exactly what the resident float32 search gives on the stored
vectors (float16 ones upcast), for top-k, radius and the gallery against itself; the
resident memory of a search of a 2 GiB memory-mapped gallery is measured in a subprocess.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import reference_scores
from hypothesis import given, settings
from hypothesis import strategies as st

import skretrieval
from skretrieval import ImageRetriever
from skretrieval.search import SearchGallery, get_similarity, radius_search, topk_search
from skretrieval.search._storage import file_backing, read_blocks

NAMES = ["cosine", "dot", "euclidean"]
RADIUS = {"cosine": 0.6, "dot": -2.0, "euclidean": 3.5}


def _data(seed=0, n=700, n_queries=23, dim=24):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    gallery = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    queries = centres[rng.integers(0, 20, n_queries)] + 0.3 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    return queries, gallery


def _on_disk(tmp_path, array, name="gallery.npy"):
    np.save(tmp_path / name, array)
    return np.load(tmp_path / name, mmap_mode="r")


def _assert_same_radius(got, expected):
    for (d1, i1), (d2, i2) in zip(zip(*got), zip(*expected)):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("name", NAMES)
def test_memory_mapped_and_float16_galleries_equal_the_resident_search(tmp_path, name):
    queries, gallery = _data()
    similarity = get_similarity(name)
    half = gallery.astype(np.float16)
    stored = {  # each streamed gallery, and the float32 gallery of the same stored values
        "memory-mapped float32": (_on_disk(tmp_path, gallery), gallery),
        "float16": (half, half.astype(np.float32)),
        "memory-mapped float16": (_on_disk(tmp_path, half, "half.npy"), half.astype(np.float32)),
    }
    for what, (streamed, resident) in stored.items():
        assert SearchGallery(streamed, similarity).streamed, what
        for working_memory in (0.05, None):  # many blocks, one block
            expected = topk_search(queries, resident, 10, similarity, working_memory=working_memory)
            got = topk_search(queries, streamed, 10, similarity, working_memory=working_memory)
            np.testing.assert_array_equal(got[1], expected[1], err_msg=what)
            np.testing.assert_array_equal(got[0], expected[0], err_msg=what)
        reference = reference_scores(queries, resident, name)
        np.testing.assert_allclose(got[0], np.sort(reference, axis=1)[:, ::-1][:, :10], rtol=1e-5, atol=1e-5)
        expected = radius_search(queries, resident, RADIUS[name], similarity, working_memory=0.05)
        got = radius_search(queries, streamed, RADIUS[name], similarity, working_memory=0.05)
        assert sum(map(len, got[1])) > 50, what  # the radius finds real neighbours
        _assert_same_radius(got, expected)
        # the gallery against itself: memory-mapped queries are read in blocks too
        expected = topk_search(resident, resident, 5, similarity, exclude_self=True, working_memory=0.5)
        got = topk_search(streamed, streamed, 5, similarity, exclude_self=True, working_memory=0.5)
        np.testing.assert_array_equal(got[1], expected[1], err_msg=what)
        np.testing.assert_array_equal(got[0], expected[0], err_msg=what)


@settings(max_examples=40, deadline=None)
@given(
    n_gallery=st.integers(2, 80),
    dim=st.integers(1, 6),
    name=st.sampled_from(NAMES),
    working_memory=st.sampled_from([1e-4, 1e-2, None]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_float16_gallery_is_exact_for_its_stored_vectors(n_gallery, dim, name, working_memory, seed, data):
    rng = np.random.default_rng(seed)
    gallery = (rng.integers(-4, 5, size=(n_gallery, dim)) / 3).astype(np.float16)  # ties, roundings
    queries = rng.standard_normal((5, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n_gallery))
    similarity = get_similarity(name)
    expected = topk_search(queries, gallery.astype(np.float32), k, similarity, working_memory=working_memory)
    got = topk_search(queries, gallery, k, similarity, working_memory=working_memory)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    reference = reference_scores(queries, gallery.astype(np.float32), name)
    np.testing.assert_allclose(got[0], np.take_along_axis(reference, got[1], 1), atol=1e-5)


def test_file_backing_finds_the_rows_of_views(tmp_path):
    gallery = np.arange(60, dtype=np.float32).reshape(20, 3)
    mapped = _on_disk(tmp_path, gallery)
    assert file_backing(gallery) is None
    for view in (mapped, mapped[5:], np.asarray(mapped[7:12])):
        name, offset = file_backing(view)
        np.testing.assert_array_equal(np.fromfile(name, np.float32, view.size, offset=offset), view.ravel())
        blocks = [b.copy() for _, b in read_blocks(view, 4)]  # one reused buffer: copied
        np.testing.assert_array_equal(np.concatenate(blocks), view)
    assert file_backing(mapped[:, :2]) is None  # not whole rows: searched as an in-memory array


@pytest.mark.parametrize("name", NAMES)
def test_retriever_keeps_a_memory_mapped_gallery_on_disk_and_add_copies_it(tmp_path, name):
    queries, gallery = _data()
    labels = np.arange(len(gallery)) % 7
    params = {"similarity_fn": name, "topk": 5, "working_memory": 0.05}
    in_memory = ImageRetriever("precomputed", **params).fit(gallery, labels)
    mapped = _on_disk(tmp_path, gallery)
    on_disk = ImageRetriever("precomputed", **params).fit(mapped, labels)
    assert file_backing(on_disk.prototype_) == file_backing(mapped)  # the file itself, not a copy
    assert on_disk._search_gallery().streamed and not in_memory._search_gallery().streamed
    for method in ("search", "kneighbors"):
        for got, expected in zip(getattr(on_disk, method)(queries), getattr(in_memory, method)(queries)):
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(on_disk.kneighbors()[1], in_memory.kneighbors()[1])
    _assert_same_radius(on_disk.radius_neighbors(queries, RADIUS[name]), in_memory.radius_neighbors(queries, RADIUS[name]))
    np.testing.assert_array_equal(on_disk.predict(queries), in_memory.predict(queries))
    on_disk.add(queries, np.zeros(len(queries), int))
    in_memory.add(queries, np.zeros(len(queries), int))
    assert file_backing(on_disk.prototype_) is None  # add copied the gallery into memory
    np.testing.assert_array_equal(np.load(tmp_path / "gallery.npy"), gallery)  # the file is unchanged
    np.testing.assert_array_equal(on_disk.kneighbors(queries)[1], in_memory.kneighbors(queries)[1])


def test_fit_on_a_memory_mapped_gallery_checks_it_in_blocks(tmp_path):
    gallery = _data()[1]
    gallery[345, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity .*row 345"):
        ImageRetriever("precomputed").fit(_on_disk(tmp_path, gallery))
    # another dtype than gallery_dtype is converted into memory
    fitted = ImageRetriever("precomputed").fit(_on_disk(tmp_path, _data()[1].astype(np.float64), "f64.npy"))
    assert fitted.prototype_.dtype == np.float32 and file_backing(fitted.prototype_) is None


def test_gallery_dtype_float16(tmp_path):
    queries, gallery = _data()
    half = ImageRetriever("precomputed", gallery_dtype="float16").fit(gallery)
    assert half.prototype_.dtype == np.float16
    np.testing.assert_array_equal(half.prototype_, gallery.astype(np.float16))
    upcast = ImageRetriever("precomputed").fit(gallery.astype(np.float16).astype(np.float32))
    for got, expected in zip(half.search(queries), upcast.search(queries)):
        np.testing.assert_array_equal(got, expected)
    assert half.fit_transform(gallery).dtype == np.float32
    with pytest.raises(ValueError, match="gallery_dtype"):
        ImageRetriever("precomputed", gallery_dtype="int8").fit(gallery)
    with pytest.raises(ValueError, match="up to 65504, but these features reach 70000"):
        ImageRetriever("precomputed", gallery_dtype="float16").fit(np.array([[1.0, 2.0], [70000.0, 0.0]]))
    with pytest.raises(ValueError, match="reach 1e[+]06"):
        half.add([[-1e6] + [0.0] * (gallery.shape[1] - 1)])
    assert len(half.prototype_) == len(gallery)  # a refused add leaves the gallery as it was
    half.add(queries)
    assert half.prototype_.dtype == np.float16 and len(half.prototype_) == len(gallery) + len(queries)


@pytest.mark.parametrize("gallery_dtype", ["float32", "float16"])
def test_save_and_load_keep_the_dtype_and_open_memory_mapped(tmp_path, gallery_dtype):
    queries, gallery = _data()
    model = ImageRetriever("precomputed", gallery_dtype=gallery_dtype, topk=4).fit(gallery, np.arange(700) % 9)
    path = model.save(tmp_path / "model.skr")
    expected = model.search(queries), model.radius_neighbors(queries, 0.5)
    for mmap in (False, True):
        loaded = skretrieval.load(path, mmap=mmap)
        assert loaded.prototype_.dtype == model.prototype_.dtype
        assert (file_backing(loaded.prototype_) is not None) == mmap
        np.testing.assert_array_equal(loaded.prototype_, model.prototype_)
        for got, want in zip(loaded.search(queries), expected[0]):
            np.testing.assert_array_equal(got, want)
        _assert_same_radius(loaded.radius_neighbors(queries, 0.5), expected[1])
        np.testing.assert_array_equal(loaded.predict(queries), model.predict(queries))
    # a memory-mapped model saves again (streamed from its file) to an identical gallery
    again = skretrieval.load(skretrieval.load(path, mmap=True).save(tmp_path / "again.skr"))
    np.testing.assert_array_equal(again.prototype_, model.prototype_)


def test_a_prototype_whose_dtype_disagrees_with_gallery_dtype_is_refused(tmp_path):
    import zipfile

    model = ImageRetriever("precomputed", gallery_dtype="float16").fit(_data()[1])
    path = model.save(tmp_path / "model.skr")
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["meta.json"] = entries["meta.json"].replace(b'"gallery_dtype": "float16"', b'"gallery_dtype": "float32"')
    with zipfile.ZipFile(tmp_path / "bad.skr", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    for mmap in (False, True):
        with pytest.raises(skretrieval.FileFormatError, match="prototype_ is F16.*not 2-D F32"):
            skretrieval.load(tmp_path / "bad.skr", mmap=mmap)


_RSS_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from skretrieval.search import SearchGallery, get_similarity, topk_search

    def status_mib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024

    gallery = np.load(sys.argv[1], mmap_mode="r")
    queries = np.random.default_rng(1).standard_normal((16, gallery.shape[1])).astype(np.float32)
    similarity = get_similarity("cosine")
    topk_search(queries, np.asarray(gallery[:5000]), 10, similarity)  # warm up torch's kernels
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the resident memory now
    before = status_mib("VmRSS")
    resident = SearchGallery(gallery, similarity)  # the statistics pass reads the whole file
    scores, indices = topk_search(queries, resident, 10, similarity, working_memory=float(sys.argv[2]))
    print(status_mib("VmHWM") - before, indices[0, 0], scores[0, 0])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_resident_memory_of_a_2gib_memory_mapped_search(tmp_path):
    """What it measures: the growth of the search process's peak resident memory (VmHWM,
    reset before the search) over its resident memory after imports and a warm-up, while
    it opens a 2 GiB float32 ``.npy`` gallery memory-mapped and searches all of it. Bound:
    ``working_memory`` (64 MiB) plus 64 MiB (the resident ``sqnorm``, 16 MiB here, the
    statistics pass's 16 MiB blocks, torch's allocator). A search through the mapping
    would add the 2 GiB."""
    n, dim, working_memory = 4 * 2**20, 128, 64
    path = tmp_path / "gallery.npy"
    chunk = np.random.default_rng(0).standard_normal((2**16, dim), dtype=np.float32)
    with open(path, "wb") as file:  # written in 32 MiB chunks, each shifted: rows differ
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, dim)}
        np.lib.format.write_array_header_2_0(file, header)
        for _ in range(n // len(chunk)):
            chunk[:, 0] += 1.0
            file.write(chunk.tobytes())
    assert path.stat().st_size > 2 * 2**30
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(path), str(working_memory)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()
    growth, best, score = float(out[0]), int(out[1]), float(out[2])
    row = np.asarray(np.load(path, mmap_mode="r")[best], np.float64)
    query = np.random.default_rng(1).standard_normal((16, dim)).astype(np.float32)[0]
    assert abs(row @ query / np.linalg.norm(row) / np.linalg.norm(query) - score) < 1e-5  # a real row
    assert growth < working_memory + 64, f"peak resident memory grew by {growth:.0f} MiB"


def test_load_with_mmap_reads_no_gallery_data(tmp_path):
    """Without mmap the gallery is read (its CRC checked); with mmap only headers are:
    a changed gallery byte goes unnoticed by the CRC and shows in prototype_."""
    path = ImageRetriever("precomputed").fit(_data()[1]).save(tmp_path / "model.skr")
    name, offset = file_backing(skretrieval.load(path, mmap=True).prototype_)
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0xFF  # in the first row's first float32
    path.write_bytes(bytes(data))
    with pytest.raises(skretrieval.FileFormatError, match="CRC"):
        skretrieval.load(path)
    changed = skretrieval.load(path, mmap=True).prototype_
    assert changed[0, 0] != _data()[1][0, 0] and np.array_equal(changed[1:], _data()[1][1:])
