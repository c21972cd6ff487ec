"""Record files and data streams for :mod:`storekeeper.backends.filesystem`.

One record file per key holds everything that must change together: the key, its
metadata, version and timestamps, and either the data itself (small values, "inline")
or the name of an immutable data file (large values). Replacing the record with one
atomic rename therefore replaces data and metadata at once.

Layout of a record file (integers big-endian; a binary header because reads are hot)::

    b"SKR2" | CRC-32 u32 | created f64 | modified f64 | size u64
    | key length u32 | version length u16 | data file name length u16 | metadata length u32
    key (UTF-8) | version (ASCII) | data file name (ASCII, empty: inline) | metadata JSON
    inline data (only when the data file name is empty)

The CRC covers everything after itself, so a damaged record is reported instead of
being served.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from storekeeper.backends._fs_names import is_record_name
from storekeeper.errors import CorruptFileError
from storekeeper.files import SharedFile, open_stream
from storekeeper.store.value import BytesValue, StreamValue, Value

# SharedFile and open_stream live in storekeeper.files; they are re-exported here until
# the SQLite value files import them from there.
__all__ = [
    "DAMAGED_VERSION",
    "Record",
    "SharedFile",
    "clear_damaged",
    "damaged_record",
    "is_damaged",
    "load_record",
    "obsolete_data_file",
    "open_stream",
    "pack_record",
    "record_names",
    "record_value",
]

_MAGIC = b"SKR2"
_PREFIX = struct.Struct(">4sIddQIHHI")
_CRC_START = 8
# One read of this size returns a whole small record, so most reads cost one syscall.
_FIRST_READ = 16384
# Linux returns at most this many bytes from one read; larger reads loop.
_MAX_READ = 0x7FFFF000
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class Record(NamedTuple):
    """What one record file says about a key.

    ``data_file`` is the name of the key's data file, or ``None`` when the data is
    inline; ``inline`` is the inline data when it was loaded (``None`` otherwise).
    """

    key: str
    version: str
    created: float
    modified: float
    size: int
    data_file: str | None
    metadata_json: str
    inline: bytes | None = None


def pack_record(record: Record) -> bytes:
    """Serialise *record* (with its inline data, if the data is inline) to bytes."""
    key = record.key.encode("utf-8", "surrogatepass")
    version = record.version.encode("ascii")
    data_file = (record.data_file or "").encode("ascii")
    metadata = record.metadata_json.encode("utf-8")
    inline = (record.inline or b"") if record.data_file is None else b""
    prefix = _PREFIX.pack(
        _MAGIC,
        0,
        record.created,
        record.modified,
        record.size,
        len(key),
        len(version),
        len(data_file),
        len(metadata),
    )
    body = b"".join((prefix, key, version, data_file, metadata, inline))
    crc = zlib.crc32(memoryview(body)[_CRC_START:])
    return body[:4] + crc.to_bytes(4, "big") + body[_CRC_START:]


def load_record(path: str, *, with_data: bool) -> Record | None:
    """Read the record at *path*; ``None`` if it does not exist.

    With *with_data*, inline data is loaded too. Raises :class:`CorruptFileError` when the
    file is not a well-formed record.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _directory(path) from None
    try:
        blob = os.read(fd, _FIRST_READ)
        need = _needed(blob, path, with_data=with_data)
        if len(blob) < need:
            blob = _read_rest(fd, blob, need)
    except IsADirectoryError:  # opening a directory read-only succeeds; reading fails
        raise _directory(path) from None
    finally:
        os.close(fd)
    return _parse(blob, path, with_data=with_data)


def _directory(path: str) -> CorruptFileError:
    return CorruptFileError(f"{path!r} is a directory, not a storekeeper record file")


def clear_damaged(path: str, key: str) -> None:
    """Make way for a write that replaces or deletes the damaged record at *path*.

    A file is simply replaced; a directory in its place is removed when it is empty
    (nothing is lost), else :class:`CorruptFileError` asks for it to be moved away.
    """
    if os.path.islink(path) or not os.path.isdir(path):
        return
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CorruptFileError(
            f"the record of key {key!r} is a directory that is not empty ({path!r}); "
            "move it away to write the key"
        ) from exc


def _needed(blob: bytes, path: str, *, with_data: bool) -> int:
    if len(blob) < _PREFIX.size or blob[:4] != _MAGIC:
        raise CorruptFileError(f"{path!r} is not a storekeeper record file (or is truncated)")
    fields = _PREFIX.unpack_from(blob)
    size, key_len, version_len, data_len, metadata_len = fields[4:]
    need: int = _PREFIX.size + key_len + version_len + data_len + metadata_len
    return need + size if with_data and data_len == 0 else need


def _read_rest(fd: int, blob: bytes, need: int) -> bytes:
    parts = [blob]
    have = len(blob)
    while have < need:
        chunk = os.read(fd, min(need - have, _MAX_READ))
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _parse(blob: bytes, path: str, *, with_data: bool) -> Record:
    _, crc, created, modified, size, key_len, version_len, data_len, metadata_len = (
        _PREFIX.unpack_from(blob)
    )
    start = _PREFIX.size
    ends = _running_sums(start, key_len, version_len, data_len, metadata_len)
    end = ends[-1] + (size if data_len == 0 else 0)
    complete = len(blob) == end
    if len(blob) < ends[-1] or (with_data and not complete):
        raise CorruptFileError(f"record file {path!r} is truncated")
    if len(blob) > end or (complete and zlib.crc32(memoryview(blob)[_CRC_START:]) != crc):
        raise CorruptFileError(f"record file {path!r} fails its checksum")
    try:
        return Record(
            blob[start : ends[0]].decode("utf-8", "surrogatepass"),
            blob[ends[0] : ends[1]].decode("ascii"),
            created,
            modified,
            size,
            blob[ends[1] : ends[2]].decode("ascii") or None,
            blob[ends[2] : ends[3]].decode("utf-8"),
            blob[ends[3] :] if complete and data_len == 0 else None,
        )
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"record file {path!r} has a damaged header: {exc}") from exc


def _running_sums(start: int, *lengths: int) -> list[int]:
    ends = []
    for length in lengths:
        start += length
        ends.append(start)
    return ends


def record_value(record: Record, shared: SharedFile | None) -> Value:
    """The :class:`Value` of *record*: inline data in memory, else streams over *shared*."""
    if record.data_file is None:
        return BytesValue(
            record.inline or b"",
            created=record.created,
            modified=record.modified,
            version=record.version,
            metadata_json=record.metadata_json,
        )
    assert shared is not None  # a data-file record is always opened with its file
    size = record.size
    return StreamValue(
        lambda: open_stream(shared, 0, size),
        size=size,
        created=record.created,
        modified=record.modified,
        version=record.version,
        metadata_json=record.metadata_json,
        range_opener=lambda lo, hi: open_stream(shared, lo, size if hi is None else hi),
    )


def obsolete_data_file(old: Record | None, new: Record | None) -> str | None:
    """The data file *old* used that *new* (``None``: a deletion) no longer needs."""
    if old is None or old.data_file is None:
        return None
    return None if new is not None and new.data_file == old.data_file else old.data_file


#: The version a damaged record stands for: it matches no version a caller holds.
DAMAGED_VERSION = "damaged"


def damaged_record(key: str) -> Record:
    """A stand-in for *key*'s damaged record, for the writes that replace or delete it.

    It names no data file: one the damaged record used is left to garbage collection.
    """
    return Record(key, DAMAGED_VERSION, 0.0, 0.0, 0, None, "{}")


def is_damaged(record: Record | None) -> bool:
    """Whether *record* is a :func:`damaged_record` stand-in."""
    return record is not None and record.version == DAMAGED_VERSION


def record_names(keys_dir: str) -> Iterator[str]:
    """The names of the record files in *keys_dir* (temp and staged files left out)."""
    return (entry.name for entry in os.scandir(keys_dir) if is_record_name(entry.name))
