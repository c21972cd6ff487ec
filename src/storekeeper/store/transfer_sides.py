"""The two kinds of place a transfer reads from and writes to: a store, or a local folder.

:func:`storekeeper.store.transfer.transfer` sees both through one small interface,
:class:`Side`: the keys under a prefix with their :class:`Entry` (size, modified time,
metadata) in key order, one key's entry, its data, a write and a delete.
:class:`Folder` is the public name users pass to say "this directory, as plain files";
the store side wraps any store.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from operator import itemgetter
from stat import S_ISREG
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from storekeeper.errors import InvalidKeyError, ReadOnlyStoreError
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore
from storekeeper.store.backend import Metadata, encodable

if TYPE_CHECKING:
    from storekeeper.files import CountedFile

__all__ = ["Entry", "Folder", "Side", "folder_side", "store_side"]

#: How far apart (seconds) a folder file's mtime and its source's modified time may be
#: and still count as equal: file systems round timestamps (float seconds lose ns).
MTIME_TOLERANCE = 0.001


class Entry(NamedTuple):
    """What a transfer compares about one key: ``size`` and ``modified`` (UTC POSIX
    seconds; ``None`` where the side cannot tell), ``metadata`` (``None`` for a side
    that keeps none, such as a folder), and ``version``: a token that changes whenever
    the key does on this side (a store's version, a file's mtime and size), or ``None``."""

    size: int | None
    modified: float | None
    metadata: Metadata | None
    version: str | None = None

    def same_as(self, other: Entry) -> bool:
        """Whether *other*, read later from the same side, is the same value."""
        if self.version is not None and other.version is not None:
            return self.version == other.version
        return (self.size, self.modified) == (other.size, other.modified)


class Side(Protocol):
    """One end of a transfer. Keys are listed in key order; ``read`` returns the data
    stream and the entry read together, so data and metadata always match."""

    keeps_metadata: bool

    def entries(self, prefix: str, *, metadata: bool) -> Iterator[tuple[str, Entry]]:
        """The keys starting with *prefix* with their entries, in key order, read in
        one listing; without *metadata*, as for :meth:`entry`."""

    def entry(self, key: str, *, metadata: bool = True) -> Entry | None:
        """*key*'s entry, ``None`` if it is missing; without *metadata* (when the other
        side keeps none) its ``metadata`` may be ``None``, which saves decoding it."""

    def read(self, key: str) -> tuple[IO[bytes], Entry] | None:
        """A new stream over *key*'s data and the entry it belongs to; ``None`` if missing."""

    def check_keys(self, keys: list[str]) -> None:
        """Raise InvalidKeyError, naming one, if any of *keys* cannot be written here."""

    def write(self, key: str, chunks: bytes | Iterable[bytes] | CountedFile, source: Entry) -> None:
        """Replace *key* with *chunks* (bytes, an iterable of bytes chunks, or a stream
        read to its end) and the metadata of *source* (an atomic step)."""

    def delete(self, key: str) -> None:
        """Remove *key*; nothing if it is already gone."""

    def is_fresh(self, mine: Entry, source: Entry) -> bool | None:
        """Whether *mine*, of the same size and metadata as *source*, holds *source*'s
        data, told by modification times without reading it; ``None`` when the times
        cannot tell (the data is then compared by checksum)."""

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which several writes may be applied together (or a no-op)."""


class Folder:
    """A local directory seen as keys: each regular file is a key, its path relative to
    the directory with ``/`` separators (``photos/2024/a.jpg``).

    A folder keeps data only: metadata copied into one is dropped, and metadata copied
    out of one is ``{}`` (a key that exists in the target store keeps its metadata).
    Files are written atomically (temp file, rename) with their modification time set
    to the source key's, so an interrupted copy never leaves a partial file and a later
    one recognises the files it wrote. *durable* fsyncs every file written.

    Every regular file whose path is valid UTF-8 is a key, whatever its name: the temp
    file a killed copy left behind (``.name.<hex>.tmp``) is an extra key that a sync
    with ``delete`` removes. A file or directory whose name is not UTF-8 can be no key:
    it is skipped (on either side, so a sync with ``delete`` leaves it too) with a
    :class:`UserWarning` naming it, and the rest is copied. A symlink is followed; one
    to nothing is skipped with a :class:`UserWarning`, and one to a directory is not
    descended into.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.path = os.fspath(path)
        self.durable = durable

    def __repr__(self) -> str:
        return f"Folder({self.path!r})"


class _StoreSide:
    """A store as a transfer side."""

    keeps_metadata = True

    def __init__(self, store: AbstractReadOnlyStore) -> None:
        self.store = store

    def entries(self, prefix: str, *, metadata: bool) -> Iterator[tuple[str, Entry]]:
        for key, info in self.store.list_info(prefix, metadata=metadata):
            yield key, Entry(info.size, info.modified, info.metadata, info.version)

    def entry(self, key: str, *, metadata: bool = True) -> Entry | None:
        try:
            value = self.store.get(key)
        except KeyError:
            return None
        chosen = value.metadata if metadata else None
        return Entry(value.size, value.modified, chosen, value.version)

    def read(self, key: str) -> tuple[IO[bytes], Entry] | None:
        try:
            value = self.store.get(key)
        except KeyError:
            return None
        return value.data, Entry(value.size, value.modified, value.metadata, value.version)

    def _writable(self) -> AbstractStore:
        if not isinstance(self.store, AbstractStore):
            raise ReadOnlyStoreError(f"cannot write into the read-only {type(self.store).__name__}")
        return self.store

    def check_keys(self, keys: list[str]) -> None:
        return None  # a store holds any key: it checks its own on write

    def write(self, key: str, chunks: bytes | Iterable[bytes] | CountedFile, source: Entry) -> None:
        store = self._writable()
        if source.metadata is None:  # from a folder: the key keeps the metadata it has
            store.set_data(key, chunks)
        else:
            store.set(key, (chunks, source.metadata))

    def delete(self, key: str) -> None:
        with contextlib.suppress(KeyError):
            self._writable().delete(key)

    def is_fresh(self, mine: Entry, source: Entry) -> bool | None:
        # A store sets a key's modified time itself, so a copy is younger than its source
        # until the source changes again. Equal times prove nothing (a change within one
        # clock tick of the copy): such a key is copied again. A source time still in
        # the future (a file stamped ahead, a clock ahead of ours) stays later than any
        # copy made before then, so the order says nothing: compare the data instead.
        if mine.modified is None or source.modified is None:
            return None
        if mine.modified > source.modified:
            return True
        return None if source.modified > time.time() else False

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        store = self.store
        if isinstance(store, AbstractStore) and store.capabilities.atomic_transactions:
            return store.transaction("Copying keys")
        return contextlib.nullcontext()


class _FolderSide:
    """A :class:`Folder` as a transfer side."""

    keeps_metadata = False

    def __init__(self, folder: Folder, *, missing_ok: bool) -> None:
        self.root = folder.path
        self.durable = folder.durable
        self.missing_ok = missing_ok

    def entries(self, prefix: str, *, metadata: bool) -> Iterator[tuple[str, Entry]]:
        if not os.path.isdir(self.root):
            if self.missing_ok and not os.path.exists(self.root):
                return iter(())  # a target folder is created by its first write
            raise FileNotFoundError(f"no such folder: {self.root!r}")
        found: list[tuple[str, Entry]] = []
        self._scan(self.root, "", prefix, found)
        found.sort(key=itemgetter(0))
        return iter(found)

    def _scan(self, directory: str, base: str, prefix: str, found: list[tuple[str, Entry]]) -> None:
        with os.scandir(directory) as items:
            for item in items:
                if not encodable(item.name):
                    # No key can hold a lone surrogate: the name (bytes that are not
                    # UTF-8, decoded with surrogateescape) has no key to be.
                    warnings.warn(
                        f"skipped {os.fsencode(item.path)!r}: its name is not UTF-8, so it "
                        "cannot be a key (rename it to copy it)",
                        stacklevel=2,
                    )
                    continue
                key = base + item.name
                if item.is_dir(follow_symlinks=False):
                    folder = key + "/"
                    if folder.startswith(prefix) or prefix.startswith(folder):
                        self._scan(item.path, folder, prefix, found)
                elif key.startswith(prefix):
                    try:
                        stat = item.stat()
                    except FileNotFoundError:  # a dangling symlink: no data to copy
                        warnings.warn(f"skipped {item.path!r}: a symlink to nothing", stacklevel=2)
                        continue
                    if S_ISREG(stat.st_mode):
                        found.append((key, _file_entry(stat)))

    def path_of(self, key: str) -> str:
        """The file that holds *key*; InvalidKeyError for a key no file name can hold."""
        parts = key.split("/")
        if any(part in ("", ".", "..") or "\x00" in part or os.sep in part for part in parts):
            raise InvalidKeyError(f"key {key!r} cannot be a file path under {self.root!r}")
        return os.path.join(self.root, *parts)

    def _stat(self, key: str) -> os.stat_result | None:
        try:
            stat = os.stat(self.path_of(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat if S_ISREG(stat.st_mode) else None

    def entry(self, key: str, *, metadata: bool = True) -> Entry | None:
        stat = self._stat(key)
        return None if stat is None else _file_entry(stat)

    def read(self, key: str) -> tuple[IO[bytes], Entry] | None:
        try:
            stream = open(self.path_of(key), "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        stat = os.fstat(stream.fileno())
        return stream, _file_entry(stat)

    def check_keys(self, keys: list[str]) -> None:
        # A file cannot also be a folder: "a" beside "a/b" has no place on disk.
        names = set(keys)
        for key in keys:
            self.path_of(key)
            parts = key.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder in names:
                    raise InvalidKeyError(
                        f"keys {folder!r} and {key!r} cannot both be files under {self.root!r}"
                    )

    def write(self, key: str, chunks: bytes | Iterable[bytes] | CountedFile, source: Entry) -> None:
        from storekeeper.files import atomic_write  # the file layer, needed only here

        path = self.path_of(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, chunks, durable=self.durable)
        if source.modified is not None:
            nanoseconds = round(source.modified * 1e9)
            os.utime(path, ns=(nanoseconds, nanoseconds))

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        # Empty folders left behind would be keyless clutter; stop at the first non-empty.
        directory = os.path.dirname(path)
        while os.path.abspath(directory) != os.path.abspath(self.root):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def is_fresh(self, mine: Entry, source: Entry) -> bool | None:
        # A file written here got its source's modified time: equal times mean this
        # copy (a file changed since then has a newer mtime).
        if mine.modified is None or source.modified is None:
            return None
        return abs(mine.modified - source.modified) <= MTIME_TOLERANCE

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


def _file_entry(stat: os.stat_result) -> Entry:
    version = f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"
    return Entry(stat.st_size, stat.st_mtime_ns / 1e9, None, version)


def store_side(store: AbstractReadOnlyStore) -> Side:
    """*store* as a transfer side."""
    return _StoreSide(store)


def folder_side(folder: Folder, *, missing_ok: bool = False) -> Side:
    """*folder* as a transfer side; *missing_ok*: a folder that does not exist yet lists
    no keys (a target) instead of raising FileNotFoundError (a source)."""
    return _FolderSide(folder, missing_ok=missing_ok)
