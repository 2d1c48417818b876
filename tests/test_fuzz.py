"""Random inputs to fit/kneighbors/predict: a result or a documented error, never anything else.

Inputs are mostly valid (so that results are checked) and sometimes broken: NaN/inf,
out-of-range or integer images, a feature count that differs from the gallery's, k beyond
the gallery, empty arrays, booleans.
"""

import contextlib
import io
import json
import re
import struct
import tracemalloc
import warnings
import zipfile

import model_files
import numpy as np
import pytest
from helpers import TinyEncoder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skretrieval import FileFormatError, ImageEncoder, ImageRetriever, load
from skretrieval.io import read_feature_file

DOCUMENTED = (ValueError, TypeError)  # every input error of the public API is one of these
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def _array(draw, shape, unit=False):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]))
    if dtype is np.bool_:
        return draw(hnp.arrays(dtype, shape))
    if np.issubdtype(dtype, np.integer):
        high = 255 if dtype is np.uint8 or (unit and draw(st.booleans())) else 300
        return draw(hnp.arrays(dtype, shape, elements=st.integers(0, high)))
    finite = st.floats(0, 1, width=32) if unit else st.floats(-10, 10, width=32)
    values = draw(hnp.arrays(dtype, shape, elements=finite))
    if values.size and draw(st.integers(0, 4)) == 0:  # now and then a NaN, inf or out-of-range value
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 7.0]))
    return values


@st.composite
def _case(draw):
    n, d = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    gallery = draw(_array((n, d)))
    d_query = d if draw(st.integers(0, 5)) else draw(st.integers(1, 6))
    queries = draw(_array((draw(st.integers(0 if draw(st.integers(0, 9)) == 0 else 1, 4)), d_query)))
    return gallery, queries


def _check_result(model, X, k):
    distances, indices = model.kneighbors(X, n_neighbors=k)
    assert distances.shape == indices.shape == (len(X), indices.shape[1])
    assert ((indices >= 0) & (indices < len(model.prototype_))).all()
    assert not np.isnan(distances).any() and (np.diff(distances, axis=1) >= -1e-4).all()
    predictions = model.predict(X)
    assert len(predictions) == len(X)
    assert set(np.asarray(predictions).tolist()) <= set(model.classes_.tolist())


def _run(model, gallery, queries, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(gallery)
        except DOCUMENTED as exc:
            event(f"fit refused: {type(exc).__name__}")
            return
        assert np.isfinite(model.prototype_).all()
        try:
            _check_result(model, queries, k)
            event("answered")
        except DOCUMENTED as exc:
            event(f"query refused: {type(exc).__name__}")


@FUZZ
@given(
    case=_case(),
    topk=st.integers(1, 3),
    k=st.one_of(st.none(), st.none(), st.integers(-2, 10)),
    similarity=st.sampled_from(["cosine", "euclidean", "dot"]),
)
def test_precomputed_fuzz(case, topk, k, similarity):
    gallery, queries = case
    model = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
        topk=topk, similarity_fn=similarity,
    )
    _run(model, gallery, queries, k)


ENCODER = TinyEncoder()


@st.composite
def _images(draw, n):
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    channels = draw(st.sampled_from([(), (1,), (3,), (4,), (2,)]))
    return draw(_array((n, h, w, *channels), unit=True))


@FUZZ
@given(
    data=st.data(),
    n=st.integers(1, 5),
    n_queries=st.integers(1, 3),
    k=st.sampled_from([-1, 1, 1, 2, 6]),
)
def test_image_fuzz(data, n, n_queries, k):
    gallery, queries = data.draw(_images(n)), data.draw(_images(n_queries))
    model = ImageRetriever(
        ImageEncoder(ENCODER, preprocessing={"size": 4}, device="cpu", batch_size=3),
        topk=1,
    )
    _run(model, gallery, queries, k)


# ------------------------------------------------------------------------------------------
# Files from strangers: mutated model and prototype files are refused or read exactly.

RNG = np.random.default_rng(0)
GALLERY = RNG.random((12, 10, 10, 3)).astype(np.float32)
QUERIES = RNG.random((3, 10, 10, 3)).astype(np.float32)
FILES = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
_OTHER_NAMES = [
    "meta.json", "arrays.safetensors", "classes_.npy", "prototype_ids_.npy", "weights.safetensors",
    "head_.safetensors", "projection_.safetensors", "extra_.npy", "notes.txt", "features.npy", "labels.npy",
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A fine-tuned (arcface) retriever's file, and the answers the file must give."""
    model = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu", batch_size=6), topk=3,
        head="arcface", max_epochs=1, random_state=0,
    ).fit(GALLERY, list("aabbccddeeff"))
    path = model.save(tmp_path_factory.mktemp("model") / "model.skr")
    return path.read_bytes(), _answers(model)


def _answers(model):
    return [*model.kneighbors(QUERIES), model.predict(QUERIES), model.transform(QUERIES)]


def _structure(data: bytes):
    """Byte spans of the zip headers, and of each entry's first bytes (its own header)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    zip_spans, entry_spans = [(data.rindex(b"PK\x05\x06"), len(data))], []
    directory = data.find(b"PK\x01\x02")
    zip_spans.append((directory, len(data)))
    for info in infos:
        start = info.header_offset
        name_len, extra_len = struct.unpack_from("<2H", data, start + 26)
        data_start = start + 30 + name_len + extra_len
        zip_spans.append((start, data_start))
        entry_spans.append((data_start, min(data_start + 160, data_start + info.file_size)))
    return zip_spans, [span for span in entry_spans if span[1] > span[0]]


def _edit_npy(data: bytes, draw) -> bytes:
    """The .npy bytes with another dtype or shape in its header (header length kept)."""
    header_len = int.from_bytes(data[8:10], "little")
    header = eval(data[10 : 10 + header_len].decode("latin1"))  # noqa: S307 - our own test file
    if draw(st.booleans()):
        header["descr"] = draw(st.sampled_from(["<f4", "<f8", "<i8", "<i4", "<U1", "<U8", "|b1", "|O", "<c8", ">f4"]))
    else:
        header["shape"] = draw(st.sampled_from([(), (0,), (1,), (6,), (13,), (3, 4), (10**12,), (2**62, 2**62)]))
    text = repr(header)
    text += " " * max(0, header_len - len(text) - 1) + "\n"
    return data[:8] + len(text).to_bytes(2, "little") + text.encode("latin1") + data[10 + header_len :]


def _edit_safetensors(data: bytes, draw) -> bytes:
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    header[name][field] = draw({
        "dtype": st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "I32", "U8", "BOOL", "X9"]),
        "shape": st.lists(st.integers(0, 2**40), max_size=3),
        "data_offsets": st.lists(st.integers(-1, 2**40), min_size=2, max_size=2),
    }[field])
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


@st.composite
def _mutated(draw, data: bytes, names=_OTHER_NAMES):
    """``(kind, bytes)``: one of the ways a file is damaged or tampered with."""
    kind = draw(st.sampled_from(
        ["truncate", "flip zip header", "flip entry header", "flip anywhere", "rename", "duplicate",
         "add", "declared size or dtype", "zip64", "compress", "patch directory size"]
    ))
    if kind == "truncate":
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind.startswith("flip"):
        zip_spans, entry_spans = _structure(data)
        spans = {"flip zip header": zip_spans, "flip entry header": entry_spans}.get(kind, [(0, len(data))])
        mutated = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            start, end = draw(st.sampled_from(spans))
            mutated[draw(st.integers(start, end - 1))] ^= draw(st.integers(1, 255))
        return kind, bytes(mutated)
    contents = model_files.entries(io.BytesIO(data))
    name = draw(st.sampled_from(list(contents)))
    if kind == "rename":
        new = draw(st.sampled_from(names))
        items = [(new if key == name else key, value) for key, value in contents.items()]
    elif kind == "duplicate":
        items = [*contents.items(), (name, contents[name])]
    elif kind == "add":
        items = [*contents.items(), (draw(st.sampled_from(names)), contents[draw(st.sampled_from(list(contents)))])]
    elif kind == "declared size or dtype":
        if name.endswith(".npy"):
            contents[name] = _edit_npy(contents[name], draw)
        elif name.endswith(".safetensors"):
            contents[name] = _edit_safetensors(contents[name], draw)
        else:
            contents[name] = contents[name] + b" " * draw(st.integers(1, 100))
        items = list(contents.items())
    else:
        items = list(contents.items())
    buffer = io.BytesIO()
    subset = set(draw(st.lists(st.sampled_from(list(contents)), min_size=1, unique=True)))
    model_files.rewrite(buffer, items, compressed=subset if kind == "compress" else (), zip64=subset if kind == "zip64" else ())
    mutated = buffer.getvalue()
    if kind == "patch directory size":  # a central directory record claims another size
        mutated = bytearray(mutated)
        record = draw(st.sampled_from([m.start() for m in re.finditer(b"PK\x01\x02", mutated)]))
        field = record + draw(st.sampled_from([20, 24]))  # compressed / uncompressed size
        mutated[field : field + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
        mutated = bytes(mutated)
    return kind, mutated


ALLOCATION_BOUND = 32 << 20  # bytes; the files are ~10 KB, whatever sizes they declare


@contextlib.contextmanager
def _bounded_allocations():
    """Fail if reading allocates more than the bound, refused or not (numpy reports to tracemalloc).

    A refusal after a huge ``np.empty`` would pass unnoticed otherwise: with overcommit the
    allocation succeeds and only the read after it fails.
    """
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < ALLOCATION_BOUND, f"reading allocated {peak} bytes"


def _same(got, expected):
    return all(np.array_equal(a, b) for a, b in zip(got, expected))


@FILES
@given(data=st.data())
def test_mutated_model_file_is_refused_or_answers_as_saved(model_file, data, tmp_path_factory):
    original, expected = model_file
    kind, mutated = data.draw(_mutated(original))
    path = tmp_path_factory.getbasetemp() / "mutated.skr"
    path.write_bytes(mutated)
    try:
        with _bounded_allocations():
            loaded = load(path, encoder=TinyEncoder())
    except FileFormatError as error:
        assert "\n" not in str(error)
        event(f"{kind}: refused")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _same(_answers(loaded), expected), kind
    event(f"{kind}: loaded, same answers")


@pytest.fixture(scope="module")
def prototype_file(tmp_path_factory):
    model = ImageRetriever(ImageEncoder("precomputed", device="cpu")).fit(RNG.random((12, 5)), np.arange(12) % 3)
    model.prototype_ids_ = np.array([f"img{i}.png" for i in range(12)])
    path = model.dump_prototype(tmp_path_factory.mktemp("prototype") / "gallery.npz")
    return path.read_bytes(), (model.prototype_, model.prototype_labels_, model.prototype_ids_)


@FILES
@given(data=st.data())
def test_mutated_prototype_file_is_refused_or_read_as_written(prototype_file, data, tmp_path_factory):
    """Accepted, the gallery is the file's: the original's, or (a header edited) what numpy reads."""
    original, expected = prototype_file
    kind, mutated = data.draw(_mutated(original, ["features.npy", "labels.npy", "ids.npy", "meta.json", "x_.npy"]))
    path = tmp_path_factory.getbasetemp() / "mutated.npz"
    path.write_bytes(mutated)
    try:
        with _bounded_allocations():
            source = read_feature_file(path)
    except FileFormatError as error:
        assert "\n" not in str(error)
        event(f"{kind}: refused")
        return
    got = (source.features, source.labels, source.ids)
    if kind == "declared size or dtype":  # a well-formed file, written so: numpy reads it the same
        with np.load(path, allow_pickle=False) as reference:
            expected = tuple(reference[name] if name in reference else None for name in ("features", "labels", "ids"))
        event(f"{kind}: read as numpy reads it")
    else:
        event(f"{kind}: read, same gallery")
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(got, expected)), kind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = ImageRetriever(ImageEncoder("precomputed", device="cpu")).fit(path)
        except ValueError:  # values fit refuses (NaN, one class, ...) in an edited header's data
            assert kind == "declared size or dtype"
            return
    np.testing.assert_array_equal(model.prototype_, np.asarray(got[0], dtype=np.float32))
