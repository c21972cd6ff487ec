"""The directory of a :mod:`storekeeper.backends.filesystem` store and its committed files.

:class:`StoreLayout` knows where everything lives (``keys/``, ``data/``, the journal)
and reads and writes committed records and data files; it knows nothing of
transactions, locks, preconditions or events, which the store adds on top. Writes
through it must run under the store lock.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import suppress

from storekeeper.backends._fs_errors import mark_from_source
from storekeeper.backends._fs_journal import JOURNAL_NAME, JournalReader, is_orphan
from storekeeper.backends._fs_names import decode_name, encode_key, is_hashed
from storekeeper.backends._fs_records import (
    Record,
    clear_damaged,
    damaged_record,
    load_record,
    obsolete_data_file,
    pack_record,
)
from storekeeper.errors import CorruptFileError, FileSystemStoreError
from storekeeper.files import FileTail, atomic_write, fsync_directory
from storekeeper.store.backend import new_version

__all__ = ["DEFAULT_MAGIC_FNAME", "StoreLayout", "init_shared_store", "key_of_name"]

#: The magic file's default name.
DEFAULT_MAGIC_FNAME = ".FSStore"
_MAGIC_CONTENT = b"storekeeper FileSystemStore\n__version__ = 1\n"


def init_shared_store(path: str | os.PathLike[str], magic_fname: str = DEFAULT_MAGIC_FNAME) -> None:
    """Make *path* a store: create the directory (and parents) and the magic file.

    Idempotent: an existing store is left as it is.
    """
    root = os.path.abspath(os.fspath(path))
    for directory in (root, os.path.join(root, "keys"), os.path.join(root, "data")):
        os.makedirs(directory, exist_ok=True)
    magic = os.path.join(root, magic_fname)
    if not os.path.exists(magic):
        atomic_write(magic, _MAGIC_CONTENT)


def key_of_name(name: str) -> str:
    """The key of the record file *name*, or the name itself when it is hashed."""
    key = decode_name(name)
    return name if key is None else key


class StoreLayout:
    """The files of the store in the directory *path* (see the module docstring).

    ``keys`` and ``data`` are the record and data directories, ``journal`` the intent
    log's path; ``journal_reader`` reads that log as readers must (before a record).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = os.path.join(path, "keys")
        self.data = os.path.join(path, "data")
        self.journal = os.path.join(path, JOURNAL_NAME)
        self.journal_reader = JournalReader(path)
        self._keys_prefix = self.keys + os.sep

    def check(self, magic_fname: str) -> None:
        """Raise :class:`FileSystemStoreError` unless the directory is a store; create
        a missing ``keys/`` or ``data/``."""
        if not os.path.isdir(self.path):
            raise FileSystemStoreError(
                errno.ENOENT, "store directory not found (see init_shared_store)", self.path
            )
        magic = os.path.join(self.path, magic_fname)
        if not os.path.isfile(magic):
            raise FileSystemStoreError(
                errno.ENOENT, "not a FileSystemStore: magic file missing", magic
            )
        for directory in (self.keys, self.data):
            os.makedirs(directory, exist_ok=True)

    def record_path(self, name: str) -> str:
        """The path of the record file *name*."""
        return self._keys_prefix + name

    def data_path(self, data_file: str) -> str:
        """The path of the data file *data_file*."""
        return os.path.join(self.data, data_file)

    def load(self, key: str, name: str, *, with_data: bool) -> Record | None:
        """*key*'s committed record (file *name*), as of the journal read first;
        ``None`` if missing, :class:`CorruptFileError` naming the key if damaged."""
        # The journal is read before the record: see _fs_journal for why that order.
        pending = self.journal_reader.pending()
        try:
            if pending is None or not pending.covers(name):
                record = load_record(self._keys_prefix + name, with_data=with_data)
            else:
                record = pending.load(self.keys, name, with_data=with_data)
        except CorruptFileError as exc:
            raise CorruptFileError(
                f"the record of key {key!r} is damaged ({exc}); set or delete the key to replace it"
            ) from exc
        if record is None or record.key != key:  # a different key, hashed alike
            return None
        return record

    def exists(self, name: str) -> bool | None:
        """Whether the record file *name* exists, or ``None`` when that cannot tell
        (a hashed name may hold another key; a committed journal may change it)."""
        if is_hashed(name):
            return None
        pending = self.journal_reader.pending()
        if pending is not None and pending.covers(name):
            return None
        return os.path.exists(self._keys_prefix + name)

    def clear_damaged(self, key: str, name: str) -> Record:
        """Make way for replacing *key*'s damaged record; a stand-in for it."""
        clear_damaged(self._keys_prefix + name, key)
        return damaged_record(key)

    def put(self, name: str, old: Record | None, new: Record | None, *, durable: bool) -> None:
        """Replace the record *name* (*old*) by *new* (``None``: delete it) and remove
        the data file only *old* used."""
        path = self._keys_prefix + name
        if new is not None:
            atomic_write(path, pack_record(new), durable=durable)
        else:
            with suppress(FileNotFoundError):  # a damaged record's directory, removed
                os.unlink(path)
            if durable:
                fsync_directory(self.keys)
        obsolete = obsolete_data_file(old, new)
        if obsolete is not None:
            self.unlink_data(obsolete)

    def write_data(
        self, key: str, chunks: bytes | Iterator[bytes] | FileTail, *, durable: bool
    ) -> str:
        """Write a new data file for *key* from *chunks* (or the rest of a file, copied
        inside the kernel where it can be); its name."""
        data_file = f"{encode_key(key)}.{new_version()}"
        try:
            atomic_write(self.data_path(data_file), chunks, durable=durable)
        except OSError as exc:
            if isinstance(chunks, FileTail) and chunks.source_failed:
                mark_from_source(exc)
            raise
        return data_file

    def discard_data(self, data_file: str) -> None:
        """Remove a data file this store wrote, unless a committed record names it.

        Used after a failure, when the write may or may not have reached its record.
        """
        if is_orphan(self.keys, data_file):
            self.unlink_data(data_file)

    def unlink_data(self, data_file: str) -> None:
        """Remove *data_file* if it is there."""
        with suppress(FileNotFoundError):
            os.unlink(self.data_path(data_file))
