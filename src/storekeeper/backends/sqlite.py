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
- **Deleted data**: freed pages are zeroed only where that costs no extra writes
  (``PRAGMA secure_delete=FAST``), unlike builds that zero every freed page and so
  write a large value again to delete it; ``secure_delete=True`` zeroes everything.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from types import TracebackType
from typing import IO, Any, cast
from urllib.parse import SplitResult

from storekeeper.backends._sqlite_checkpoint import Checkpointer
from storekeeper.backends._sqlite_files import (
    ChunkHolds,
    DatabaseFile,
    ValueFiles,
    file_value,
    is_file_ref,
)
from storekeeper.backends._sqlite_listing import key_range
from storekeeper.backends._sqlite_schema import (
    Schema,
    begin_without_waiting,
    compile_query,
    encodable,
    has_string_terms,
    json_path,
    prefix_range,
    write_transaction,
)
from storekeeper.errors import (
    BackendError,
    ConflictError,
    InvalidKeyError,
    InvalidURLError,
    LockTimeoutError,
    StorekeeperError,
    TransactionError,
)
from storekeeper.events import BaseEventManager
from storekeeper.store import urls
from storekeeper.store._validate import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    check_buffer_size,
    check_key,
    check_pattern,
    check_read,
    check_select,
    check_types,
    check_write,
    decode_metadata,
    encode_metadata,
    iter_source,
    pick_metadata,
    select_metadata,
)
from storekeeper.store.abstract import (
    AbstractStore,
    check_precondition,
    exists_conflict,
    missing,
    new_version,
    split_pairs,
    unpack_value,
    version_numbers,
)
from storekeeper.store.capabilities import StoreCapabilities
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.listing import check_listing, prefix_end, walk
from storekeeper.store.owners import Claim, OwnedVar, busy, may_wait
from storekeeper.store.query import matches, query_terms
from storekeeper.store.utils import BufferIteratorIO, read_stream, source_size
from storekeeper.store.value import BytesValue, StreamValue, Value

__all__ = ["SqliteStore"]

_MEMORY = ":memory:"
_INDEX_MODES = ("dynamic", "static", None)
_MMAP_SIZE = 32 * 1024 * 1024
# Reads of a row whose value file was replaced before it could be opened.
_READ_RETRIES = 16
_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL})
# Stay well under SQLite's limit on bound parameters per statement.
_IN_BATCH = 500
_URL_FORMS = "sqlite:///relative.db, sqlite:////absolute.db, or sqlite:// in memory"
_URL_OPTIONS = {
    "table": urls.text,
    "index": urls.choice(*_INDEX_MODES),
    "index_columns": urls.names,
    "durable": urls.flag,
    "background_checkpoints": urls.flag,
    "secure_delete": urls.flag,
    "inline_limit": urls.count,
    "chunk_size": urls.count,
    "max_indexes": urls.count,
    "timeout": urls.seconds,
}


def _url_location(parts: SplitResult) -> str:
    """The database an ``sqlite:`` URL names: an absolute path or ``:memory:``."""
    if _MEMORY in parts.netloc:
        raise InvalidURLError(f"for an in-memory database write sqlite:// ({_URL_FORMS})")
    if parts.netloc:
        raise InvalidURLError(
            f"sqlite URLs have no host part (got {parts.netloc!r}): write {_URL_FORMS}"
        )
    if not parts.path:
        return _MEMORY
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
    return _MEMORY if path == _MEMORY else os.path.abspath(path)


class SqliteStore(AbstractStore):
    """A store in one table of an SQLite database (see the module documentation).

    The seed's signature is kept: ``SqliteStore(location=':memory:', table='store',
    index='dynamic', index_columns=None)``; the rest is keyword-only.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] = _MEMORY,
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
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__(event_manager)
        check_types(bool, durable=durable, secure_delete=secure_delete)
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
        self._synchronous = "FULL" if durable else "NORMAL"
        self.timeout = timeout
        self.inline_limit = inline_limit
        self.chunk_size = chunk_size
        self.max_indexes = max_indexes
        self.secure_delete = secure_delete
        self.background_checkpoints = (
            not durable if background_checkpoints is None else background_checkpoints
        ) and self.location != _MEMORY
        self._schema = Schema(table)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._generation = 0
        self._indexed: set[str] = set()
        # Names dealt with: indexed, or with no safe JSON path (never indexed).
        self._handled: set[str] = set()
        self._index_names: set[str] = set()
        self._shared: sqlite3.Connection | None = None
        # An in-memory database exists only inside its one connection, so every thread
        # shares that connection and takes turns through this lock.
        self._serial = threading.RLock() if self.location == _MEMORY else None
        self._savepoints = itertools.count()
        # The open transaction's owner, set once it holds the write lock: a call of
        # another task of its thread that would wait for it is refused instead.
        self._holder: Claim | None = None
        # File databases: a transaction's own connection (the thread's serves plain
        # calls) and the idle ones, as (connection, generation, pid).
        self._leased: OwnedVar[_Lease] = OwnedVar(f"sqlite-{id(self):x}-transaction")
        self._idle: list[_Lease] = []
        memory = self.location == _MEMORY
        self._files = None if memory else ValueFiles(self.location, table, durable)
        self._database = None if memory else DatabaseFile(self.location)
        self._holds = ChunkHolds()
        self._checkpointer = (
            None
            if self.location == _MEMORY
            else Checkpointer(
                self.location,
                self._synchronous,
                timeout,
                background=self.background_checkpoints,
            )
        )
        if self._checkpointer is not None:
            # A store dropped without disconnect() must not leave its thread waiting.
            weakref.finalize(self, self._checkpointer.stop)
        self._file_log: OwnedVar[_FileLog] = OwnedVar(f"sqlite-{id(self):x}-files")

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> SqliteStore:
        """A store for an ``sqlite:`` URL, spelled as SQLAlchemy spells them.

        ``sqlite:///relative.db`` (relative to the working directory when opened),
        ``sqlite:////absolute/path.db`` and ``sqlite://`` (a private in-memory database;
        ``sqlite:///:memory:`` too). The path is percent-decoded. Options: ``table``,
        ``index`` (``dynamic``/``static``/``none``), ``index_columns`` (comma-separated),
        ``durable``, ``background_checkpoints`` and ``secure_delete`` (true/false),
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
        if self.location == _MEMORY:
            return StoreCapabilities.everything().but(cross_process=False, persistent=False)
        return StoreCapabilities.everything()

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
        unreferenced value files) is skipped while one runs.
        """
        with self._connections_lock:
            self._generation += 1
        with _translate(f"opening {self.location!r}"):
            conn = self._conn()
            if self._database is not None:
                self._database.attach()
            if self._files is not None:
                self._files.ensure()
            self._load_indexes(conn)
            static = self.index_columns if self.index is not None else []
            if self._schema.missing(conn, self._index_names, static, self.max_indexes):
                with write_transaction(conn):
                    for statement in self._schema.create:
                        conn.execute(statement)
                    self._load_indexes(conn)
                    self._ensure_indexes(conn, self.index_columns, force=True)
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
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self._database is not None:
            self._database.close()
        with self._connections_lock:
            connections, self._connections = self._connections, []
            self._generation += 1
            self._shared = None
            self._idle = []
        for conn in connections:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        if self._serial is not None:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        lease = self._leased.get()
        if lease is not None:
            return lease.conn
        local = self._local
        if getattr(local, "generation", None) == self._generation and local.pid == os.getpid():
            conn: sqlite3.Connection = local.conn
            return conn
        conn = self._open()
        local.conn, local.pid, local.generation = conn, os.getpid(), self._generation
        return conn

    def _open(self) -> sqlite3.Connection:
        if self._database is not None:
            # Connecting to a path whose file was deleted would create a new, empty database.
            self._database.check()
        conn = sqlite3.connect(
            self.location,
            timeout=self.timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        if self.location != _MEMORY:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        # Reads through a memory map skip a read() system call per page: 1.3-1.6x faster
        # gets of 64 KiB values here.
        conn.execute(f"PRAGMA mmap_size={_MMAP_SIZE}")
        # Some builds (Debian's among them) zero every freed page, which makes deleting
        # or replacing a large value write it again; FAST zeroes only what is written
        # anyway. secure_delete=True asks for the zeroing.
        conn.execute(f"PRAGMA secure_delete={'ON' if self.secure_delete else 'FAST'}")
        if self.background_checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _lease(self) -> _Lease:
        """An idle connection of this generation and process for a transaction, or a new one."""
        with self._connections_lock:
            while self._idle:
                lease = self._idle.pop()
                if lease.generation == self._generation and lease.pid == os.getpid():
                    return lease
            generation = self._generation
        return _Lease(self._open(), generation, os.getpid())

    def _give_back(self, lease: _Lease) -> None:
        with self._connections_lock:
            if lease.generation == self._generation and lease.pid == os.getpid():
                self._idle.append(lease)

    def _check_turn(self) -> None:
        """Refuse a call that would wait for another task's transaction in this thread."""
        holder = self._holder
        if holder is not None and holder.blocks_here():
            raise holder.refusal(self)

    def _using(self) -> _Using:
        """Context: the thread's connection, with the in-memory lock held if there is one."""
        self._require_connection()
        return _Using(self)

    def _writing(self) -> _Writing:
        """Context: a write, in its own ``BEGIN IMMEDIATE`` transaction or in a savepoint
        of the current one; committed (released) on success, rolled back on error."""
        self._require_connection()
        return _Writing(self)

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
        if self._checkpointer is None:
            self._require_connection()
            return 0, 0
        with self._using() as conn, _translate(f"checkpointing {self.location!r}"):
            return self._checkpointer.checkpoint_now(conn)

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """The value of *key*: in memory when small, a lazily streamed value when large.

        A large value keeps the version read here whatever is written afterwards: it
        holds its value file open, or its chunk set (see ``_sqlite_files``).
        """
        check_key(key)
        for _ in range(_READ_RETRIES):
            with self._using() as conn:
                row = conn.execute(self._schema.select_row, (key,)).fetchone()
                if row is None:
                    raise missing(key)
                blob = row[5]
                if blob is not None and not is_file_ref(blob):
                    return self._chunked_value(key, row, self._holds.hold(blob))
            if blob is None:
                metadata_json, created, modified, version, _, _, data = row
                return BytesValue(
                    data,
                    created=created,
                    modified=modified,
                    version=version,
                    metadata_json=metadata_json,
                )
            value = self._file_value(row)
            if value is not None:
                return value
        raise ConflictError(f"key {key!r} changed {_READ_RETRIES} times while being read")

    def _file_value(self, row: tuple[Any, ...]) -> Value | None:
        """The value of a row naming a value file, or ``None`` if the file is gone (the
        row was replaced since it was read)."""
        metadata_json, created, modified, version, size, blob, _ = row
        assert self._files is not None  # a row names a file only in a file database
        try:
            shared = self._files.open_shared(blob)
        except FileNotFoundError:
            return None
        return file_value(shared, size, metadata_json, created, modified, version)

    def _chunked_value(self, key: str, row: tuple[Any, ...], hold: object) -> Value:
        """The value of a row naming a chunk set, which *hold* keeps from being deleted."""
        metadata_json, created, modified, version, size, blob, _ = row
        return StreamValue(
            lambda: self._chunk_stream(key, blob, size, 0, size, hold),
            size=size,
            created=created,
            modified=modified,
            version=version,
            metadata_json=metadata_json,
            range_opener=lambda lo, hi: self._chunk_stream(key, blob, size, lo, hi, hold),
        )

    def exists(self, key: str) -> bool:
        """Whether *key* exists (one indexed lookup)."""
        check_key(key)
        with self._using() as conn:
            return conn.execute(self._schema.select_exists, (key,)).fetchone() is not None

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to *select* when given."""
        check_key(key)
        with self._using() as conn:
            row = conn.execute(self._schema.select_metadata, (key,)).fetchone()
        if row is None:
            raise missing(key)
        return select_metadata(decode_metadata(row[0]), select)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data; one query for values stored inline."""
        check_read(key, buffer_size)
        if self._progress_observed():
            return super().to_bytes(key, buffer_size)
        with self._using() as conn:
            row = conn.execute(self._schema.select_data, (key,)).fetchone()
        if row is None:
            raise missing(key)
        if row[0] is not None:
            data: bytes = row[0]
            return data
        return read_stream(self.get(key).data, buffer_size)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs; terms are evaluated in SQL where possible."""
        terms = query_terms(where, kwargs)
        clause, params, _ = compile_query(terms)
        names = check_select(select)
        with self._using() as conn:
            rows = conn.execute(self._schema.select_query(clause, with_metadata=True), params)
            result = []
            for key, text in rows:
                metadata = decode_metadata(text)
                if matches(metadata, terms):
                    result.append((key, pick_metadata(metadata, names)))
        return result

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys; without metadata decoding when SQL decides every term (on
        rows holding a string with NUL, which SQL reads cut short, Python decides)."""
        terms = query_terms(where, kwargs)
        clause, params, exact = compile_query(terms)
        if not exact:
            return super().query_keys(terms)
        if not has_string_terms(terms):
            with self._using() as conn:
                sql = self._schema.select_query(clause, with_metadata=False)
                return [key for (key,) in conn.execute(sql, params)]
        sql = self._schema.select_query(clause, with_metadata=False, metadata_if_nul=True)
        with self._using() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [key for key, text in rows if text is None or matches(decode_metadata(text), terms)]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching *pattern*; its literal prefix narrows the scan through the index."""
        check_pattern(pattern)
        where, params = prefix_range(_literal_prefix(pattern))
        with self._using() as conn:
            rows = conn.execute(self._schema.select_query(where, with_metadata=False), params)
            return [key for (key,) in rows if fnmatch.fnmatchcase(key, pattern)]

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* (see :meth:`AbstractReadOnlyStore.list_keys`): a scan of
        the prefix's range of the key index, read in pages as the listing is consumed;
        a folder's keys are jumped over, not read."""
        check_listing(prefix, delimiter)
        self._require_connection()
        end, table = prefix_end(prefix), self._schema.main
        return walk(lambda low: key_range(self._using, table, low, end), prefix, delimiter)

    def _chunk_stream(
        self, key: str, blob: str, size: int, start: int, end: int | None, hold: object
    ) -> IO[bytes]:
        stop = size if end is None else min(end, size)
        return cast(IO[bytes], BufferIteratorIO(self._chunks(key, blob, start, stop, hold)))

    def _chunks(self, key: str, blob: str, start: int, stop: int, hold: object) -> Iterator[bytes]:
        """Bytes ``[start, stop)`` of chunk set *blob*, kept alive by *hold* meanwhile."""
        position = start - start % self.chunk_size
        seq = start // self.chunk_size
        while position < stop:
            with self._using() as conn:
                row = conn.execute(self._schema.select_chunk, (blob, seq)).fetchone()
            if row is None:  # never while held: a damaged database
                raise BackendError(f"chunk {seq} of key {key!r} is missing")
            chunk: bytes = row[0]
            yield chunk[max(0, start - position) : stop - position]
            position += len(chunk)
            seq += 1

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
            quick = self._quick_set(key, source, metadata, metadata_json, if_version, if_exists)
            if quick is not None:
                return quick
            return self._store(key, source, metadata_json, buffer_size, if_version, if_exists)
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]

    def _quick_set(
        self,
        key: str,
        source: object,
        metadata: Any,
        metadata_json: str,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str | None:
        """The common write in one autocommit statement: its version, or ``None``
        (nothing written) when it needs the full path.

        A small ``bytes`` value, outside a transaction, nobody listening, no index to
        create: the full path's ``BEGIN``, lookup of the old row and ``COMMIT`` only
        served the precondition, the event kind and the cleanup of a value stored
        outside its row. The statement carries the precondition in its ``WHERE`` (or
        conflict clause) and changes no row whose value is stored outside it; when it
        changes nothing, the full path runs and tells a failed precondition (which it
        raises) from a value to clean up.
        """
        if type(source) is not bytes or len(source) > self.inline_limit:
            return None
        if self._in_transaction() or self._observed(StoreSetEvent):
            return None
        if self.index == "dynamic" and metadata and self._may_index(metadata):
            return None
        schema = self._schema
        version = version_numbers(1).start
        params: tuple[object, ...] = (key, metadata_json, time.time(), version, source)
        if if_version is not None:
            if if_exists is False:
                return None  # contradictory: the full path says which way it fails
            sql, params = schema.quick_replace_version, (*params, if_version)
        elif if_exists is None:
            sql = schema.quick_upsert
        else:
            sql = schema.quick_replace if if_exists else schema.quick_create
        if self._autocommit(sql, params):
            return str(version)
        if sql is schema.quick_create:
            # DO NOTHING changed nothing: the key exists, wherever its value is.
            raise exists_conflict(key)
        return None

    def multiset(
        self,
        keys: Iterable[str],
        values: Iterable[Value | tuple[Any, Any]],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        """Set many keys in one transaction; small ``bytes`` values go in one batch."""
        check_buffer_size(buffer_size)
        key_list, value_list = split_pairs(keys, values)
        batch = self._inline_batch(key_list, value_list)
        if batch is None:
            super().multiset(key_list, value_list, buffer_size)
            return
        batch_keys, metadata_texts, datas = batch
        observed = self._observed(StoreSetEvent)
        with self.transaction(f"Setting {len(batch_keys)} keys"), self._using() as conn:
            # The old rows matter only for their large values (to remove).
            previous = self._blobs(conn, batch_keys) if self._has_large_values(conn) else {}
            versions = version_numbers(len(batch_keys))
            sql = self._schema.insert_batch(time.time(), empty_metadata=metadata_texts is None)
            if metadata_texts is None:
                conn.executemany(sql, zip(batch_keys, versions, datas, strict=True))
            else:
                conn.executemany(sql, zip(batch_keys, metadata_texts, versions, datas, strict=True))
                self._index_batch(conn, metadata_texts)
            log = self._file_log.get()
            if log is not None:
                log.inline += sum(map(len, datas))
            for blob in previous.values():
                self._drop_chunks(conn, blob)
                self._files_replaced(None, blob)
        if not observed:
            return
        texts = ["{}"] * len(batch_keys) if metadata_texts is None else metadata_texts
        for key, metadata_json in zip(batch_keys, texts, strict=True):
            self._emit(StoreSetEvent(self, key=key, metadata=decode_metadata(metadata_json)))

    def _inline_batch(
        self, keys: list[str], values: list[Any]
    ) -> tuple[list[str], list[str] | None, list[bytes]] | None:
        """Keys, metadata texts (``None`` when every value's metadata is empty) and data
        of a batch, or ``None`` when a value is a stream or too large to be stored
        inline."""
        limit = self.inline_limit
        # The common batch, (bytes, metadata dict) pairs only, is split by C-level maps.
        if set(map(type, values)) == {tuple} and set(map(len, values)) == {2}:
            datas = list(map(itemgetter(0), values))
            metadatas = list(map(itemgetter(1), values))
            if (
                set(map(type, datas)) == {bytes}
                and set(map(type, metadatas)) == {dict}
                and max(map(len, datas)) <= limit
            ):
                if any(metadatas):
                    return keys, list(map(encode_metadata, metadatas)), datas
                return keys, None, datas
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
        return keys, metadata_texts, datas

    def _has_large_values(self, conn: sqlite3.Connection) -> bool:
        """Whether any committed value is stored outside its row (chunks or a file).

        Called inside a write transaction: no other writer can commit a row naming a
        value file meanwhile, and a committed row's file exists until the row is gone.
        """
        if conn.execute(f"SELECT 1 FROM {self._schema.chunks} LIMIT 1").fetchone():
            return True
        return self._files is not None and self._files.any()

    def _blobs(self, conn: sqlite3.Connection, keys: list[str]) -> dict[str, str | None]:
        """Existing keys among *keys*, with their chunk-set ids."""
        found: dict[str, str | None] = {}
        for start in range(0, len(keys), _IN_BATCH):
            batch = keys[start : start + _IN_BATCH]
            sql = self._schema.select_blobs + "(" + ", ".join("?" * len(batch)) + ")"
            found.update(conn.execute(sql, batch).fetchall())
        return found

    def _index_batch(self, conn: sqlite3.Connection, metadata_texts: list[str]) -> None:
        if self.index != "dynamic":
            return
        names: set[str] = set()
        # Batches often repeat the same metadata: each distinct text is decoded once.
        for text in set(metadata_texts):
            if text != "{}":
                names.update(decode_metadata(text))
        self._ensure_indexes(conn, names)

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
        self._store(key, data, None, buffer_size, if_version, if_exists)

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
        with self._writing() as conn:
            old = self._state(conn, key)
            check_precondition(key, None if old is None else old[0], if_version, if_exists)
            if old is None:
                self._upsert(conn, key, b"", metadata_json, None)
            else:
                self._replace_metadata(conn, key, metadata_json)
            self._ensure_indexes(conn, metadata)
        self._emit_change(StoreSetEvent, key, metadata_json)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        encode_metadata(metadata)  # reject bad input before touching anything
        with self._writing() as conn:
            row = conn.execute(self._schema.select_for_update, (key,)).fetchone()
            if row is None:
                raise missing(key)
            check_precondition(key, row[1], if_version, True)
            merged = decode_metadata(row[0])
            merged.update(metadata)
            merged_json = encode_metadata(merged)
            self._replace_metadata(conn, key, merged_json)
            self._ensure_indexes(conn, metadata)
        self._emit(StoreUpdateEvent(self, key=key, metadata=merged))

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key* (and its chunks); :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        if self._quick_delete(key, if_version):
            return
        with self._writing() as conn:
            row = conn.execute(self._schema.select_for_update, (key,)).fetchone()
            if row is None:
                raise missing(key)
            check_precondition(key, row[1], if_version, None)
            conn.execute(self._schema.delete, (key,))
            self._drop_chunks(conn, row[2])
        self._files_replaced(None, row[2])
        self._emit_change(StoreDeleteEvent, key, row[0])

    def _quick_delete(self, key: str, if_version: str | None) -> bool:
        """:meth:`delete` of a key whose value is in its row, in one autocommit statement
        when nobody listens and no transaction is open; False (nothing deleted) when the
        full path must run: a missing key, another version, or a value stored outside
        its row."""
        self._require_connection()
        if self._in_transaction() or self._observed(StoreDeleteEvent):
            return False
        if if_version is None:
            return self._autocommit(self._schema.quick_delete, (key,))
        return self._autocommit(self._schema.quick_delete_version, (key, if_version))

    def _autocommit(self, sql: str, params: tuple[object, ...]) -> bool:
        """Run one write statement as its own transaction; whether it changed a row."""
        self._check_turn()
        with self._using() as conn:
            if self._database is not None:
                self._database.check()
            if conn.execute(sql, params).rowcount == 0:
                return False
            if self.background_checkpoints:
                self._after_commit(conn)
        return True

    def _store(
        self,
        key: str,
        source: object,
        metadata_json: str | None,
        buffer_size: int,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """Write *source* as *key*'s data (``metadata_json=None`` keeps the metadata);
        return the new version."""
        data = _small_bytes(source, self.inline_limit)
        if data is not None:
            return self._write(key, data, None, metadata_json, if_version, if_exists)
        chunks = iter_source(source, min(check_buffer_size(buffer_size), self.chunk_size))
        size, metadata = source_size(source), self._progress_metadata(metadata_json)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            counted = _report(chunks, progress)
            head = _take(counted, self.inline_limit + 1)
            if len(head) <= self.inline_limit:
                return self._write(key, head, None, metadata_json, if_version, if_exists)
            if self._files is None:
                stream = itertools.chain([head], counted)
                return self._write(key, None, stream, metadata_json, if_version, if_exists)
            return self._write_file(
                key, itertools.chain([head], counted), metadata_json, if_version, if_exists
            )

    def _write_file(
        self,
        key: str,
        stream: Iterator[bytes],
        metadata_json: str | None,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """Write a large value to its own file first, then the row naming it."""
        assert self._files is not None
        # Outside the write transaction: other writers are not held up by the upload.
        stored = self._files.write(stream)
        try:
            return self._write(key, None, None, metadata_json, if_version, if_exists, stored=stored)
        except BaseException:
            self._files.remove([stored[0]])
            raise

    def _write(
        self,
        key: str,
        data: bytes | None,
        stream: Iterator[bytes] | None,
        metadata_json: str | None,
        if_version: str | None,
        if_exists: bool | None,
        *,
        stored: tuple[str, int] | None = None,
    ) -> str:
        """One key's write transaction: inline *data*, chunked *stream*, or the value
        file already *stored* (its reference and size); returns the new version."""
        with self._writing() as conn:
            old = self._state(conn, key)
            check_precondition(key, None if old is None else old[0], if_version, if_exists)
            if metadata_json is None:
                metadata_json = self._current_metadata(conn, key) if old else "{}"
            version = self._upsert(conn, key, data, metadata_json, stream, stored)
            obsolete = None if old is None else old[2]
            self._drop_chunks(conn, obsolete)
            metadata = decode_metadata(metadata_json)
            if self.index == "dynamic":
                self._ensure_indexes(conn, metadata)
        self._files_replaced(None if stored is None else stored[0], obsolete)
        if self._observed(StoreSetEvent):
            self._emit(StoreSetEvent(self, key=key, metadata=metadata))
        return str(version)

    def _state(self, conn: sqlite3.Connection, key: str) -> tuple[str, float, str | None] | None:
        """``(version, created, blob id or None)`` of *key*, or ``None`` when missing."""
        row: tuple[str, float, str | None] | None = conn.execute(
            self._schema.select_state, (key,)
        ).fetchone()
        return row

    def _current_metadata(self, conn: sqlite3.Connection, key: str) -> str:
        text: str = conn.execute(self._schema.select_metadata, (key,)).fetchone()[0]
        return text

    def _upsert(
        self,
        conn: sqlite3.Connection,
        key: str,
        data: bytes | None,
        metadata_json: str,
        stream: Iterator[bytes] | None,
        stored: tuple[str, int] | None = None,
    ) -> int:
        """Insert or replace *key*'s row; returns its new version."""
        blob: str | None
        if stored is not None:
            blob, size = stored
        else:
            blob = None if data is not None else new_version()
            size = len(data) if data is not None else self._insert_chunks(conn, blob, stream)
            log = self._file_log.get()
            if log is not None:
                log.inline += size
        now = time.time()
        version = version_numbers(1).start
        conn.execute(self._schema.upsert, (key, metadata_json, now, now, version, size, data, blob))
        return version

    def _drop_chunks(self, conn: sqlite3.Connection, blob: str | None) -> None:
        """Delete the chunks of a replaced or deleted value that *blob* names, if any,
        unless a value still reads them (then they go at a later write; a value file is
        removed once the transaction commits: :meth:`_files_replaced`)."""
        for released in self._holds.released():
            conn.execute(self._schema.delete_unreferenced_chunks, (released,))
        if blob is not None and not is_file_ref(blob) and not self._holds.keep(blob):
            conn.execute(self._schema.delete_chunks, (blob,))

    def _insert_chunks(
        self, conn: sqlite3.Connection, blob: str | None, stream: Iterator[bytes] | None
    ) -> int:
        assert stream is not None  # a value without inline data always comes with a stream
        total = 0
        for seq, chunk in enumerate(_fixed_chunks(stream, self.chunk_size)):
            conn.execute(self._schema.insert_chunk, (blob, seq, chunk))
            total += len(chunk)
        return total

    def _replace_metadata(self, conn: sqlite3.Connection, key: str, metadata_json: str) -> None:
        version = version_numbers(1).start
        conn.execute(self._schema.update_metadata, (metadata_json, time.time(), version, key))

    # -- indexes -------------------------------------------------------------------------
    def _load_indexes(self, conn: sqlite3.Connection) -> None:
        self._index_names = {
            row[0] for row in conn.execute(self._schema.list_indexes, (self.table,))
        }
        self._indexed = set()
        self._handled = set()

    def _may_index(self, names: Iterable[str]) -> bool:
        """Whether a write of metadata *names* might create an index (dynamic mode)."""
        return len(self._indexed) < self.max_indexes and not self._handled.issuperset(names)

    def _ensure_indexes(
        self, conn: sqlite3.Connection, names: Iterable[str], *, force: bool = False
    ) -> None:
        """Create missing expression indexes for metadata *names* (dynamic mode or *force*)."""
        if self.index != "dynamic" and not force:
            return
        for name in names:
            if name in self._handled or len(self._indexed) >= self.max_indexes:
                continue
            path = json_path(name)
            if path is None:
                self._handled.add(name)
                continue
            if self._schema.index_name(name) not in self._index_names:
                conn.execute(self._schema.create_index(name, path))
                self._index_names.add(self._schema.index_name(name))
            self._indexed.add(name)
            self._handled.add(name)

    # -- transactions --------------------------------------------------------------------
    def _files_replaced(self, created: str | None, obsolete: str | None) -> None:
        """A write that created and/or made obsolete a value file has succeeded.

        Outside a transaction it is committed: the obsolete file goes now. Inside one,
        both wait for the outcome (see the transaction hooks below).
        """
        if self._files is None or (created is None and obsolete is None):
            return
        log = self._file_log.get()
        if log is None:
            self._files.remove([obsolete])
            return
        if created is not None:
            log.created.append(created)
        if is_file_ref(obsolete):
            assert obsolete is not None
            log.obsolete.append(obsolete)

    def _settle_files(self, committed: bool) -> None:
        log = self._file_log.get()
        self._file_log.set(None)
        if log is not None and self._files is not None:
            self._files.remove(log.obsolete if committed else log.created)

    def _begin_transaction(self) -> None:
        self._require_connection()
        self._check_turn()
        wait = may_wait()  # false: a transaction(wait=False) raises busy instead of waiting
        if self._serial is not None and not self._serial.acquire(blocking=wait):
            raise busy(self)
        lease = None
        try:
            self._check_turn()
            with _translate("beginning a transaction"):
                if self._serial is None:
                    lease = self._lease()
                    self._leased.set(lease)
                self._begin_immediate(wait)
        except BaseException:
            self._end_transaction()
            raise
        # Only once the write lock is held: this clears it only before letting it go.
        self._holder = Claim.take()
        self._file_log.set(_FileLog())

    def _begin_immediate(self, wait: bool) -> None:
        """``BEGIN IMMEDIATE`` on the transaction's connection; without *wait*, ``busy``
        at once if another connection holds the write lock."""
        if wait:
            self._conn().execute("BEGIN IMMEDIATE")
        elif not begin_without_waiting(self._conn(), self.timeout):
            raise busy(self)

    def _end_transaction(self) -> None:
        """Give back what the transaction held: its connection, the in-memory lock."""
        lease = self._leased.get()
        if lease is not None:
            self._leased.set(None)
            self._give_back(lease)
        if self._serial is not None:
            self._serial.release()

    def _commit_transaction(self) -> None:
        conn = self._conn()
        deferring = self._deferring(self._file_log.get())
        self._holder = None  # nothing else runs in this thread until the lock is let go
        try:
            with _translate("committing a transaction"):
                if deferring is None:
                    _commit(conn, self._database)
                else:
                    with deferring.deferred(conn):
                        _commit(conn, self._database)
        except BaseException:
            self._settle_files(committed=False)
            raise  # the rollback that follows ends the transaction
        try:
            if deferring is not None:
                deferring.poke(conn)
            elif self.background_checkpoints:
                self._after_commit(conn)
            self._settle_files(committed=True)
        finally:
            self._end_transaction()

    def _deferring(self, log: _FileLog | None) -> Checkpointer | None:
        """The checkpointer, if the committing transaction wrote enough that SQLite would
        copy its pages into the database inside the COMMIT; the thread does it instead."""
        checkpointer = self._checkpointer
        if checkpointer is None or log is None or not checkpointer.is_large(log.inline):
            return None
        return checkpointer

    def _after_commit(self, conn: sqlite3.Connection) -> None:
        assert self._checkpointer is not None  # background checkpoints need a file
        self._checkpointer.after_commit(conn)

    def _rollback_transaction(self) -> None:
        self._settle_files(committed=False)
        self._holder = None
        try:
            with _translate("rolling back"):
                conn = self._conn()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                # An index the transaction created is gone with it.
                self._load_indexes(conn)
        finally:
            self._end_transaction()

    def _savepoint(self) -> object:
        name = f"storekeeper_{next(self._savepoints)}"
        with _translate("creating a savepoint"):
            self._conn().execute(f"SAVEPOINT {name}")
        log = self._file_log.get()
        return _Savepoint(name, *((0, 0) if log is None else log.marks()))

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, _Savepoint)
        with _translate("rolling back to a savepoint"):
            conn = self._conn()
            conn.execute(f"ROLLBACK TO {token.name}")
            conn.execute(f"RELEASE {token.name}")
            self._load_indexes(conn)
        log = self._file_log.get()
        if log is not None and self._files is not None:
            self._files.remove(log.rewind(token.created, token.obsolete))

    def _release_savepoint(self, token: object) -> None:
        assert isinstance(token, _Savepoint)
        with _translate("releasing a savepoint"):
            self._conn().execute(f"RELEASE {token.name}")


@dataclass
class _FileLog:
    """What a transaction wrote that matters once it ends: the value files it created
    and made obsolete, in order, and the bytes of data it wrote into rows (``inline``;
    a large total has its pages copied into the database by the checkpointer)."""

    created: list[str] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)
    inline: int = 0

    def marks(self) -> tuple[int, int]:
        return len(self.created), len(self.obsolete)

    def rewind(self, created: int, obsolete: int) -> list[str]:
        """Forget what followed the marks; return the files created since (to remove)."""
        dropped = self.created[created:]
        del self.created[created:]
        del self.obsolete[obsolete:]
        return dropped


@dataclass(frozen=True)
class _Lease:
    """A connection reserved for transactions, with the generation and process it is for."""

    conn: sqlite3.Connection
    generation: int
    pid: int


@dataclass(frozen=True)
class _Savepoint:
    name: str
    created: int
    obsolete: int


class _Using:
    """Yields the calling thread's connection; translates sqlite3 errors."""

    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        serial = store._serial
        if serial is not None:
            serial.acquire()
            if store._holder is not None and store._holder.blocks_here():
                serial.release()
                raise store._holder.refusal(store)
        try:
            return store._conn()
        except sqlite3.Error as exc:
            if serial is not None:
                serial.release()
            raise _backend_error(exc, "connecting") from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        serial = self._store._serial
        if serial is not None:
            serial.release()
        if isinstance(exc, sqlite3.Error):
            raise _backend_error(exc, "running a statement") from exc
        if isinstance(exc, UnicodeEncodeError):
            raise _unencodable(exc) from exc


class _Writing(_Using):
    """:meth:`SqliteStore._writing` (a class, not a generator: it wraps every write)."""

    __slots__ = ("_conn", "_nested")

    def __enter__(self) -> sqlite3.Connection:
        self._nested = self._store._in_transaction()
        if not self._nested:
            self._store._check_turn()
        conn = super().__enter__()
        self._conn = conn
        try:
            conn.execute("SAVEPOINT storekeeper_write" if self._nested else "BEGIN IMMEDIATE")
        except BaseException as exc:
            super().__exit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        try:
            if exc is not None:
                if self._nested:
                    conn.execute("ROLLBACK TO storekeeper_write")
                    conn.execute("RELEASE storekeeper_write")
                else:
                    conn.execute("ROLLBACK")
            elif self._nested:
                conn.execute("RELEASE storekeeper_write")
            else:
                _commit(conn, self._store._database)
                if self._store.background_checkpoints:
                    self._store._after_commit(conn)
        except BaseException as failure:
            super().__exit__(type(failure), failure, failure.__traceback__)
            raise
        super().__exit__(exc_type, exc, tb)


@contextmanager
def _translate(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _backend_error(exc, action) from exc
    except UnicodeEncodeError as exc:
        raise _unencodable(exc) from exc


def _backend_error(exc: sqlite3.Error, action: str) -> StorekeeperError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in _LOCK_CODES:
        # Another connection kept the database locked past the timeout, or (PROTOCOL) a
        # process stopped while it updated the shared WAL index, which readers must then
        # wait for: a lock that was not granted, not a failed engine.
        return LockTimeoutError(
            f"SQLite could not get a lock while {action} ({exc}): another process holds "
            "the database locked, or stopped in the middle of a commit; try again"
        )
    return BackendError(f"SQLite failed while {action}: {exc}")


def _unencodable(exc: UnicodeEncodeError) -> StorekeeperError:
    """The error for text SQLite cannot take: a lone surrogate has no UTF-8 form.

    Keys and metadata are checked before they get here; this names what slipped past.
    """
    return InvalidKeyError(
        f"text holding a lone surrogate cannot be stored ({exc.reason}): {exc.object!r}"
    )


def _commit(conn: sqlite3.Connection, database: DatabaseFile | None) -> None:
    """COMMIT, unless the *database* file is gone; rolls back when that or the commit
    itself fails (disk full, I/O error)."""
    try:
        if database is not None:
            database.check()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _literal_prefix(pattern: str) -> str:
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern


def _small_bytes(source: object, limit: int) -> bytes | None:
    """*source* as ``bytes`` if it is a bytes-like value of at most *limit* bytes."""
    if type(source) is bytes:  # checked first: the isinstance below costs more
        return source if len(source) <= limit else None
    if isinstance(source, bytearray | memoryview) and len(source) <= limit:
        return bytes(source)
    return None


def _report(chunks: Iterator[bytes], progress: Any) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        progress.step(step=total)
        yield chunk


def _take(chunks: Iterator[bytes], limit: int) -> bytes:
    """Read from *chunks* until at least *limit* bytes (or the end); may read past it."""
    parts: list[bytes] = []
    total = 0
    while total < limit:
        chunk = next(chunks, None)
        if chunk is None:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def _fixed_chunks(stream: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut *stream* into chunks of exactly *size* bytes (the last may be shorter)."""
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
