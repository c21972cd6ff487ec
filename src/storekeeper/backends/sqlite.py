"""``SqliteStore``: the embedded default store, one table in an SQLite database.

``sqlite:///relative/app.db``, ``sqlite:////absolute/app.db`` (or ``sqlite://`` for a private
in-memory database): see :meth:`SqliteStore.from_url`.

- **Durability**: WAL journal; ``durable=True`` (default) runs ``synchronous=FULL`` so a
  returned write survives power loss, ``durable=False`` runs ``NORMAL`` (survives a crash
  of the process, may lose the last writes on power loss). Copying the write-ahead log
  into the database (a checkpoint) runs on a background thread after a large
  transaction and, with ``background_checkpoints`` (default: ``not durable``), after
  any commit, so such writes never wait for the disk; the log is then bounded at 4,000
  pages (see ``_sqlite_checkpoint``).
- **Concurrency**: one connection per thread for plain reads and writes (re-created after
  ``fork``), a busy timeout, and ``BEGIN IMMEDIATE`` for every write, so threads and
  processes may share a database file. A transaction runs on a connection of its own,
  so other tasks of its thread read committed data meanwhile; their writes and
  transactions, which would have to wait for it, raise
  :class:`~storekeeper.errors.TransactionError` at once (see
  :mod:`storekeeper.store.owners`). Transactions nest with savepoints. An in-memory
  database has a single connection and serialises every operation (and every
  transaction) through a lock; there, any call of another task of the transaction's
  thread raises TransactionError.
- **Metadata** is JSON text, never pickle. Queries compile to SQL over ``json_extract``;
  ``index='dynamic'`` (default) creates an expression index for each metadata name the
  first time it is written (up to ``max_indexes``), ``index='static'`` only for
  ``index_columns``, ``index=None`` none. Indexes are maintained by SQLite itself, so
  they never go stale and survive reconnecting.
- **Large values** (over ``inline_limit`` bytes) are streamed in and out, never held in
  memory whole. A file database keeps each in its own file in
  ``<database>-values/<table>/``, the database's real path (links resolved) naming the
  directory, so any path to the database finds them and tables sharing it keep their
  own (written and fsynced before the row naming it commits; see ``_sqlite_files``):
  written once and read at file speed. An in-memory database keeps them as fixed-size
  chunks in a side table. Either way a value (and every stream it opens) reads the
  version it was read with, whatever is written to its key afterwards.
- **Opening** an existing database takes no write lock, so it never waits for another
  connection's write transaction. A database file deleted or replaced while open is
  noticed before each write commits (one ``fstat``), which then raises
  :class:`~storekeeper.errors.BackendError` instead of acknowledging a lost write.
  A missing database file is created, unless ``create=False`` (``?create=false``):
  then connecting raises FileNotFoundError and creates nothing.
- **Deleted data**: freed pages are zeroed only where that costs no extra writes
  (``PRAGMA secure_delete=FAST``), unlike builds that zero every freed page and so
  write a large value again to delete it; ``secure_delete=True`` zeroes everything.

Where each part lives: this module holds the store's API (argument checks, events,
progress, quick paths); ``_sqlite_connections`` the connections, the transaction
connection pool, the in-memory lock and the commit; ``_sqlite_reads`` and
``_sqlite_writes`` the statements' use; ``_sqlite_transactions`` transactions and what
their outcome settles; ``_sqlite_schema`` the SQL text and query compilation;
``_sqlite_indexes`` the expression indexes; ``_sqlite_files`` value files, chunk sets
and the database file watch; ``_sqlite_checkpoint`` the background checkpoints.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import weakref
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import SplitResult

from storekeeper.backends._sqlite_connections import MEMORY, Connections, translate
from storekeeper.backends._sqlite_files import ChunkHolds, ValueFiles, fold_table_name
from storekeeper.backends._sqlite_indexes import Indexes
from storekeeper.backends._sqlite_reads import Reads
from storekeeper.backends._sqlite_schema import (
    Schema,
    begin_without_waiting,
    write_transaction,
)
from storekeeper.backends._sqlite_transactions import Savepoint, Transactions
from storekeeper.backends._sqlite_writes import Writes, small_bytes, take
from storekeeper.errors import InvalidURLError, TransactionError
from storekeeper.events import BaseEventManager
from storekeeper.files import FileTail, copyable
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    StoreCapabilities,
    check_buffer_size,
    check_key,
    check_pattern,
    check_read,
    check_select,
    check_types,
    check_write,
    encodable,
    encode_metadata,
    iter_source,
    path_identity,
    query_terms,
    read_stream,
    select_metadata,
    source_size,
    split_pairs,
    unpack_value,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.listing import check_list_info, check_listing, prefix_end, walk
from storekeeper.store.value import Head, KeyInfo, Value

__all__ = ["SqliteStore"]

_INDEX_MODES = ("dynamic", "static", None)
_URL_FORMS = "sqlite:///relative.db, sqlite:////absolute.db, or sqlite:// in memory"
_URL_OPTIONS = {
    "table": urls.text,
    "index": urls.choice(*_INDEX_MODES),
    "index_columns": urls.names,
    "durable": urls.flag,
    "create": urls.flag,
    "background_checkpoints": urls.flag,
    "secure_delete": urls.flag,
    "inline_limit": urls.count,
    "chunk_size": urls.count,
    "max_indexes": urls.count,
    "timeout": urls.seconds,
}


def _url_location(parts: SplitResult) -> str:
    """The database an ``sqlite:`` URL names: an absolute path or ``:memory:``."""
    if MEMORY in parts.netloc:
        raise InvalidURLError(f"for an in-memory database write sqlite:// ({_URL_FORMS})")
    if parts.netloc:
        raise InvalidURLError(
            f"sqlite URLs have no host part (got {parts.netloc!r}): write {_URL_FORMS}"
        )
    if not parts.path:
        return MEMORY
    if parts.path.startswith("/") and not urls.has_authority(parts):
        raise InvalidURLError(
            f"write sqlite:///{parts.path} for the absolute path {parts.path} or "
            f"sqlite://{parts.path} relative to the working directory ({_URL_FORMS})"
        )
    if not parts.path.startswith("/"):
        raise InvalidURLError(
            f"write sqlite:///{parts.path} for a database relative to the working "
            f"directory ({_URL_FORMS})"
        )
    path = urls.url_path(parts)[1:]  # SQLAlchemy's rule: the third slash only ends the host
    if not path:
        raise InvalidURLError(f"sqlite:/// names no database file: write {_URL_FORMS}")
    return MEMORY if path == MEMORY else os.path.abspath(path)


class SqliteStore(AbstractStore):
    """A store in one table of an SQLite database (see the module documentation).

    ``SqliteStore(location=':memory:', table='store', index='dynamic',
    index_columns=None)``; the rest is keyword-only.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] = MEMORY,
        table: str = "store",
        index: str | None = "dynamic",
        index_columns: Iterable[str] | None = None,
        *,
        durable: bool = True,
        timeout: float = 30.0,
        inline_limit: int = 1 << 20,
        chunk_size: int = 1 << 20,
        max_indexes: int = 64,
        secure_delete: bool = False,
        background_checkpoints: bool | None = None,
        create: bool = True,
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__(event_manager)
        check_types(bool, durable=durable, secure_delete=secure_delete, create=create)
        check_types(int, inline_limit=inline_limit, chunk_size=chunk_size, max_indexes=max_indexes)
        check_types(float, timeout=timeout)
        check_types(str, table=table)
        if background_checkpoints is not None:
            check_types(bool, background_checkpoints=background_checkpoints)
        if index not in _INDEX_MODES:
            raise ValueError(f"index must be one of {_INDEX_MODES}, not {index!r}")
        if not table or "\x00" in table or not encodable(table):
            raise ValueError(f"invalid table name {table!r}")
        if chunk_size <= 0 or inline_limit < 0:
            raise ValueError("chunk_size must be positive and inline_limit non-negative")
        self.location = os.fspath(location)
        self.table = table
        self.index = index
        self.index_columns = list(index_columns or ())
        self.durable = durable
        self.timeout = timeout
        self.inline_limit = inline_limit
        self.chunk_size = chunk_size
        self.max_indexes = max_indexes
        self.secure_delete = secure_delete
        self.create = create
        memory = self.location == MEMORY
        self.background_checkpoints = (
            not durable if background_checkpoints is None else background_checkpoints
        ) and not memory
        self._connections = Connections(
            self.location,
            self,
            timeout=timeout,
            durable=durable,
            secure_delete=secure_delete,
            background_checkpoints=self.background_checkpoints,
        )
        self._checkpointer = self._connections.checkpointer
        if self._checkpointer is not None:
            # A store dropped without disconnect() must not leave its thread waiting.
            weakref.finalize(self, self._checkpointer.stop)
        self._schema = schema = Schema(table)
        self._indexes = Indexes(schema, index, self.index_columns, max_indexes)
        self._files = None if memory else ValueFiles(self.location, table, durable)
        holds = ChunkHolds()
        self._transactions = Transactions(self._connections, self._indexes, self._files)
        self._reads = Reads(self._connections, schema, self._files, holds, chunk_size)
        self._writes = Writes(
            self._connections,
            schema,
            self._indexes,
            self._transactions,
            self._files,
            holds,
            chunk_size=chunk_size,
            inline_limit=inline_limit,
        )

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> SqliteStore:
        """A store for an ``sqlite:`` URL, spelled as SQLAlchemy spells them.

        ``sqlite:///relative.db`` (relative to the working directory when opened),
        ``sqlite:////absolute/path.db`` and ``sqlite://`` (a private in-memory database;
        ``sqlite:///:memory:`` too). The path is percent-decoded. Options: ``table``,
        ``index`` (``dynamic``/``static``/``none``), ``index_columns`` (comma-separated),
        ``durable``, ``background_checkpoints``, ``secure_delete`` and ``create``
        (true/false),
        ``inline_limit``, ``chunk_size`` and ``max_indexes`` (integers), ``timeout``
        (seconds); keyword *options* win over them. Anything else is an
        :class:`~storekeeper.errors.InvalidURLError` naming the valid forms.
        """
        settings = urls.url_options(parts, _URL_OPTIONS)
        settings.update(options)
        return urls.create(cls, parts, _url_location(parts), **settings)

    @property
    def capabilities(self) -> StoreCapabilities:
        """Every capability; an in-memory database is neither persistent nor shared
        between processes."""
        if self.location == MEMORY:
            return StoreCapabilities.everything().but(cross_process=False, persistent=False)
        return StoreCapabilities.everything()

    def storage_identity(self) -> Hashable | None:
        """The database file (its device and inode) and the table (its ASCII letters
        in lower case, as SQLite matches table names): equal for every path to one
        database and every spelling of one table, ``None`` for an in-memory database
        (private to this object)."""
        if self.location == MEMORY:
            return None
        found = path_identity(self.location)
        return None if found is None else ("sqlite", *found, fold_table_name(self.table))

    def storage_paths(self) -> tuple[str, ...]:
        """The database file, the files SQLite keeps beside it (``-wal``, ``-shm``,
        ``-journal``) and the directory of value files (``-values``), links
        resolved; none for an in-memory database."""
        if self.location == MEMORY:
            return ()
        base = os.path.realpath(self.location)
        return tuple(base + suffix for suffix in ("", "-wal", "-shm", "-journal", "-values"))

    def info(self) -> dict[str, Any]:
        """Store description with ``location``, ``table``, ``index``, ``durable`` and
        ``background_checkpoints``."""
        return {
            **super().info(),
            "location": self.location,
            "table": self.table,
            "index": self.index,
            "durable": self.durable,
            "background_checkpoints": self.background_checkpoints,
        }

    # -- connections ---------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Open the database and create what is missing of the tables and indexes.

        An existing database is opened without its write lock, so connecting never waits
        for another connection's write transaction; the tidying up (orphaned chunks, old
        unreferenced value files) is skipped while one runs. With ``create=False`` a
        database file that does not exist is not created: FileNotFoundError instead
        (what a reader wants, so a mistyped path is not an empty store).
        """
        if not self.create and self.location != MEMORY and not os.path.exists(self.location):
            raise FileNotFoundError(
                errno.ENOENT, "no such SQLite database (create=false)", self.location
            )
        connections = self._connections
        connections.renew()
        with translate(f"opening {self.location!r}"):
            conn = connections.conn()
            connections.attach()
            if self._files is not None:
                self._files.ensure()
            self._indexes.load(conn)
            if self._indexes.missing(conn):
                with write_transaction(conn):
                    for statement in self._schema.create:
                        conn.execute(statement)
                    self._indexes.load(conn)
                    self._indexes.ensure(conn, self.index_columns, force=True)
            # Tidying up is skipped while another writer is busy: a transaction that has
            # written a value file but not committed its row must not see it swept.
            if begin_without_waiting(conn, self.timeout):
                with write_transaction(conn, begun=True):
                    conn.execute(self._schema.orphan_chunks)
                    if self._files is not None:
                        self._files.sweep(row[0] for row in conn.execute(self._schema.file_refs))
        super().connect(credentials)

    def disconnect(self) -> None:
        """Close every connection this store opened (in any thread)."""
        super().disconnect()
        self._connections.close()

    def _conn(self) -> sqlite3.Connection:
        """The connection a call of this thread would use now (for tests and tools)."""
        return self._connections.conn()

    def checkpoint(self) -> tuple[int, int]:
        """Copy the committed pages of the write-ahead log into the database file now.

        SQLite does it in the commit that takes the log past 1,000 pages, and a
        background thread right after a larger transaction (after any commit with
        ``background_checkpoints``); call it to know it is done
        (before copying the database file, or to time a write including its
        checkpoint). Returns ``(pages in the log, pages copied)``: fewer are copied
        while a reader still uses an older snapshot. ``(0, 0)`` for an in-memory
        database, which has no log. :class:`~storekeeper.errors.TransactionError`
        inside a transaction, whose pages are not committed yet.
        """
        if self._in_transaction():
            raise TransactionError(
                "checkpoint() copies committed pages: call it outside a transaction"
            )
        self._require_connection()
        return self._connections.checkpoint()

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """The value of *key*: in memory when small, a lazily streamed value when large.

        A large value keeps the version read here whatever is written afterwards: it
        holds its value file open, or its chunk set (see ``_sqlite_files``).
        """
        check_key(key)
        self._require_connection()
        return self._reads.value(key)

    def exists(self, key: str) -> bool:
        """Whether *key* exists (one indexed lookup)."""
        check_key(key)
        self._require_connection()
        return self._reads.exists(key)

    def head(self, key: str) -> Head | None:
        """*key*'s version, size and metadata, or ``None`` if missing (one indexed
        lookup; the data is not read)."""
        check_key(key)
        self._require_connection()
        return self._reads.head(key)

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to *select* when given."""
        check_key(key)
        self._require_connection()
        return select_metadata(self._reads.metadata(key), select)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data; one query for values stored inline."""
        check_read(key, buffer_size)
        self._require_connection()
        data = self._reads.inline_data(key)
        if data is not None:
            # No progress events for a value read in one buffer (AbstractStore.to_bytes),
            # so only a larger one needs the listener check.
            if _fits(data, buffer_size) or not self._progress_observed():
                return data
            return super().to_bytes(key, buffer_size)
        if self._progress_observed():
            return super().to_bytes(key, buffer_size)
        return read_stream(self.get(key).data, buffer_size)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs; terms are evaluated in SQL where possible."""
        terms = query_terms(where, kwargs)
        names = check_select(select)
        self._require_connection()
        return self._reads.query(terms, names)

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys; without metadata decoding when SQL decides every term (on
        rows holding a string with NUL, which SQL reads cut short, Python decides)."""
        terms = query_terms(where, kwargs)
        self._require_connection()
        keys = self._reads.query_keys(terms)
        return super().query_keys(terms) if keys is None else keys

    def glob(self, pattern: str) -> list[str]:
        """Keys matching *pattern*; its literal prefix narrows the scan through the index."""
        check_pattern(pattern)
        self._require_connection()
        return self._reads.glob(pattern)

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* (see :meth:`AbstractReadOnlyStore.list_keys`): a scan of
        the prefix's range of the key index, read in pages as the listing is consumed;
        a folder's keys are jumped over, not read."""
        check_listing(prefix, delimiter)
        self._require_connection()
        end = prefix_end(prefix)
        return walk(lambda low: self._reads.key_range(low, end), prefix, delimiter)

    def list_info(
        self, prefix: str = "", *, metadata: bool = False
    ) -> Iterator[tuple[str, KeyInfo]]:
        """``(key, info)`` under *prefix* (see :meth:`AbstractReadOnlyStore.list_info`):
        the same paged scan as :meth:`list_keys`, reading the rows' size, times and
        version columns (and metadata when asked) instead of one lookup per key."""
        check_list_info(prefix, metadata)
        self._require_connection()
        return self._reads.info_range(prefix, prefix_end(prefix), metadata=metadata)

    # -- writes --------------------------------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str:
        """Replace *key*'s data and metadata (see :meth:`AbstractStore.set`)."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            data = self._quick_data(source, metadata)
            if data is not None:
                version = self._writes.quick_set(key, data, metadata_json, if_version, if_exists)
                if version is not None:
                    return version
            return self._store(key, source, metadata_json, buffer_size, (if_version, if_exists))
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]

    def _quick_data(self, source: object, metadata: Any) -> bytes | None:
        """*source*, if a ``set`` of it may be one autocommit statement
        (:meth:`Writes.quick_set`): a small ``bytes`` value, outside a transaction,
        nobody listening, no index to create. The full path's ``BEGIN``, lookup of the
        old row and ``COMMIT`` then only served the precondition, the event kind and
        the cleanup of a value stored outside its row, which the statement handles or
        leaves to the full path."""
        if type(source) is not bytes or len(source) > self.inline_limit:
            return None
        if self._in_transaction() or self._observed(StoreSetEvent):
            return None
        if metadata and self._indexes.may_create(metadata):
            return None
        return source

    def multiset(
        self,
        keys: Iterable[str],
        values: Iterable[Value | tuple[Any, Any]],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        """Set many keys in one transaction; small ``bytes`` values go in one batch."""
        check_buffer_size(buffer_size)
        key_list, value_list = split_pairs(keys, values)
        batch = self._writes.inline_batch(key_list, value_list)
        if batch is None:
            super().multiset(key_list, value_list, buffer_size)
            return
        observed = self._observed(StoreSetEvent)
        with self.transaction(f"Setting {len(batch.keys)} keys"), self._connections.using() as conn:
            self._writes.write_batch(conn, batch)
        if not observed:
            return
        texts = batch.metadata_texts or ["{}"] * len(batch.keys)
        for key, metadata_json in zip(batch.keys, texts, strict=True):
            self._emit_change(StoreSetEvent, key, metadata_json)

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping its metadata (``{}`` for a new key)."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        self._store(key, data, None, buffer_size, (if_version, if_exists))

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data (empty for a new key)."""
        check_write(key, if_version, if_exists)
        metadata_json = encode_metadata(metadata)
        self._require_connection()
        nested = self._in_transaction()
        self._writes.set_metadata(
            key, metadata, metadata_json, (if_version, if_exists), nested=nested
        )
        self._emit_change(StoreSetEvent, key, metadata_json)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        encode_metadata(metadata)  # reject bad input before touching anything
        self._require_connection()
        nested = self._in_transaction()
        merged = self._writes.update_metadata(key, metadata, if_version, nested=nested)
        self._emit(StoreUpdateEvent(self, key=key, metadata=merged))

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key* (and its chunks); :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        self._require_connection()
        quick = not (self._in_transaction() or self._observed(StoreDeleteEvent))
        if quick and self._writes.quick_delete(key, if_version):
            return
        metadata_json = self._writes.delete(key, if_version, nested=self._in_transaction())
        self._emit_change(StoreDeleteEvent, key, metadata_json)

    def _store(
        self,
        key: str,
        source: object,
        metadata_json: str | None,
        buffer_size: int,
        preconditions: tuple[str | None, bool | None],
    ) -> str:
        """Write *source* as *key*'s data (``metadata_json=None`` keeps the metadata);
        return the new version."""
        writes, nested = self._writes, self._in_transaction()
        data = small_bytes(source, self.inline_limit)
        if data is not None:
            return self._written(
                key, writes.write(key, data, None, metadata_json, preconditions, nested=nested)
            )
        chunks = iter_source(source, min(check_buffer_size(buffer_size), self.chunk_size))
        size, metadata = source_size(source), self._progress_metadata(metadata_json)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            head, stream = take(_report(chunks, progress), self.inline_limit + 1)
            if len(head) <= self.inline_limit:
                written = writes.write(key, head, None, metadata_json, preconditions, nested=nested)
            elif self._files is None:
                written = writes.write(
                    key, None, stream, metadata_json, preconditions, nested=nested
                )
            else:
                rest: Iterator[bytes] | FileTail = stream
                if copyable(source):  # the file's rest is copied inside the kernel
                    rest = FileTail(head, source, lambda done: progress.step(step=done))
                written = writes.write_file(key, rest, metadata_json, preconditions, nested=nested)
        return self._written(key, written)

    def _written(self, key: str, written: tuple[str, Metadata]) -> str:
        """The version of a write that succeeded, after its event."""
        version, metadata = written
        if self._observed(StoreSetEvent):
            self._emit(StoreSetEvent(self, key=key, metadata=metadata))
        return version

    # -- transactions --------------------------------------------------------------------
    def _begin_transaction(self) -> None:
        self._require_connection()
        self._transactions.begin()

    def _commit_transaction(self) -> None:
        self._transactions.commit()

    def _rollback_transaction(self) -> None:
        self._transactions.rollback()

    def _savepoint(self) -> object:
        return self._transactions.savepoint()

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, Savepoint)
        self._transactions.rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        assert isinstance(token, Savepoint)
        self._transactions.release(token)


def _fits(data: bytes, buffer_size: object) -> bool:
    """Whether *data* is read in one buffer of a valid *buffer_size*."""
    return type(buffer_size) is int and buffer_size > 0 and len(data) <= buffer_size


def _report(chunks: Iterator[bytes], progress: Any) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        progress.step(step=total)
        yield chunk
