"""The writes of a :class:`SqliteStore`: rows, chunk sets, value files and batches.

A write runs in its own ``BEGIN IMMEDIATE`` transaction, or in a savepoint of the
caller's. The common write, a small value outside a transaction that nobody listens
to, is one autocommit statement instead (:meth:`Writes.quick_set`,
:meth:`Writes.quick_delete`): the statement carries the precondition and leaves alone
a row whose value is stored outside it, so when it changes nothing the full path runs
and tells a failed precondition from a value to clean up. A large value goes to its
own file before its row is written (file databases) or into a chunk set in the same
transaction (in-memory databases).
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator, Mapping
from operator import itemgetter
from typing import Any, NamedTuple

from storekeeper.backends._sqlite_connections import Connections
from storekeeper.backends._sqlite_files import (
    ChunkHolds,
    StoredFile,
    ValueFiles,
    fixed_chunks,
    is_file_ref,
)
from storekeeper.backends._sqlite_indexes import Indexes
from storekeeper.backends._sqlite_schema import Schema
from storekeeper.backends._sqlite_transactions import Transactions
from storekeeper.files import FileTail
from storekeeper.store.backend import (
    Metadata,
    check_precondition,
    decode_metadata,
    encode_metadata,
    exists_conflict,
    missing,
    new_version,
    unpack_value,
    version_numbers,
)

__all__ = ["Batch", "RowState", "Writes", "small_bytes", "take"]

# Stay well under SQLite's limit on bound parameters per statement.
_IN_BATCH = 500


class RowState(NamedTuple):
    """What a write needs of a key's current row (:attr:`Schema.select_state`)."""

    metadata: str
    version: str
    blob: str | None


class Batch(NamedTuple):
    """A batch of inline values: keys, metadata texts (``None`` when every value's
    metadata is empty), data and the data's total size in bytes."""

    keys: list[str]
    metadata_texts: list[str] | None
    datas: list[bytes]
    size: int


class Writes:
    """Writes to one table through *connections* (see the module documentation)."""

    def __init__(
        self,
        connections: Connections,
        schema: Schema,
        indexes: Indexes,
        transactions: Transactions,
        files: ValueFiles | None,
        holds: ChunkHolds,
        *,
        chunk_size: int,
        inline_limit: int,
    ) -> None:
        self.connections = connections
        self.schema = schema
        self.indexes = indexes
        self.transactions = transactions
        self.files = files
        self.holds = holds
        self.chunk_size = chunk_size
        self.inline_limit = inline_limit

    # -- one statement -----------------------------------------------------------------
    def quick_set(
        self,
        key: str,
        data: bytes,
        metadata_json: str,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str | None:
        """Write inline *data* in one autocommit statement: its version, or ``None``
        (nothing written) when the full path must run."""
        schema = self.schema
        version = version_numbers(1).start
        params: tuple[object, ...] = (key, metadata_json, time.time(), version, data)
        if if_version is not None:
            if if_exists is False:
                return None  # contradictory: the full path says which way it fails
            sql, params = schema.quick_replace_version, (*params, if_version)
        elif if_exists is None:
            sql = schema.quick_upsert
        else:
            sql = schema.quick_replace if if_exists else schema.quick_create
        if self.connections.autocommit(sql, params):
            return str(version)
        if sql is schema.quick_create:
            # DO NOTHING changed nothing: the key exists, wherever its value is.
            raise exists_conflict(key)
        return None

    def quick_delete(self, key: str, if_version: str | None) -> bool:
        """Delete an inline row in one autocommit statement; False (nothing deleted)
        for a missing key, another version, or a value stored outside its row."""
        if if_version is None:
            return self.connections.autocommit(self.schema.quick_delete, (key,))
        return self.connections.autocommit(self.schema.quick_delete_version, (key, if_version))

    # -- one key's transaction ---------------------------------------------------------
    def write(
        self,
        key: str,
        data: bytes | None,
        stream: Iterator[bytes] | None,
        metadata_json: str | None,
        preconditions: tuple[str | None, bool | None],
        *,
        nested: bool,
        stored: StoredFile | None = None,
    ) -> tuple[str, Metadata]:
        """One key's write: inline *data*, a chunked *stream*, or the value file already
        *stored*; ``metadata_json=None`` keeps the metadata. Returns the new version and
        the metadata written."""
        with self.connections.writing(nested) as conn:
            old = self.state(conn, key)
            check_precondition(key, None if old is None else old.version, *preconditions)
            if metadata_json is None:
                metadata_json = "{}" if old is None else old.metadata
            version = self._upsert(conn, key, data, metadata_json, stream, stored)
            obsolete = None if old is None else old.blob
            self._drop_chunks(conn, obsolete)
            metadata = decode_metadata(metadata_json)
            self.indexes.ensure(conn, metadata)
        self.transactions.files_replaced(None if stored is None else stored.ref, obsolete)
        return str(version), metadata

    def write_file(
        self,
        key: str,
        stream: Iterator[bytes] | FileTail,
        metadata_json: str | None,
        preconditions: tuple[str | None, bool | None],
        *,
        nested: bool,
    ) -> tuple[str, Metadata]:
        """:meth:`write` of a large value, to its own file first, then the row naming it;
        *stream* is its chunks, or the rest of the file it is read from."""
        assert self.files is not None
        # Outside the write transaction: other writers are not held up by the upload.
        stored = self.files.write(stream)
        try:
            return self.write(
                key, None, None, metadata_json, preconditions, nested=nested, stored=stored
            )
        except BaseException:
            self.files.remove([stored.ref])
            raise

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        metadata_json: str,
        preconditions: tuple[str | None, bool | None],
        *,
        nested: bool,
    ) -> None:
        """Replace *key*'s metadata (a new key gets empty data)."""
        with self.connections.writing(nested) as conn:
            old = self.state(conn, key)
            check_precondition(key, None if old is None else old.version, *preconditions)
            if old is None:
                self._upsert(conn, key, b"", metadata_json, None)
            else:
                self._replace_metadata(conn, key, metadata_json)
            self.indexes.ensure(conn, metadata)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], if_version: str | None, *, nested: bool
    ) -> Metadata:
        """Merge *metadata* into *key*'s; the merged metadata."""
        with self.connections.writing(nested) as conn:
            old = self.state(conn, key)
            if old is None:
                raise missing(key)
            check_precondition(key, old.version, if_version, True)
            merged = decode_metadata(old.metadata)
            merged.update(metadata)
            self._replace_metadata(conn, key, encode_metadata(merged))
            self.indexes.ensure(conn, metadata)
        return merged

    def delete(self, key: str, if_version: str | None, *, nested: bool) -> str:
        """Delete *key*'s row (and its chunks); the metadata text it had."""
        with self.connections.writing(nested) as conn:
            old = self.state(conn, key)
            if old is None:
                raise missing(key)
            check_precondition(key, old.version, if_version, None)
            conn.execute(self.schema.delete, (key,))
            self._drop_chunks(conn, old.blob)
        self.transactions.files_replaced(None, old.blob)
        return old.metadata

    def state(self, conn: sqlite3.Connection, key: str) -> RowState | None:
        """*key*'s current row, or ``None`` when missing."""
        row = conn.execute(self.schema.select_state, (key,)).fetchone()
        return None if row is None else RowState._make(row)

    # -- batches -----------------------------------------------------------------------
    def inline_batch(self, keys: list[str], values: list[Any]) -> Batch | None:
        """*keys* and *values* as a :class:`Batch`, or ``None`` when a value is a stream
        or too large to be stored inline."""
        limit = self.inline_limit
        # The common batch, (bytes, metadata dict) pairs only, is split by C-level maps.
        pairs = values and all_of_type(values, tuple)
        if pairs and list(map(len, values)).count(2) == len(values):
            datas = list(map(itemgetter(0), values))
            metadatas = list(map(itemgetter(1), values))
            if all_of_type(datas, bytes) and all_of_type(metadatas, dict):
                sizes = list(map(len, datas))
                if max(sizes) <= limit:
                    texts = list(map(encode_metadata, metadatas)) if any(metadatas) else None
                    return Batch(keys, texts, datas, sum(sizes))
        metadata_texts: list[str] = []
        datas = []
        for value in values:
            # Anything else goes through the general unpacking.
            source, metadata, owned = unpack_value(value)
            if owned:
                source.close()  # type: ignore[attr-defined]
            if not isinstance(source, bytes) or len(source) > limit:
                return None
            datas.append(source)
            metadata_texts.append("{}" if metadata is None else encode_metadata(metadata))
        return Batch(keys, metadata_texts, datas, sum(map(len, datas)))

    def write_batch(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Upsert *batch* inside the caller's transaction on *conn*."""
        # The old rows matter only for their large values (to remove).
        previous = self._blobs(conn, batch.keys) if self._has_large_values(conn) else {}
        versions = version_numbers(len(batch.keys))
        texts = batch.metadata_texts
        sql = self.schema.insert_batch(time.time(), empty_metadata=texts is None)
        if texts is None:
            conn.executemany(sql, zip(batch.keys, versions, batch.datas, strict=True))
        else:
            conn.executemany(sql, zip(batch.keys, texts, versions, batch.datas, strict=True))
            self.indexes.ensure_for_batch(conn, texts)
        log = self.transactions.log()
        if log is not None:
            log.inline += batch.size
        for blob in previous.values():
            self._drop_chunks(conn, blob)
            self.transactions.files_replaced(None, blob)

    def _has_large_values(self, conn: sqlite3.Connection) -> bool:
        """Whether any committed value is stored outside its row (chunks or a file).

        Called inside a write transaction: no other writer can commit a row naming a
        value file meanwhile, and a committed row's file exists until the row is gone.
        """
        if conn.execute(f"SELECT 1 FROM {self.schema.chunks} LIMIT 1").fetchone():
            return True
        return self.files is not None and self.files.any()

    def _blobs(self, conn: sqlite3.Connection, keys: list[str]) -> dict[str, str | None]:
        """Existing keys among *keys*, with their blob columns."""
        found: dict[str, str | None] = {}
        for start in range(0, len(keys), _IN_BATCH):
            part = keys[start : start + _IN_BATCH]
            sql = self.schema.select_blobs + "(" + ", ".join("?" * len(part)) + ")"
            found.update(conn.execute(sql, part).fetchall())
        return found

    # -- rows and chunk sets -----------------------------------------------------------
    def _upsert(
        self,
        conn: sqlite3.Connection,
        key: str,
        data: bytes | None,
        metadata_json: str,
        stream: Iterator[bytes] | None,
        stored: StoredFile | None = None,
    ) -> int:
        """Insert or replace *key*'s row; returns its new version."""
        blob: str | None
        if stored is not None:
            blob, size = stored
        else:
            blob = None if data is not None else new_version()
            size = len(data) if data is not None else self._insert_chunks(conn, blob, stream)
            log = self.transactions.log()
            if log is not None:
                log.inline += size
        now = time.time()
        version = version_numbers(1).start
        conn.execute(self.schema.upsert, (key, metadata_json, now, now, version, size, data, blob))
        return version

    def _replace_metadata(self, conn: sqlite3.Connection, key: str, metadata_json: str) -> None:
        version = version_numbers(1).start
        conn.execute(self.schema.update_metadata, (metadata_json, time.time(), version, key))

    def _drop_chunks(self, conn: sqlite3.Connection, blob: str | None) -> None:
        """Delete the chunks of a replaced or deleted value that *blob* names, if any,
        unless a value still reads them (then they go at a later write; a value file is
        removed once the write commits: :meth:`Transactions.files_replaced`)."""
        for released in self.holds.released():
            conn.execute(self.schema.delete_unreferenced_chunks, (released,))
        if blob is not None and not is_file_ref(blob) and not self.holds.keep(blob):
            conn.execute(self.schema.delete_chunks, (blob,))

    def _insert_chunks(
        self, conn: sqlite3.Connection, blob: str | None, stream: Iterator[bytes] | None
    ) -> int:
        assert stream is not None  # a value without inline data always comes with a stream
        total = 0
        for seq, chunk in enumerate(fixed_chunks(stream, self.chunk_size)):
            conn.execute(self.schema.insert_chunk, (blob, seq, chunk))
            total += len(chunk)
        return total


def all_of_type(items: list[Any], kind: type) -> bool:
    """Whether every item of *items* is exactly of type *kind* (not a subclass)."""
    # Counting in a list of types is a C loop of identity tests, cheaper than a set.
    return list(map(type, items)).count(kind) == len(items)


def small_bytes(source: object, limit: int) -> bytes | None:
    """*source* as ``bytes`` if it is a bytes-like value of at most *limit* bytes."""
    if type(source) is bytes:  # checked first: the isinstance below costs more
        return source if len(source) <= limit else None
    if isinstance(source, bytearray | memoryview) and len(source) <= limit:
        return bytes(source)
    return None


def take(chunks: Iterator[bytes], limit: int) -> tuple[bytes, Iterator[bytes]]:
    """Read from *chunks* until at least *limit* bytes (or the end): what was read,
    and an iterator over the whole stream (what was read, then the rest)."""
    parts: list[bytes] = []
    total = 0
    while total < limit:
        chunk = next(chunks, None)
        if chunk is None:
            break
        parts.append(chunk)
        total += len(chunk)
    head = b"".join(parts)
    return head, itertools.chain([head], chunks)
