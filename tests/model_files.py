"""Damaged and hostile model files, built byte by byte (importable as ``model_files``)."""

import struct
import warnings
import zipfile
import zlib


def entries(path) -> dict:
    """``{name: bytes}`` of a zip archive, in order."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rewrite(path, contents: dict, *, compressed=(), zip64=()) -> None:
    """Write ``{name: bytes}`` as a zip archive (with zipfile: CRCs and sizes consistent).

    Entries named in ``compressed`` are deflated; those in ``zip64`` get zip64 records.
    Pairs ``(name, data)`` in a list allow duplicated names.
    """
    items = contents.items() if isinstance(contents, dict) else contents
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": written on purpose
        for name, data in items:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
            with archive.open(info, "w", force_zip64=name in zip64) as file:
                file.write(data)


def deflate_bomb(path, contents: dict, name: str, n_bytes: int) -> None:
    """The archive of ``contents`` with entry ``name`` replaced by ``n_bytes`` zeros, deflated.

    The deflate stream is built from one 16 MiB block repeated (each block ends with a full
    flush, so the blocks are independent): 3 GiB of zeros in 3 MB, written in a second or two.
    Sizes and CRC are the true ones: zipfile would inflate it all, then accept it.
    """
    block = 1 << 24
    assert n_bytes % block == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = segment * (n_bytes // block) + compressor.flush(zlib.Z_FINISH)
    crc, zeros = 0, bytes(block)
    for _ in range(n_bytes // block):
        crc = zlib.crc32(zeros, crc)
    members = [
        (entry, zlib.crc32(data), len(data), data, zipfile.ZIP_STORED)
        for entry, data in contents.items() if entry != name
    ]
    members.append((name, crc, n_bytes, stream, zipfile.ZIP_DEFLATED))
    _write_raw(path, members)


def _write_raw(path, members) -> None:
    """A zip archive of ``(name, crc, uncompressed size, stored bytes, method)``, by hand."""
    local, directory = bytearray(), bytearray()
    for name, crc, size, data, method in members:
        encoded = name.encode()
        offset = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0)
        local += encoded + data
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded),
            0, 0, 0, 0, 0, offset,
        ) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(local), 0)
    with open(path, "wb") as file:
        file.write(bytes(local) + bytes(directory) + end)
