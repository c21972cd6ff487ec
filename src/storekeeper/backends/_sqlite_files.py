"""Large values of a :class:`SqliteStore` kept outside their row, and its database file.

SQLite writes every byte twice (WAL, then checkpoint) and reads a chunk per query, so in
a file database values over ``inline_limit`` live in files instead, and the row holds
``file:<name>`` where a chunk-set id would be. The files of a table are in
``<database>-values/<table>/``, where ``<database>`` is the real path of the database
file (symbolic links resolved): every path that opens a database finds the same files,
and tables sharing a database never touch each other's (see :func:`table_directory`).
The rules that keep this crash-safe:

- a value file is written with :func:`storekeeper.files.atomic_write` (temp file, fsync,
  rename, directory fsync) *before* the row naming it is committed, so a committed row
  never names a missing or partial file (a value read from a regular file is copied
  into it inside the kernel: :class:`storekeeper.files.FileTail`);
- a file is removed only after the row that named it is gone for good: once the write
  that replaced or deleted it has committed (for a transaction, the outermost commit);
  a file written by a write or transaction that rolled back is removed at once;
- a crash between those steps leaves an unreferenced file, which :meth:`ValueFiles.sweep`
  removes when a store connects, if it is old enough that no live writer can still be
  about to commit it.

A :class:`~storekeeper.store.value.Value` read from a file row holds the file open
(:meth:`ValueFiles.open_shared`); on POSIX an open file stays readable after it is
removed, so the value keeps the version it was read with, in this process and whatever
other processes write. An in-memory database keeps large values as chunk sets in a side
table; :class:`ChunkHolds` keeps a chunk set that a live value still reads from being
deleted when its key is overwritten.

:class:`DatabaseFile` watches the database file itself: SQLite goes on writing into a
file that was deleted (or replaced) while open, and every write it acknowledges after
that is lost, so writes check first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from storekeeper import files
from storekeeper.errors import BackendError
from storekeeper.files import SharedFile, open_stream
from storekeeper.store.backend import new_version
from storekeeper.store.value import StreamValue, Value

__all__ = [
    "FILE_PREFIX",
    "ChunkHolds",
    "DatabaseFile",
    "FileLog",
    "FileMarks",
    "StoredFile",
    "ValueFiles",
    "file_value",
    "fixed_chunks",
    "fold_table_name",
    "is_file_ref",
    "table_directory",
]

FILE_PREFIX = "file:"
# An unreferenced file younger than this may belong to a writer about to commit.
SWEEP_AGE = 3600.0
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Table names used as they are for their directory; others are hashed.
_PLAIN_TABLE = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,63}")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def is_file_ref(blob: str | None) -> bool:
    """Whether a row's blob column names a value file (not a chunk set)."""
    return blob is not None and blob.startswith(FILE_PREFIX)


def fold_table_name(table: str) -> str:
    """*table* with its ASCII letters in lower case: SQLite matches table names so
    (``Store`` and ``store`` are one table), and leaves other letters as they are."""
    return table.translate(_ASCII_LOWER)


def table_directory(table: str) -> str:
    """The name of the directory holding *table*'s value files.

    SQLite folds ASCII letters in table names (``Store`` and ``store`` are one table), so
    the name is folded the same way; a name that is not a plain file name is hashed
    (``~`` and the first 32 hex digits of its SHA-256), so no table name can reach
    outside the values directory or collide with another table's.
    """
    folded = fold_table_name(table)
    if _PLAIN_TABLE.fullmatch(folded) and folded.strip(".") == folded:
        return folded
    return "~" + hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class StoredFile(NamedTuple):
    """A value file written for a row: its reference (``file:<name>``) and size."""

    ref: str
    size: int


class ValueFiles:
    """The value files of one table of one database (see the module docstring).

    *location* is the database path as given; :meth:`ensure` (at connect, once the
    database exists) resolves it to the real directory.
    """

    def __init__(self, location: str, table: str, durable: bool) -> None:
        self.location = location
        self.table = table
        self.durable = durable
        self.directory = self._resolve()

    def _resolve(self) -> str:
        real = os.path.realpath(self.location)
        return os.path.join(real + "-values", table_directory(self.table))

    def ensure(self) -> None:
        """Resolve the directory (the database may be a new link) and create it."""
        self.directory = self._resolve()
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the value directory {self.directory!r}: {exc}"
            ) from exc

    def path(self, ref: str) -> str:
        """The file of *ref* (``file:<name>``)."""
        return os.path.join(self.directory, ref[len(FILE_PREFIX) :])

    def write(self, chunks: Iterable[bytes] | files.FileTail) -> StoredFile:
        """Store *chunks* (or the rest of a file: :class:`~storekeeper.files.FileTail`,
        copied inside the kernel where it can be) in a new file, durably; return its
        reference and size.

        An error raised by *chunks* itself (reading the file) propagates as it is; a
        failure to write (disk full, permissions) is a
        :class:`~storekeeper.errors.BackendError`.
        """
        name = new_version()
        source_failed = False

        def watched(iterator: Iterator[bytes]) -> Iterator[bytes]:
            nonlocal source_failed
            while True:
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
                except BaseException:
                    source_failed = True
                    raise
                yield chunk

        data = chunks if isinstance(chunks, files.FileTail) else watched(iter(chunks))
        path = os.path.join(self.directory, name)
        try:
            size = files.atomic_write(path, data, durable=self.durable)
        except OSError as exc:
            if source_failed or (isinstance(data, files.FileTail) and data.source_failed):
                raise
            raise BackendError(f"cannot write a value file in {self.directory!r}: {exc}") from exc
        return StoredFile(FILE_PREFIX + name, size)

    def open_shared(self, ref: str) -> SharedFile:
        """*ref*'s file, held open for a value and its streams (:func:`file_value`).

        :class:`FileNotFoundError` when the file is gone (its row was replaced since it
        was read: read the row again).
        """
        try:
            return SharedFile(self.path(ref))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise BackendError(f"cannot open the value file {self.path(ref)!r}: {exc}") from exc

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


def file_value(
    shared: SharedFile,
    size: int,
    metadata_json: str,
    created: float,
    modified: float,
    version: str,
) -> Value:
    """The value of a row whose value file *shared* is held open (by the value and
    every stream it opens, until the last is gone)."""
    return StreamValue(
        lambda: open_stream(shared, 0, size),
        size=size,
        created=created,
        modified=modified,
        version=version,
        metadata_json=metadata_json,
        range_opener=lambda lo, hi: open_stream(shared, lo, size if hi is None else hi),
    )


class FileMarks(NamedTuple):
    """How many files a :class:`FileLog` had listed when a savepoint was opened."""

    created: int
    obsolete: int


@dataclass
class FileLog:
    """What a transaction wrote that matters once it ends: the value files it created
    and made obsolete, in order, and the bytes of data it wrote into rows (``inline``;
    a large total has its pages copied into the database by the checkpointer)."""

    created: list[str] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)
    inline: int = 0

    def marks(self) -> FileMarks:
        """Where the lists end now (for :meth:`rewind`)."""
        return FileMarks(len(self.created), len(self.obsolete))

    def rewind(self, marks: FileMarks) -> list[str]:
        """Forget what followed *marks*; return the files created since (to remove)."""
        dropped = self.created[marks.created :]
        del self.created[marks.created :]
        del self.obsolete[marks.obsolete :]
        return dropped


def fixed_chunks(stream: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut *stream* into chunks of exactly *size* bytes (the last may be shorter),
    as an in-memory database's chunk sets are stored."""
    pending = b""
    for piece in stream:
        view = memoryview(pending + piece if pending else piece)
        offset = 0
        while len(view) - offset >= size:
            yield bytes(view[offset : offset + size])
            offset += size
        pending = bytes(view[offset:])
    if pending:
        yield pending


def _listing(directory: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as entries:
            yield from (entry.name for entry in entries if entry.is_file())
    except FileNotFoundError:
        return


class _Hold:
    """What a value (and each stream it opens) holds while it may read a chunk set."""

    __slots__ = ("__weakref__",)


class ChunkHolds:
    """Chunk sets of an in-memory database that live values still read.

    :meth:`hold` is called under the store's lock while the row naming the chunk set is
    read; the returned token is kept by the value and its streams. A write that makes a
    held chunk set obsolete :meth:`keep`\\ s it instead of deleting it; once no token is
    left, :meth:`released` hands it back for deletion (by a statement that also checks
    that no row names it again, as after a rolled back overwrite).
    """

    def __init__(self) -> None:
        self._tokens: weakref.WeakValueDictionary[str, _Hold] = weakref.WeakValueDictionary()
        self._waiting: set[str] = set()

    def hold(self, blob: str) -> object:
        """A token keeping chunk set *blob* while it lives."""
        token = self._tokens.get(blob)
        if token is None:
            token = self._tokens[blob] = _Hold()
        return token

    def keep(self, blob: str) -> bool:
        """Whether *blob* is held; if so it waits for :meth:`released` to be deleted."""
        if blob in self._tokens:
            self._waiting.add(blob)
            return True
        return False

    def released(self) -> list[str]:
        """Chunk sets that waited for their holders and have none left (handed out once)."""
        if not self._waiting:
            return []
        done = [blob for blob in self._waiting if blob not in self._tokens]
        self._waiting.difference_update(done)
        return done


# (st_dev, st_ino) of a database file -> [descriptor, attached DatabaseFiles]: one
# descriptor per file and process, closed when the last DatabaseFile detaches. Closing
# any descriptor of a file drops every POSIX lock the process holds on it, SQLite's own
# included: in WAL mode each connection keeps a SHARED lock on the database file, and a
# process that finds none when it closes its last connection deletes the WAL under the
# others (https://sqlite.org/howtocorrupt.html, section 2.2).
_watched: dict[tuple[int, int], list[int]] = {}
_watched_lock = threading.Lock()


class DatabaseFile:
    """The database file a store has open, watched for deletion or replacement.

    :meth:`attach` takes a descriptor of the file, shared by every store of the process
    on that file; :meth:`check` (before a write commits: one ``fstat``) raises once the
    file has no name left, that is, once it was deleted or replaced by another file,
    when SQLite would go on acknowledging writes that nothing can ever read. The
    descriptor is closed when the last store of the process detaches (:meth:`close`),
    which must come after the store's connections are closed, as closing it drops the
    locks SQLite holds on the file for every connection of the process.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None

    def attach(self) -> None:
        """Start watching the file now at the location (after the database is open)."""
        previous = self._key
        try:
            self._key, self._fd = _take(self.location)
        except OSError as exc:
            raise BackendError(f"cannot open the database file {self.location!r}: {exc}") from exc
        if previous is not None:  # only now: the count must not reach 0 in between
            _give_back(previous)

    def check(self) -> None:
        """Raise :class:`~storekeeper.errors.BackendError` if the file is gone."""
        fd = self._fd
        if fd is not None and os.fstat(fd).st_nlink == 0:
            raise BackendError(
                f"the database file {self.location!r} was deleted or replaced while the "
                "store had it open; nothing written now could be read again: reconnect "
                "(disconnect() and connect()) to open the file now at that path"
            )

    def close(self) -> None:
        """Stop watching (at disconnect, once the store's connections are closed)."""
        key, self._key, self._fd = self._key, None, None
        if key is not None:
            _give_back(key)


def _take(location: str) -> tuple[tuple[int, int], int]:
    """The key and the shared descriptor of the file at *location*, counted once more."""
    with _watched_lock:
        found = os.stat(location)  # by path: opening a descriptor to compare is unsafe
        key = (found.st_dev, found.st_ino)
        entry = _watched.get(key)
        if entry is None:
            fd = os.open(location, os.O_RDONLY | _O_CLOEXEC)
            opened = os.fstat(fd)
            key = (opened.st_dev, opened.st_ino)  # replaced since the stat: this one
            entry = _watched.setdefault(key, [fd, 0])
            # If that file is watched already (a race with a replacement), fd stays
            # open unused: closing it would drop SQLite's locks on the file.
        entry[1] += 1
        return key, entry[0]


def _give_back(key: tuple[int, int]) -> None:
    with _watched_lock:
        entry = _watched[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _watched[key]
            os.close(entry[0])
