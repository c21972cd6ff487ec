"""Conformance checks around the store: what ``set`` writes, read without ``get``.

A store checked only against itself passes with a bug that is symmetric in ``set`` and
``get`` (metadata mangled on the way in and unmangled on the way out, data kept in the
store object and never written...). :class:`RawStorageTests`, a mixin of
:class:`storekeeper.testing.store.StoreTests`, closes that gap with two hooks each test
class implements from outside the store under test:

- :meth:`RawStorageTests.raw_write` puts a value into the store's storage without the
  store object (a plain ``sqlite3`` connection, another process, a composite's child);
- :meth:`RawStorageTests.raw_read` reads one back the same way.

The checks then set through the store and read raw, and write raw and get through the
store. A test class whose store has no storage outside the store object (an in-memory
store) sets :attr:`RawStorageTests.raw_unavailable` to the reason instead, which skips
the checks visibly.

Helpers for the built-in kinds: :func:`sqlite_read` / :func:`sqlite_write` (a plain
``sqlite3`` connection on the store's table) and :func:`read_in_new_process` /
:func:`write_in_new_process` (a fresh store object in another process).
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NoReturn

import pytest

from storekeeper.store import AbstractReadOnlyStore, AbstractStore

__all__ = [
    "RawStorageTests",
    "read_in_new_process",
    "sqlite_read",
    "sqlite_write",
    "write_in_new_process",
]

#: A raw value: the data bytes and the metadata dict.
Raw = tuple[bytes, dict[str, Any]]
#: Opens the store under test in another process; must be picklable.
Opener = Callable[[], AbstractReadOnlyStore]

_CONTEXT = multiprocessing.get_context("forkserver")
# Keys a backend might map wrongly. The values are a few bytes, so that every backend's
# test set-up keeps them inline (a raw reader need not know value files).
_KEYS = ["raw", "dir/sub/é ?*", "%2F..\\x"]
_METADATA: dict[str, Any] = {"s": "é\u2028", "n": [1, 2.5, None, True], "d": {"k": {"x": []}}}


class RawStorageTests:
    """Mixin of the conformance suite: values written and read around the store."""

    #: Why this store has no raw access (``None``: the hooks are implemented).
    raw_unavailable: str | None = None

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        """Store ``(data, metadata)`` under *key* in *store*'s storage, not through *store*."""
        self._no_raw_access()

    def raw_read(self, store: AbstractStore, key: str) -> Raw:
        """``(data, metadata)`` of *key* from *store*'s storage, not through *store*;
        ``KeyError`` when the storage has no such key."""
        self._no_raw_access()

    def _no_raw_access(self) -> NoReturn:
        if self.raw_unavailable is not None:
            pytest.skip(f"no raw access: {self.raw_unavailable}")
        pytest.fail(
            f"{type(self).__name__} implements neither raw_read/raw_write nor sets "
            "raw_unavailable to the reason it cannot"
        )

    def test_set_is_found_in_raw_storage(self, store: AbstractStore) -> None:
        for number, key in enumerate(_KEYS):
            store.set(key, (bytes([0, 255, number]), {**_METADATA, "i": number}))
        for number, key in enumerate(_KEYS):
            assert self.raw_read(store, key) == (
                bytes([0, 255, number]),
                {**_METADATA, "i": number},
            )

    def test_raw_storage_is_what_get_reads(self, store: AbstractStore) -> None:
        for number, key in enumerate(_KEYS):
            self.raw_write(store, key, bytes([number, 0, 255]), {**_METADATA, "i": number})
        for number, key in enumerate(_KEYS):
            assert store.to_bytes(key) == bytes([number, 0, 255])
            assert store.get_metadata(key) == {**_METADATA, "i": number}
            assert store.exists(key)
            head = store.head(key)
            assert head is not None and (head.size, head.metadata) == (
                3,
                {**_METADATA, "i": number},
            )

    def test_delete_is_seen_in_raw_storage(self, store: AbstractStore) -> None:
        store.set("gone", (b"x", {}))
        assert self.raw_read(store, "gone") == (b"x", {})
        store.delete("gone")
        with pytest.raises(KeyError):
            self.raw_read(store, "gone")


# -- SQLite: a plain sqlite3 connection on the table -----------------------------------------
def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_read(path: str, table: str, key: str) -> Raw:
    """*key*'s data and metadata in the SQLite database file *path*, read with plain SQL
    from the store's table *table* (inline data, or its chunks)."""
    connection = sqlite3.connect(path)
    try:
        row = connection.execute(
            f"SELECT metadata, blob, data FROM {_quoted(table)} WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        metadata, blob, data = row
        if isinstance(blob, str) and blob.startswith("file:"):
            raise ValueError(f"{key!r} is in a value file; raw reads take inline values")
        if blob is not None and data is None:
            chunks = connection.execute(
                f"SELECT data FROM {_quoted(table + '__chunks')} WHERE blob=? ORDER BY seq",
                (blob,),
            ).fetchall()
            data = b"".join(chunk for (chunk,) in chunks)
        return bytes(data), json.loads(metadata)
    finally:
        connection.close()


def sqlite_write(path: str, table: str, key: str, data: bytes, metadata: dict[str, Any]) -> None:
    """Store *key* with inline *data* and *metadata* in *table* of the database *path*
    with plain SQL, as another program sharing the file would."""
    now = time.time()
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(
                f"INSERT OR REPLACE INTO {_quoted(table)} "
                "(key, metadata, created, modified, version, size, blob, data) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                (key, json.dumps(metadata), now, now, 1, len(data), data),
            )
    finally:
        connection.close()


# -- any store another process can open ------------------------------------------------------
def _read(opener: Opener, key: str) -> Raw:
    with opener() as store:
        return store.to_bytes(key), store.get_metadata(key)


def _write(opener: Opener, key: str, data: bytes, metadata: dict[str, Any]) -> None:
    with opener() as store:
        assert isinstance(store, AbstractStore)
        store.set(key, (data, metadata))


def read_in_new_process(opener: Opener, key: str) -> Raw:
    """*key*'s data and metadata as a fresh store object from *opener* reads them in
    another process (so nothing the store under test holds in memory helps)."""
    with ProcessPoolExecutor(1, mp_context=_CONTEXT) as pool:
        return pool.submit(_read, opener, key).result(timeout=60)


def write_in_new_process(opener: Opener, key: str, data: bytes, metadata: dict[str, Any]) -> None:
    """Set *key* through a fresh store object from *opener* in another process."""
    with ProcessPoolExecutor(1, mp_context=_CONTEXT) as pool:
        pool.submit(_write, opener, key, data, metadata).result(timeout=60)
