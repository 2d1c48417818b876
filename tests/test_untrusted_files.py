"""Prototype files and feature-cache entries from other people: checked before they are read."""

import io
import os
import zipfile

import model_files
import numpy as np
import pytest
import torch
from helpers import CallCounter, TinyEncoder

from skretrieval import FileFormatError, ImageEncoder, ImageRetriever
from skretrieval.io import load_image

RNG = np.random.default_rng(0)


@pytest.fixture
def prototype():
    model = ImageRetriever(ImageEncoder("precomputed", device="cpu")).fit(RNG.random((6, 4)), list("aabbcc"))
    return model


def _npy_with_header(shape, descr="<f8") -> bytes:
    """A .npy file whose header declares ``shape`` of ``descr`` but holds 16 bytes of data."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape})
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(16)


@pytest.mark.parametrize(
    "content, reason",
    [
        (_npy_with_header((10**6, 10**6)), r"declares shape \(1000000, 1000000\) of float64 \(8000000000000 bytes\) but holds 16"),
        (_npy_with_header((2, 1), "<U1"), "dtype <U1; accepted kinds: 'biuf'"),
        (b"\x93NUMPY\x01\x00" + b"\xff\xff" + b"{" * 100, "header"),
        (b"not numpy at all", "magic string"),
    ],
)
def test_npy_prototype_file_header_is_checked_first(tmp_path, content, reason):
    path = tmp_path / "features.npy"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=reason):
        ImageRetriever("precomputed").fit(path)


def test_object_npy_and_pickled_pt_never_run_code(tmp_path, prototype):
    buffer = io.BytesIO()
    np.save(buffer, np.array([os.system], dtype=object), allow_pickle=True)
    (tmp_path / "x.npy").write_bytes(buffer.getvalue())
    with pytest.raises(FileFormatError, match="dtype object"):
        ImageRetriever("precomputed").fit(tmp_path / "x.npy")

    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"features": torch.eye(2), "labels": Exploit()}, tmp_path / "x.pt")
    with pytest.raises(FileFormatError, match="UnpicklingError"):
        ImageRetriever("precomputed").fit(tmp_path / "x.pt")
    assert not (tmp_path / "pwned").exists()


def test_pt_and_npz_prototype_files_are_checked_as_archives(tmp_path, prototype):
    path = prototype.dump_prototype(tmp_path / "gallery.pt")
    np.testing.assert_array_equal(ImageRetriever("precomputed").fit(path).prototype_, prototype.prototype_)
    contents = model_files.entries(path)
    data_record = next(name for name in contents if "/data/" in name)
    model_files.rewrite(path, contents, compressed={data_record})
    with pytest.raises(FileFormatError, match=f"entry '{data_record}' is compressed"):
        ImageRetriever("precomputed").fit(path)
    model_files.rewrite(path, {**contents, "gallery/evil.py": b"print(1)"})
    with pytest.raises(FileFormatError, match="unexpected entry 'gallery/evil.py'"):
        ImageRetriever("precomputed").fit(path)
    torch.save({"features": torch.eye(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(FileFormatError, match="not a zip archive"):
        ImageRetriever("precomputed").fit(tmp_path / "legacy.pt")
    torch.save({"features": torch.ones(2, 3, 4)}, tmp_path / "cube.pt")
    with pytest.raises(FileFormatError, match=r"features are float32\[2, 3, 4\], not a 2-D"):
        ImageRetriever("precomputed").fit(tmp_path / "cube.pt")

    np.savez_compressed(tmp_path / "small.npz", features=prototype.prototype_)
    with pytest.raises(FileFormatError, match="entry 'features.npy' is compressed"):
        ImageRetriever("precomputed").fit(tmp_path / "small.npz")
    npz = prototype.dump_prototype(tmp_path / "gallery.npz")
    model_files.deflate_bomb(npz, model_files.entries(npz), "features.npy", 1 << 30)
    with pytest.raises(FileFormatError, match="entry 'features.npy' is compressed"):
        ImageRetriever("precomputed").fit(npz)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w") as archive:
        archive.writestr("labels.npy", model_files.entries(prototype.dump_prototype(tmp_path / "g.npz"))["labels.npy"])
    with pytest.raises(FileFormatError, match="holds no features.npy"):
        ImageRetriever("precomputed").fit(tmp_path / "empty.npz")
    with pytest.raises(FileFormatError, match="its labels are <U1\\[6\\] for 2 rows"):
        np.savez(tmp_path / "odd.npz", features=np.eye(2), labels=np.array(list("aabbcc")))
        ImageRetriever("precomputed").fit(tmp_path / "odd.npz")


def _poison(path: str, how: int, other: str) -> None:
    os.unlink(path)
    if how == 0:  # a link to another entry: valid contents, wrong image
        os.symlink(other, path)
    elif how == 1:  # a FIFO: opening it must not block
        os.mkfifo(path)
    elif how == 2:
        np.save(path, np.ones(5, np.float32))  # another width
    elif how == 3:
        np.save(path, np.ones(11, np.float64))  # another dtype
    elif how == 4:
        with open(path, "wb") as file:
            file.write(_npy_with_header((10**12,), "<f4"))  # declares 4 TB
    elif how == 5:
        np.save(path, np.array([os.system] * 11, dtype=object), allow_pickle=True)
    else:
        with open(path, "wb") as file:
            file.write(b"junk")


def test_poisoned_feature_cache_entries_are_misses(tmp_path, colour_images):
    images, _ = colour_images
    params = {"preprocessing": {"size": 8}, "device": "cpu", "memory": tmp_path / "cache"}
    fresh = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu").fit(images).transform(images)
    ImageEncoder(TinyEncoder(), **params).fit(images).transform(images)
    entries = sorted(str(p) for p in (tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == len(images)
    poisoned = entries[:14]
    for n, path in enumerate(poisoned):
        _poison(path, n % 7, entries[-1])
    counter = CallCounter()
    features = ImageEncoder(TinyEncoder(counter), **params).fit(images).transform(images)
    np.testing.assert_array_equal(features, fresh)
    assert counter.images == len(poisoned)  # each poisoned entry encoded again (then replaced)
    counter = CallCounter()
    ImageEncoder(TinyEncoder(counter), **params).fit(images).transform(images)
    assert counter.images == 0
    assert all(os.path.isfile(p) and not os.path.islink(p) for p in poisoned)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_error_names_the_limit_and_how_to_raise_it(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "big.png")
    message = str(info.value)
    assert "big.png" in message and "PIL.Image.MAX_IMAGE_PIXELS (50000 pixels)" in message
    assert "--max-image-pixels" in message and "\n" not in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)
    assert tuple(load_image(tmp_path / "big.png").shape) == (3, 200, 300)
