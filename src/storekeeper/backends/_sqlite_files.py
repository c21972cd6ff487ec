"""Large values of a file-backed :class:`SqliteStore`, one file each beside the database.

SQLite writes every byte twice (WAL, then checkpoint) and reads a chunk per query, so
values over ``inline_limit`` live in ``<database>-values/`` instead, and the row holds
``file:<name>`` where a chunk-set id would be. The rules that keep this crash-safe:

- a value file is written with :func:`storekeeper.files.atomic_write` (temp file, fsync,
  rename, directory fsync) *before* the row naming it is committed, so a committed row
  never names a missing or partial file;
- a file is removed only after the row that named it is gone for good: once the write
  that replaced or deleted it has committed (for a transaction, the outermost commit);
  a file written by a write or transaction that rolled back is removed at once;
- a crash between those steps leaves an unreferenced file, which :meth:`sweep` removes
  when a store connects, if it is old enough that no live writer can still be about to
  commit it.

Readers open the file named by the row they read; on POSIX an open file stays readable
after it is replaced, so a reader sees one whole version. A reader that reaches the file
after a writer removed it gets :class:`~storekeeper.errors.ConflictError`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import IO, cast

from storekeeper import files
from storekeeper.errors import ConflictError
from storekeeper.store.abstract import new_version
from storekeeper.store.utils import BufferIteratorIO

__all__ = ["FILE_PREFIX", "ValueFiles", "is_file_ref"]

FILE_PREFIX = "file:"
# An unreferenced file younger than this may belong to a writer about to commit.
SWEEP_AGE = 3600.0
_READ_CHUNK = 1 << 20


def is_file_ref(blob: str | None) -> bool:
    """Whether a row's blob column names a value file (not a chunk set)."""
    return blob is not None and blob.startswith(FILE_PREFIX)


class ValueFiles:
    """The directory of value files of one database (see the module docstring)."""

    def __init__(self, directory: str, durable: bool) -> None:
        self.directory = directory
        self.durable = durable

    def ensure(self) -> None:
        """Create the directory if it is missing."""
        os.makedirs(self.directory, exist_ok=True)

    def path(self, ref: str) -> str:
        """The file of *ref* (``file:<name>``)."""
        return os.path.join(self.directory, ref[len(FILE_PREFIX) :])

    def write(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store *chunks* in a new file, durably; return its reference and size."""
        name = new_version()
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                size += len(chunk)
                yield chunk

        files.atomic_write(os.path.join(self.directory, name), counted(), durable=self.durable)
        return FILE_PREFIX + name, size

    def open(self, key: str, ref: str, start: int, stop: int) -> IO[bytes]:
        """A stream over bytes ``[start, stop)`` of *ref*'s file."""
        try:
            stream = open(self.path(ref), "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            raise ConflictError(f"key {key!r} changed before its value could be read") from None
        if start == 0 and stop >= os.fstat(stream.fileno()).st_size:
            return stream  # the whole file: the file object itself is the fastest stream
        stream.seek(start)
        return cast(IO[bytes], _Range(stream, stop - start))

    def remove(self, refs: Iterable[str | None]) -> None:
        """Remove the files of *refs* (chunk-set ids and missing files are skipped)."""
        for ref in refs:
            if is_file_ref(ref):
                assert ref is not None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(ref))

    def any(self) -> bool:
        """Whether the directory holds any file (finished or not)."""
        return next(_listing(self.directory), None) is not None

    def sweep(self, referenced: Iterable[str], min_age: float = SWEEP_AGE) -> int:
        """Remove files no row references that are older than *min_age* seconds."""
        keep = {ref[len(FILE_PREFIX) :] for ref in referenced if is_file_ref(ref)}
        cutoff = time.time() - min_age
        removed = 0
        for name in _listing(self.directory):
            if name in keep:
                continue
            path = os.path.join(self.directory, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
        return removed


def _listing(directory: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as entries:
            yield from (entry.name for entry in entries if entry.is_file())
    except FileNotFoundError:
        return


class _Range(BufferIteratorIO):
    """The next *remaining* bytes of an open file; closing it closes the file."""

    def __init__(self, stream: IO[bytes], remaining: int) -> None:
        self._file = stream
        super().__init__(_read_range(stream, remaining))

    def close(self) -> None:
        """Close the stream and its file."""
        try:
            super().close()
        finally:
            self._file.close()


def _read_range(stream: IO[bytes], remaining: int) -> Iterator[bytes]:
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk
