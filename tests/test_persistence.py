"""Safe save/load (no pickle), joblib round trips and the pickled-version warning."""

import io
import json
import pickle
import subprocess
import sys
import zipfile

import joblib
import model_files
import numpy as np
import pytest
import torch
from helpers import TinyEncoder

import skretrieval
from skretrieval import ImageEncoder, ImageRetriever, InconsistentVersionWarning, load

RNG = np.random.default_rng(0)
GALLERY = RNG.random((12, 10, 10, 3)).astype(np.float32)
QUERIES = RNG.random((4, 10, 10, 3)).astype(np.float32)
LABELS = np.array(list("aabbccddeeff"))


def _fitted(**params):
    encoding = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu")
    return ImageRetriever(encoding, **{"topk": 3, **params}).fit(GALLERY, LABELS)


def test_safe_format_and_joblib_give_identical_neighbours(tmp_path):
    model = _fitted()
    expected = model.kneighbors(QUERIES)
    model.save(tmp_path / "model.skr")
    safe = load(tmp_path / "model.skr", encoder=TinyEncoder())
    joblib.dump(model, tmp_path / "model.joblib")
    pickled = joblib.load(tmp_path / "model.joblib")
    for other in (safe, pickled):
        distances, indices = other.kneighbors(QUERIES)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_array_equal(distances, expected[0])
        np.testing.assert_array_equal(other.predict(QUERIES), model.predict(QUERIES))
    assert safe.get_params()["topk"] == 3
    with zipfile.ZipFile(tmp_path / "model.skr") as archive:
        meta = json.loads(archive.read("meta.json"))
        assert meta["format_version"] == skretrieval._persistence.FORMAT_VERSION
        assert {"arrays.safetensors", "weights.safetensors"} <= set(archive.namelist())


def test_precomputed_round_trip_with_string_ids(tmp_path):
    features = RNG.random((6, 4))
    model = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
        topk=2,
    ).fit(features, [1, 1, 2, 2, 3, 3])
    model.prototype_ids_ = np.array([f"img{i}.png" for i in range(6)], dtype=object)
    loaded = load(model.save(tmp_path / "m.skr"))
    np.testing.assert_array_equal(loaded.kneighbors(features)[1], model.kneighbors(features)[1])
    assert list(loaded.prototype_ids_) == list(model.prototype_ids_)
    assert loaded.n_features_in_ == 4


def test_user_module_must_be_rebound(tmp_path):
    path = _fitted().save(tmp_path / "model.skr")
    with pytest.raises(ValueError, match="encoder=YourModule"):
        load(path)
    with pytest.raises(ValueError, match="do not fit"):
        load(path, encoder=torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten()))


def test_unjsonable_parameter_names_the_fix(tmp_path):
    model = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
        vote=lambda s: np.ones_like(s),
    ).fit(np.eye(3))
    with pytest.raises(ValueError, match="vote=.*joblib"):
        model.save(tmp_path / "m.skr")


def _rewrite(path, **members):
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents.update(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def test_unknown_version_and_type_are_refused(tmp_path):
    path = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
    ).fit(np.eye(3)).save(tmp_path / "m.skr")
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
    _rewrite(path, **{"meta.json": json.dumps({**meta, "format_version": 99})})
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        load(path)
    _rewrite(path, **{"meta.json": json.dumps({**meta, "class": "os.system"})})
    with pytest.raises(ValueError, match="class 'os.system' is unknown"):
        load(path)
    _rewrite(path, **{"meta.json": json.dumps({**meta, "params": {**meta["params"], "future": 1}})})
    with pytest.raises(ValueError, match=r"parameters \['future'\]"):
        load(path)
    (tmp_path / "junk.skr").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a skretrieval model file"):
        load(tmp_path / "junk.skr")


class _Exploit:
    def __reduce__(self):
        return (open, (str(_Exploit.target), "w"))


@pytest.mark.parametrize("member", ["arrays.safetensors", "weights.safetensors", "classes_.npy"])
def test_pickle_payload_is_refused_without_running(tmp_path, member):
    path = _fitted().save(tmp_path / "model.skr")
    _Exploit.target = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit())
    if member.endswith(".npy"):  # an object array: np.save pickles it
        buffer = io.BytesIO()
        np.save(buffer, np.array([_Exploit()], dtype=object), allow_pickle=True)
        payload = buffer.getvalue()
    _rewrite(path, **{member: payload})
    with pytest.raises(ValueError, match="not a skretrieval model file or is damaged"):
        load(path, encoder=TinyEncoder())
    assert not _Exploit.target.exists()


def test_gpu_saved_model_loads_on_cpu(tmp_path):
    model = _fitted()
    expected = model.kneighbors(QUERIES)
    # As if fitted on a GPU machine: the parameters and device say CUDA.
    model.set_params(encoder__device="cuda")
    model.device_ = torch.device("cuda")
    path = model.save(tmp_path / "model.skr")
    if torch.cuda.is_available():
        pytest.skip("this test simulates a machine without a GPU")
    loaded = load(path, encoder=TinyEncoder())
    assert loaded.device_.type == "cpu"
    assert loaded.get_params()["encoder__device"] == "cuda"
    np.testing.assert_array_equal(loaded.kneighbors(QUERIES)[1], expected[1])
    # The pickled path remaps too (torch.load map_location in __setstate__).
    unpickled = pickle.loads(pickle.dumps(model))
    assert unpickled.device_.type == "cpu"


def test_pickle_from_another_version_warns():
    model = ImageRetriever(ImageEncoder("precomputed", device="cpu")).fit(np.eye(3))
    state = model.__getstate__()
    assert state["_skretrieval_version"] == skretrieval.__version__
    state["_skretrieval_version"] = "0.0.1"
    clone = ImageRetriever.__new__(ImageRetriever)
    with pytest.warns(InconsistentVersionWarning, match="0.0.1"):
        clone.__setstate__(state)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        pickle.loads(pickle.dumps(model))


def test_named_encoder_is_saved_by_name_and_weights(tmp_path):
    # Randomly initialised: only the saved weights can reproduce its neighbours.
    model = ImageRetriever(
        ImageEncoder("mobilenet_v3_small", weights=None, preprocessing={"size": 32}, device="cpu"),
        topk=2,
    )
    model.fit(GALLERY, LABELS)
    path = model.save(tmp_path / "named.skr")
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
    assert meta["encoder_kind"] == "name" and meta["params"]["encoder"] == "mobilenet_v3_small"
    loaded = load(path)
    np.testing.assert_allclose(loaded.transform(QUERIES), model.transform(QUERIES), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.kneighbors(QUERIES)[1], model.kneighbors(QUERIES)[1])
    with pytest.raises(ValueError, match="do not pass encoder"):
        load(path, encoder=TinyEncoder())


# ------------------------------------------------------------------------------------------
# fine-tuned models


def _tiny_fine_tuned(head, fine_tune, **params):
    params = {"head": head, "fine_tune": fine_tune, "max_epochs": 2, "random_state": 0, **params}
    return _fitted(**params)


def _assert_same_answers(loaded, model):
    for method in ("kneighbors", "search"):
        for got, expected in zip(getattr(loaded, method)(QUERIES), getattr(model, method)(QUERIES)):
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(loaded.transform(QUERIES), model.transform(QUERIES))
    np.testing.assert_array_equal(loaded.predict(QUERIES), model.predict(QUERIES))
    np.testing.assert_array_equal(loaded.predict_proba(QUERIES), model.predict_proba(QUERIES))


@pytest.mark.parametrize("fine_tune", ["head", "all"])
@pytest.mark.parametrize("head", ["linear", "arcface", "triplet", "supcon"])
def test_fine_tuned_model_round_trips_with_its_answers(tmp_path, head, fine_tune):
    model = _tiny_fine_tuned(head, fine_tune)
    path = model.save(tmp_path / "tuned.skr")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        meta = json.loads(archive.read("meta.json"))
    assert {"projection_.safetensors", "head_.safetensors", "weights.safetensors"} <= names
    assert not any(name.endswith((".pkl", ".pt")) for name in names)  # weights as safetensors, never pickle
    loaded = load(path, encoder=TinyEncoder())
    _assert_same_answers(loaded, model)
    modules = ("encoder", "encoder__encoder")  # the module objects: the one given to load
    assert {k: v for k, v in loaded.get_params().items() if k not in modules} == {
        k: v for k, v in model.get_params().items() if k not in modules
    }
    assert meta["head_kind"] == "name" and loaded.n_iter_ == model.n_iter_ == 2
    assert loaded.loss_curve_ == model.loss_curve_ and loaded.history_.column("loss") == model.loss_curve_
    for name in ("projection_", "head_", "encoder_"):
        saved, back = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == back.keys()
        assert all(torch.equal(saved[key].cpu(), back[key].cpu()) for key in saved), name
    # The weights came from the file: a fresh encoder (fine_tune="all" trained it) differs.
    trained = not torch.equal(loaded.encoder_.conv.weight.cpu(), TinyEncoder().conv.weight)
    assert trained == (fine_tune == "all")


def test_named_encoder_fine_tuned_all_round_trips(tmp_path):
    model = ImageRetriever(
        ImageEncoder("mobilenet_v3_small", weights=None, preprocessing={"size": 32}, device="cpu", batch_size=6), topk=2,
        head="arcface", fine_tune="all", max_epochs=1, random_state=0,
    ).fit(GALLERY, LABELS)
    loaded = load(model.save(tmp_path / "named.skr"))
    _assert_same_answers(loaded, model)


class _CentreLoss(torch.nn.Module):
    """A custom head: pull each embedding to a learned centre of its class."""

    def __init__(self, width=11, n_classes=6):
        super().__init__()
        self.centres = torch.nn.Parameter(torch.zeros(n_classes, width))

    def forward(self, embeddings, labels):
        return ((embeddings - self.centres[labels]) ** 2).sum(dim=1).mean()


def test_custom_head_module_is_passed_back_at_load(tmp_path):
    model = _tiny_fine_tuned(_CentreLoss(), "head")
    path = model.save(tmp_path / "custom.skr")
    with pytest.raises(ValueError, match=r"own head \(_CentreLoss\).*head=YourModule"):
        load(path, encoder=TinyEncoder())
    loaded = load(path, encoder=TinyEncoder(), head=_CentreLoss())
    _assert_same_answers(loaded, model)
    assert torch.equal(loaded.head_.centres, model.head_.centres) and loaded.head_.centres.abs().sum() > 0
    with pytest.raises(skretrieval.FileFormatError, match="do not fit _CentreLoss"):
        load(path, encoder=TinyEncoder(), head=_CentreLoss(n_classes=5))
    with pytest.raises(ValueError, match="do not pass head="):
        load(_fitted().save(tmp_path / "plain.skr"), encoder=TinyEncoder(), head=_CentreLoss())


def test_new_fitted_attributes_round_trip_without_code(tmp_path):
    """As an open-set threshold_ would: any JSON value or array fitted attribute is saved."""
    model = _fitted()
    model.threshold_ = np.float32(0.25)
    model.per_class_thresholds_ = np.array([0.1, 0.2], dtype=np.float64)
    model.notes_ = {"calibrated_on": 12, "names": ["a", "b"]}
    loaded = load(model.save(tmp_path / "m.skr"), encoder=TinyEncoder())
    assert loaded.threshold_ == 0.25 and isinstance(loaded.threshold_, float)
    np.testing.assert_array_equal(loaded.per_class_thresholds_, model.per_class_thresholds_)
    assert loaded.per_class_thresholds_.dtype == np.float64
    assert loaded.notes_ == model.notes_
    model.opaque_ = object()
    with pytest.raises(ValueError, match="fitted attribute opaque_=.*joblib"):
        model.save(tmp_path / "no.skr")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.skr"):
        load(tmp_path / "missing.skr")
    with pytest.raises(skretrieval.FileFormatError, match="not a regular file"):
        load(tmp_path)


def test_format_version_1_files_still_load(tmp_path):
    model = ImageRetriever(ImageEncoder("precomputed", device="cpu"), topk=1).fit(np.eye(3), ["a", "b", "c"])
    path = model.save(tmp_path / "m.skr")
    contents = model_files.entries(path)
    meta = json.loads(contents["meta.json"])
    fitted = meta.pop("fitted")
    meta["params"].update(meta.pop("encoder_options"))  # version 1: the encoding options were the retriever's
    meta.update(format_version=1, skipped=fitted["skipped_"], n_features_in=fitted["n_features_in_"])
    for key in ("head_kind", "head_class", "head_n_classes"):
        meta.pop(key)
    model_files.rewrite(path, {**contents, "meta.json": json.dumps(meta).encode()})
    loaded = load(path)
    assert loaded.n_features_in_ == 3 and loaded.skipped_ == []
    np.testing.assert_array_equal(loaded.predict(np.eye(3)), ["a", "b", "c"])


# ------------------------------------------------------------------------------------------
# what is checked before a model file is read


def _valid_file(tmp_path):
    path = _fitted().save(tmp_path / "model.skr")
    return path, model_files.entries(path)


def _npy_header_shape(data: bytes, shape) -> bytes:
    """The .npy bytes with another shape written in the header (same header length)."""
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + header_len].decode("latin1")
    start, end = header.index("'shape': ") + 9, header.index(")", header.index("'shape': ")) + 1
    new = header[:start] + repr(shape) + header[end:]
    new = new.rstrip("\n").rstrip() + " " * (header_len - len(new.rstrip("\n").rstrip()) - 1) + "\n"
    return data[:10] + new.encode("latin1") + data[10 + header_len :]


def _safetensors_header_edit(data: bytes, edit) -> bytes:
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda c: {**c, "extra.txt": b"hello"}, "unexpected entry 'extra.txt'"),
        (lambda c: [*c.items(), ("classes_.npy", c["classes_.npy"])], "entry 'classes_.npy' appears 2 times"),
        (lambda c: {("labels.npy" if k == "classes_.npy" else k): v for k, v in c.items()}, "unexpected entry 'labels.npy'"),
        (lambda c: {k: v for k, v in c.items() if k != "classes_.npy"}, r"entries \['classes_.npy'\] are missing"),
        (lambda c: {k: v for k, v in c.items() if k != "weights.safetensors"}, "weights.safetensors .* is missing"),
        (lambda c: {**c, "encoder_.npy": c["classes_.npy"]}, "would replace what load rebuilds"),
        (lambda c: {**c, "meta.json": b" " * (16 << 20) + b"{}"}, "meta.json holds 16777218 bytes"),
        (lambda c: {**c, "meta.json": b"[" * 100000}, "RecursionError"),
        (lambda c: {**c, "classes_.npy": _npy_header_shape(c["classes_.npy"], (10**12,))}, r"declares shape \(1000000000000,\)"),
        (
            lambda c: {**c, "arrays.safetensors": _safetensors_header_edit(
                c["arrays.safetensors"], lambda h: h["prototype_"].update(shape=[10**9, 11]))},
            "declares tensor 'prototype_'",
        ),
        (
            lambda c: {**c, "arrays.safetensors": _safetensors_header_edit(
                c["arrays.safetensors"], lambda h: h["label_codes"].update(dtype="F64"))},
            "label codes, labels and classes_ disagree",
        ),
        (
            lambda c: {**c, "weights.safetensors": _safetensors_header_edit(
                c["weights.safetensors"], lambda h: h["conv.weight"].update(dtype="I32"))},
            "weights of encoder_ do not fit TinyEncoder",
        ),
        (lambda c: {**c, "prototype_labels_.npy": np.lib.format.__name__.encode()}, "prototype_labels_.npy"),
    ],
)
def test_damaged_archives_are_refused_with_the_reason(tmp_path, mutate, reason):
    path, contents = _valid_file(tmp_path)
    model_files.rewrite(path, mutate(contents))
    for mmap in (False, True):  # a memory-mapped gallery's file is checked alike
        with pytest.raises(skretrieval.FileFormatError, match=reason) as info:
            load(path, encoder=TinyEncoder(), mmap=mmap)
        assert "\n" not in str(info.value) and "is not a skretrieval model file or is damaged: " in str(info.value)


def test_compressed_encrypted_truncated_and_zip64_files(tmp_path):
    path, contents = _valid_file(tmp_path)
    model_files.rewrite(path, contents, compressed={"classes_.npy"})
    with pytest.raises(skretrieval.FileFormatError, match="entry 'classes_.npy' is compressed"):
        load(path, encoder=TinyEncoder())
    model_files.rewrite(path, contents, zip64=set(contents))  # zip64 records: still the same model
    for mmap in (False, True):  # mapped past the zip64 extra field of the local header
        loaded = load(path, encoder=TinyEncoder(), mmap=mmap)
        np.testing.assert_array_equal(loaded.kneighbors(QUERIES)[1], _fitted().kneighbors(QUERIES)[1])
    data = bytearray((tmp_path / "model.skr").read_bytes())
    directory = data.rindex(b"PK\x01\x02")  # the last central directory record: set "encrypted"
    data[directory + 8] |= 1
    (tmp_path / "encrypted.skr").write_bytes(bytes(data))
    with pytest.raises(skretrieval.FileFormatError, match="zip flags 0x1"):
        load(tmp_path / "encrypted.skr", encoder=TinyEncoder())
    model_files.rewrite(path, contents)
    whole = path.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 30):
        (tmp_path / "cut.skr").write_bytes(whole[:cut] + whole[-22:])  # the end record kept
        for mmap in (False, True):
            with pytest.raises(skretrieval.FileFormatError, match="past the end of the file|overlaps|Bad"):
                load(tmp_path / "cut.skr", encoder=TinyEncoder(), mmap=mmap)


_PEAK = """
import resource, sys
import skretrieval
# Cap the heap, so that a reader inflating the bomb fails here instead of starving the machine.
data = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData"))
resource.setrlimit(resource.RLIMIT_DATA, ((data << 10) + (1 << 30),) * 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    skretrieval.load(sys.argv[1])
    print("loaded")
except skretrieval.FileFormatError as error:
    print(error)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
PEAK_BOUND_MIB = 32  # the refusal's memory, beyond the interpreter's after import skretrieval


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss in KiB")
def test_deflate_bomb_is_refused_in_bounded_memory(tmp_path):
    """A 3 MB file whose prototype inflates to 3 GiB (6.7 GiB peak before the checks)."""
    path = ImageRetriever(ImageEncoder("precomputed", device="cpu")).fit(np.eye(3)).save(tmp_path / "m.skr")
    bomb = tmp_path / "bomb.skr"
    model_files.deflate_bomb(bomb, model_files.entries(path), "arrays.safetensors", 3 << 30)
    assert bomb.stat().st_size < 4 << 20
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, str(bomb)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    message, peak_kib = result.stdout.splitlines()
    assert "entry 'arrays.safetensors' is compressed" in message
    assert int(peak_kib) < PEAK_BOUND_MIB << 10


# -- atomic writes: a save never leaves a half-written file in place of the previous one --


def test_failed_save_leaves_the_previous_file_as_it_was(tmp_path):
    path = _fitted().save(tmp_path / "model.skr")
    before = path.read_bytes()
    broken = _fitted()
    broken.prototype_ids_ = np.array(["a.png", *range(11)], dtype=object)  # refused mid-write
    with pytest.raises(ValueError, match="mixed types"):
        broken.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.skr"]  # the new file is removed


KILLED_SAVE = """
import sys, time
sys.path.insert(0, {tests!r})
import numpy as np
from helpers import TinyEncoder
from skretrieval import ImageEncoder, ImageRetriever

class SlowToSave(TinyEncoder):  # the save asks for its weights after writing the gallery
    def state_dict(self, *args, **kwargs):
        print("writing", flush=True)
        time.sleep(60)

model = ImageRetriever(ImageEncoder(SlowToSave(), device="cpu")).fit(np.ones((5, 11)))
model.save({path!r})
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
def test_killed_save_leaves_the_previous_file_loadable(tmp_path):
    import os
    import signal
    from pathlib import Path

    model = _fitted()
    path = model.save(tmp_path / "model.skr")
    before = path.read_bytes()
    script = tmp_path / "save.py"
    script.write_text(KILLED_SAVE.format(tests=str(Path(__file__).parent), path=str(path)))
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "writing"  # meta, gallery and arrays are written
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".model.skr.")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # beside the old file, not over it
    os.kill(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(load(path, encoder=TinyEncoder()).kneighbors(QUERIES)[1], model.kneighbors(QUERIES)[1])


def test_save_keeps_permissions_and_writes_through_a_symbolic_link(tmp_path):
    import os

    path = _fitted().save(tmp_path / "model.skr")
    path.chmod(0o640)
    link = tmp_path / "current.skr"
    link.symlink_to(path.name)
    model = _fitted(topk=2)
    assert model.save(link) == link
    assert link.is_symlink() and os.readlink(link) == path.name  # the link stays a link
    assert path.stat().st_mode & 0o777 == 0o640
    assert load(path, encoder=TinyEncoder()).topk == 2
    fresh = _fitted().save(tmp_path / "new.skr")  # a new file: the mode the umask gives
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


def test_file_stats_round_trip_and_are_checked(tmp_path):
    from PIL import Image

    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((10, 10, 3), 60 * i, np.uint8)).save(files[-1])
    encoding = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu")
    model = ImageRetriever(encoding, topk=1).fit(files)
    path = model.save(tmp_path / "model.skr")
    loaded = load(path, encoder=TinyEncoder())
    np.testing.assert_array_equal(loaded.prototype_file_stats_, model.prototype_file_stats_)
    assert loaded.prototype_file_stats_.dtype == np.int64
    contents = model_files.entries(path)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 2), np.int64))
    model_files.rewrite(path, {**contents, "prototype_file_stats_.npy": buffer.getvalue()})
    with pytest.raises(skretrieval.FileFormatError, match=r"prototype_file_stats_ is int64\[3, 2\], not int64 \[4, 2\]"):
        load(path, encoder=TinyEncoder())
    assert not hasattr(_fitted(), "prototype_file_stats_")  # a gallery of no files has none
