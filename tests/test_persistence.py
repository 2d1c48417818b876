"""Safe save/load (no pickle), joblib round trips and the pickled-version warning."""

import io
import json
import pickle
import zipfile

import joblib
import numpy as np
import pytest
import torch
from helpers import TinyEncoder

import skretrieval
from skretrieval import ImageRetriever, InconsistentVersionWarning, load

RNG = np.random.default_rng(0)
GALLERY = RNG.random((12, 10, 10, 3)).astype(np.float32)
QUERIES = RNG.random((4, 10, 10, 3)).astype(np.float32)
LABELS = np.array(list("aabbccddeeff"))


def _fitted(**params):
    params = {"preprocessing": {"size": 8}, "device": "cpu", "topk": 3, **params}
    return ImageRetriever(TinyEncoder(), **params).fit(GALLERY, LABELS)


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
    model = ImageRetriever("precomputed", device="cpu", topk=2).fit(features, [1, 1, 2, 2, 3, 3])
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
    model = ImageRetriever("precomputed", vote=lambda s: np.ones_like(s), device="cpu").fit(np.eye(3))
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
    path = ImageRetriever("precomputed", device="cpu").fit(np.eye(3)).save(tmp_path / "m.skr")
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
    model.set_params(device="cuda")
    model.device_ = torch.device("cuda")
    path = model.save(tmp_path / "model.skr")
    if torch.cuda.is_available():
        pytest.skip("this test simulates a machine without a GPU")
    loaded = load(path, encoder=TinyEncoder())
    assert loaded.device_.type == "cpu"
    assert loaded.get_params()["device"] == "cuda"
    np.testing.assert_array_equal(loaded.kneighbors(QUERIES)[1], expected[1])
    # The pickled path remaps too (torch.load map_location in __setstate__).
    unpickled = pickle.loads(pickle.dumps(model))
    assert unpickled.device_.type == "cpu"


def test_pickle_from_another_version_warns():
    model = ImageRetriever("precomputed", device="cpu").fit(np.eye(3))
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
    model = ImageRetriever("mobilenet_v3_small", weights=None, preprocessing={"size": 32}, device="cpu", topk=2)
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
