"""Files from other people, checked before anything in them is trusted.

Model files (``save``), prototype files (``dump_prototype``) and feature-cache entries travel
between machines and users. Every reader of such a file goes through this module, which
checks, before an entry's data is read:

* the zip directory: at most a few dozen entries; only the names the reader expects, each
  once; stored uncompressed (what ``save``, :func:`numpy.savez` and :func:`torch.save`
  write), not encrypted; each entry inside the file and none overlapping another, so their
  total is at most the file's size;
* each entry's size against its own header: the shape and dtype of a ``.npy`` header, the
  tensors of a safetensors header, a fixed limit for JSON.

Data is then read straight into arrays of the checked sizes, with the zip CRC verified. So
opening a file allocates about its size at most, whatever it claims, and a file failing any
check raises :class:`FileFormatError` with the reason, before the allocation.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MAX_DIRECTORY_BYTES = 1 << 16  # the zip central directory: a few dozen entries
MAX_ENTRIES = 256
MAX_HEADER_BYTES = 16 << 20  # a safetensors header (the tensor names and shapes)
MAX_JSON_BYTES = 16 << 20  # meta.json
_NPY_HEADER_BYTES = 10000  # numpy's own limit when it reads the array
_ALLOWED_FLAGS = 0x808  # UTF-8 names, sizes after the data (torch.save); never encryption

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")

# safetensors dtype -> the numpy dtype its bytes are read as (bf16 as raw 16-bit words).
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class FileFormatError(ValueError):
    """A file given to skretrieval is not of the expected kind, or is damaged.

    Raised before the file's contents are read into memory: by :func:`skretrieval.load`
    for a model file, by ``fit`` for a ``dump_prototype`` file. The message is one line
    naming the file and the reason (an unexpected or compressed entry, sizes that do not
    match what the file declares, a truncated file, ...). A subclass of ``ValueError``.

    Parameters
    ----------
    path : str or Path
        The file.
    kind : str
        What it should have been, e.g. ``"skretrieval model file"``.
    reason : str
        What is wrong with it.

    Attributes
    ----------
    path : str
    kind : str
    reason : str

    Examples
    --------
    >>> import os, tempfile
    >>> import skretrieval
    >>> path = os.path.join(tempfile.mkdtemp(), "model.skr")
    >>> with open(path, "w") as file:
    ...     _ = file.write("not a model")
    >>> try:
    ...     skretrieval.load(path)
    ... except skretrieval.FileFormatError as error:
    ...     print(error.reason)
    not a zip archive (no end-of-directory record)
    """

    def __init__(self, path, kind: str, reason: str):
        self.path, self.kind, self.reason = str(path), kind, " ".join(str(reason).split())
        super().__init__(f"{self.path!r} is not a {kind} or is damaged: {self.reason}")


@contextmanager
def refusing(path, kind: str, what: str | None = None):
    """Turn whatever a damaged file (or its entry ``what``) makes a reader raise into :class:`FileFormatError`."""
    try:
        yield
    except (FileFormatError, FileNotFoundError):
        raise
    except Exception as exc:  # zipfile, numpy, json and torch each raise their own kinds
        where = "" if what is None else f"{what}: "
        raise FileFormatError(path, kind, f"{where}{type(exc).__name__}: {exc}") from exc


def regular_file_size(path, kind: str) -> int:
    """The size of ``path``, which must be an existing regular file (not a FIFO or device)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind} {str(path)!r} does not exist.") from None
    if not stat.S_ISREG(status.st_mode):
        raise FileFormatError(path, kind, "not a regular file")
    return status.st_size


def open_archive(path, kind: str, allowed) -> zipfile.ZipFile:
    """The zip archive at ``path``, its directory checked; ``allowed(name)`` says which names may appear."""
    path = Path(path)
    size = regular_file_size(path, kind)
    with refusing(path, kind):
        with open(path, "rb") as file:
            _check_end_record(file, size, path, kind)
        archive = zipfile.ZipFile(path)
    try:
        _check_entries(archive, size, allowed, path, kind)
    except BaseException:
        archive.close()
        raise
    return archive


def _check_end_record(file, size: int, path, kind: str) -> None:
    """Bound the directory before zipfile reads it: its size and entry count, zip64 included."""
    tail_size = min(size, _END.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    file.seek(size - tail_size)
    tail = file.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")  # the last record, as zipfile finds it
    if at < 0 or at + _END.size > len(tail):
        raise FileFormatError(path, kind, "not a zip archive (no end-of-directory record)")
    *_, entries, directory, _, _ = _END.unpack_from(tail, at)
    locator = at - _END64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        offset = _END64_LOCATOR.unpack_from(tail, locator)[2]
        if offset + _END64.size > size:
            raise FileFormatError(path, kind, "its zip64 end record lies outside the file")
        file.seek(offset)
        record = file.read(_END64.size)
        if record[:4] != b"PK\x06\x06":
            raise FileFormatError(path, kind, "its zip64 end record is damaged")
        entries, directory = _END64.unpack(record)[7:9]
    if entries > MAX_ENTRIES or directory > MAX_DIRECTORY_BYTES:
        raise FileFormatError(
            path, kind, f"its directory declares {entries} entries in {directory} bytes (at most "
            f"{MAX_ENTRIES} entries in {MAX_DIRECTORY_BYTES} bytes are read)"
        )


def _check_entries(archive: zipfile.ZipFile, size: int, allowed, path, kind: str) -> None:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    for info in infos:
        name = info.filename
        if not allowed(name):
            raise FileFormatError(path, kind, f"unexpected entry {name!r}")
        if names.count(name) > 1:
            raise FileFormatError(path, kind, f"entry {name!r} appears {names.count(name)} times")
        if info.compress_type != zipfile.ZIP_STORED:
            raise FileFormatError(
                path, kind, f"entry {name!r} is compressed (zip method {info.compress_type}); only "
                "uncompressed entries are read, as skretrieval, numpy.savez and torch.save write them"
            )
        if info.flag_bits & ~_ALLOWED_FLAGS:
            raise FileFormatError(path, kind, f"entry {name!r} has zip flags {info.flag_bits:#x} (encrypted?)")
        if info.compress_size != info.file_size:
            raise FileFormatError(
                path, kind, f"entry {name!r} declares {info.file_size} bytes but stores {info.compress_size}"
            )
    end = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < end:
            raise FileFormatError(path, kind, f"entry {info.filename!r} overlaps the entry before it")
        end = info.header_offset + 30 + len(info.filename) + info.compress_size  # at least its local header
        if end > size:
            raise FileFormatError(
                path, kind, f"entry {info.filename!r} ends past the end of the file ({size} bytes): truncated?"
            )


def read_json(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path, kind: str):
    """A JSON entry of at most :data:`MAX_JSON_BYTES`."""
    if info.file_size > MAX_JSON_BYTES:
        raise FileFormatError(path, kind, f"{info.filename} holds {info.file_size} bytes (at most {MAX_JSON_BYTES})")
    with refusing(path, kind, info.filename):  # RecursionError on deep nesting, too
        return json.loads(archive.read(info))


def npy_header(file, size: int, path, kind: str, what: str, kinds: str = "biufUS"):
    """``(shape, dtype)`` of the ``.npy`` data in ``file`` (at its start), checked to hold exactly ``size`` bytes.

    Only plain dtypes of the given numpy ``kinds`` pass (never objects, which need pickle).
    """
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(file, max_header_size=_NPY_HEADER_BYTES)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(file, max_header_size=_NPY_HEADER_BYTES)
    else:
        raise FileFormatError(path, kind, f"{what} is .npy version {version}; 1.0 and 2.0 are read")
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in kinds or dtype.subdtype is not None:
        raise FileFormatError(path, kind, f"{what} holds dtype {dtype}; accepted kinds: {kinds!r}, no objects")
    declared = math.prod(shape) * dtype.itemsize
    if file.tell() + declared != size:
        raise FileFormatError(
            path, kind, f"{what} declares shape {shape} of {dtype} ({declared} bytes) but holds "
            f"{size - file.tell()} bytes of data"
        )
    return shape, dtype


def read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path, kind: str, kinds: str = "biufUS") -> np.ndarray:
    """A ``.npy`` entry, its header checked, read in one pass into an array of its size."""
    with refusing(path, kind, info.filename):
        with archive.open(info) as file:
            npy_header(file, info.file_size, path, kind, info.filename, kinds)
        with archive.open(info) as file:
            return np.lib.format.read_array(file, allow_pickle=False)


def safetensors_header(file, size: int, path, kind: str, what: str) -> list[tuple]:
    """``[(name, dtype, shape, n_bytes)]`` in data order, checked to cover exactly ``size`` bytes."""
    length = int.from_bytes(file.read(8), "little")
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise FileFormatError(path, kind, f"{what} declares a header of {length} bytes in an entry of {size}")
    header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise FileFormatError(path, kind, f"{what} has a header that is not a JSON object")
    header.pop("__metadata__", None)
    tensors = []
    for name, entry in header.items():
        ok = isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPES
        shape, offsets = entry.get("shape") if ok else None, entry.get("data_offsets") if ok else None
        ok = ok and isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok:
            raise FileFormatError(path, kind, f"{what} describes tensor {name!r} as {entry!r}")
        n_bytes = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).itemsize
        if offsets[1] - offsets[0] != n_bytes:
            raise FileFormatError(
                path, kind, f"{what} declares tensor {name!r} {entry['dtype']}{shape} ({n_bytes} bytes) in "
                f"{offsets[1] - offsets[0]} bytes"
            )
        tensors.append((offsets[0], name, entry["dtype"], tuple(shape), n_bytes))
    tensors.sort()
    end = 0
    for begin, name, _, _, n_bytes in tensors:
        if begin != end:
            raise FileFormatError(path, kind, f"{what}: tensor {name!r} does not start where the one before it ends")
        end = begin + n_bytes
    if end != size - 8 - length:
        raise FileFormatError(path, kind, f"{what} declares {end} bytes of tensors but holds {size - 8 - length}")
    return [(name, dtype, shape, n_bytes) for _, name, dtype, shape, n_bytes in tensors]


def read_safetensors(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path, kind: str) -> dict:
    """``{name: (array, dtype name)}`` of a safetensors entry, each tensor read into its own array.

    The header is checked first (:func:`safetensors_header`); bf16 tensors come back as
    ``uint16`` arrays of their bits (``dtype name`` says so).
    """
    with refusing(path, kind, info.filename), archive.open(info) as file:
        tensors = safetensors_header(file, info.file_size, path, kind, info.filename)
        arrays = {}
        for name, dtype, shape, _ in tensors:
            array = np.empty(shape, np.dtype(SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
            _read_into(file, memoryview(array.reshape(-1)).cast("B"), path, kind, f"{info.filename}: {name!r}")
            arrays[name] = (array, dtype)
        file.read(1)  # at the end: zipfile verifies the CRC
    return arrays


def map_safetensors(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path, kind: str) -> dict:
    """``{name: (read-only memory-mapped array, dtype name)}`` of a safetensors entry.

    Its header is checked as :func:`read_safetensors` checks it, and the entry's place in
    the file is read from its local zip header; no tensor data is read (nor its CRC checked).
    """
    with refusing(path, kind, info.filename):
        with archive.open(info) as file:
            tensors = safetensors_header(file, info.file_size, path, kind, info.filename)
            header_bytes = file.tell()  # the length field and the header: the data follows
        start = entry_data_offset(path, info, kind) + header_bytes
        arrays, offset = {}, start
        for name, dtype, shape, n_bytes in tensors:  # in data order, contiguous (checked)
            numpy_dtype = np.dtype(SAFETENSORS_DTYPES[dtype]).newbyteorder("<")
            if n_bytes:
                array = np.memmap(path, dtype=numpy_dtype, mode="r", offset=offset, shape=shape)
            else:
                array = np.empty(shape, numpy_dtype)
            arrays[name] = (array, dtype)
            offset += n_bytes
    return arrays


def entry_data_offset(path, info: zipfile.ZipInfo, kind: str) -> int:
    """Where an uncompressed entry's data starts in the file (after its local header),
    checked to lie, with the whole entry, inside the file."""
    local = struct.Struct("<4s22x2H")  # signature, then the name and extra-field lengths
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        signature, name_length, extra_length = local.unpack(file.read(local.size))
        file.seek(0, os.SEEK_END)
        size = file.tell()
    start = info.header_offset + local.size + name_length + extra_length
    if signature != b"PK\x03\x04" or start + info.file_size > size:
        raise FileFormatError(path, kind, f"entry {info.filename!r} has a damaged local header or lies past the end")
    return start


def write_safetensors(file, arrays: dict) -> None:
    """Write ``arrays`` (name -> C-ordered numpy array) to ``file`` as safetensors, in blocks.

    2-D arrays are written a block of rows at a time (memory-mapped ones read from their
    file, see :func:`skretrieval.search._storage.read_blocks`), so saving a gallery larger
    than memory needs no copy of it.
    """
    from ..search._storage import read_blocks

    names = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}
    header, offset = {}, 0
    for name, array in arrays.items():
        n_bytes = array.size * array.dtype.itemsize
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    file.write(len(text).to_bytes(8, "little") + text)
    for array in arrays.values():
        little = array.dtype.newbyteorder("<")
        blocks = read_blocks(array) if array.ndim == 2 else [(0, array)]
        for _, block in blocks:
            file.write(memoryview(np.ascontiguousarray(block, dtype=little)).cast("B"))


def _read_into(file, view: memoryview, path, kind: str, what: str) -> None:
    """Fill ``view`` from ``file`` in chunks (``readinto`` of a zip entry would copy it whole)."""
    position = 0
    while position < len(view):
        chunk = file.read(min(len(view) - position, 1 << 20))
        if not chunk:
            raise FileFormatError(path, kind, f"{what} ends early")
        view[position : position + len(chunk)] = chunk
        position += len(chunk)


def check_npy_file(path, kind: str, kinds: str = "biuf") -> None:
    """Check a ``.npy`` file's header against its size before :func:`numpy.load` reads it."""
    size = regular_file_size(path, kind)
    with refusing(path, kind), open(path, "rb") as file:
        npy_header(file, size, path, kind, "the array", kinds)


def entry_pattern(*patterns: str):
    """``allowed(name)`` for :func:`open_archive`: the name matches one of the regular expressions."""
    compiled = [re.compile(p) for p in patterns]
    return lambda name: any(c.fullmatch(name) for c in compiled)
