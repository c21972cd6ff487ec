"""``PostgresStore``: a store in a PostgreSQL table, shared by every process and host.

``postgresql://user@host:5432/dbname?table=things`` (also ``postgres://``); see
:meth:`PostgresStore.from_url`. Needs ``pip install 'storekeeper[postgres]'`` (psycopg 3
and psycopg_pool).

- **Connections**: one pool per store object, safe to share between threads; a process
  forked from one that used the store opens a pool of its own on first use and never
  touches the parent's connections (see ``_pg_connections``). While the server is away
  calls raise :class:`~storekeeper.errors.BackendUnavailableError` (after up to
  ``timeout`` seconds waiting for a connection); pooled connections the server ended
  are dropped before use, so the first call after it is back works.
- **Transactions** are PostgreSQL transactions, one per owner (thread or asyncio task),
  all-or-nothing, nested with savepoints. Each call inside one runs under a savepoint
  of its own, so a call that fails (a key refused, a lock not granted) undoes only
  itself: the caller may catch the error and go on, and the commit applies the rest.
  Read-modify-write is exact: inside a transaction a read locks the key's row
  (``SELECT ... FOR UPDATE``; an advisory lock for a missing key), so a concurrent
  writer waits for the commit instead of being lost.
  This is pessimistic on purpose: a serializable transaction would have to be retried,
  and ``with store.transaction():`` blocks cannot be re-run by the store. Two
  transactions locking keys in opposite orders deadlock; PostgreSQL rolls one back with
  a :class:`~storekeeper.errors.TransactionError` (retry it).
- **Conditional writes** are single statements (``INSERT ... ON CONFLICT``, ``UPDATE ...
  WHERE version = ...``): of racing writers exactly one wins. A write outside a
  transaction is one statement and one round trip, change log and ``NOTIFY`` included.
- **Schema** (``_pg_schema``): a row per key with its metadata as exact JSON text and as
  ``jsonb`` for queries; values up to ``inline_limit`` bytes in the row, larger ones in
  ``chunk_size`` chunks, streamed in and out with bounded memory. A value read before
  its key is overwritten or deleted stays readable for ``reclaim_after`` seconds.
- **Queries** run in PostgreSQL on indexes (``_pg_query``); ``list_keys`` and ``glob``
  scan the key index by range.
- **Events across processes** (``_pg_events``): every change is logged and announced
  with ``NOTIFY``; every connected store object emits the changes other store objects
  (any process, any host) or plain SQL made, as the usual events with ``remote=True``,
  the writer's ``origin`` (``None`` for plain SQL) and ``version`` (the version the
  change gave the key; ``None`` for a delete), from its listener thread, after the
  commit. The events of the store object's own writes carry ``remote=False`` and the
  ``version`` too, as on every store with cross-process events.
- **Other programs writing with plain SQL** (another application sharing the table):
  a row is ``key``, ``version`` (``bigint``; any number the key has not had, e.g. a
  random positive 62-bit one), ``size`` (bytes of ``data``), ``created`` and
  ``modified`` (epoch seconds), ``metadata`` (the JSON text of an object), ``meta``
  (the same as ``jsonb``, or ``NULL``: queries then read ``metadata``), ``data``
  (``bytea``); leave ``blob`` ``NULL`` (chunked values are the store's) and ``action``
  to its default. Their committed changes reach every connected store as remote events
  with ``origin=None``. An ``UPDATE`` that changes a row but not its ``version`` gets a
  fresh version (so conditional writes and caches notice it); one that changes ``key``
  is announced as a delete of the old key then a set of the new one; ``TRUNCATE`` is
  announced as a delete of every key it removes. Triggers do all this, and skip the
  store's own connections.
- **Errors**: psycopg's errors are translated into storekeeper's (``_pg_errors``).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import SplitResult, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from storekeeper.backends._pg_connections import Connections
from storekeeper.backends._pg_errors import shown, translate
from storekeeper.backends._pg_events import (
    Change,
    Listener,
    Position,
    maintain,
    position,
    read_position,
)
from storekeeper.backends._pg_query import Indexes
from storekeeper.backends._pg_reads import Reads
from storekeeper.backends._pg_schema import Schema
from storekeeper.backends._pg_values import copy_chunks, rechunk, take
from storekeeper.backends._pg_writes import Row, Writes
from storekeeper.errors import InvalidURLError
from storekeeper.events import BaseEventManager
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    StoreCapabilities,
    check_batch_keys,
    check_buffer_size,
    check_key,
    check_pattern,
    check_read,
    check_select,
    check_types,
    check_write,
    decode_metadata,
    encodable,
    encode_metadata,
    iter_source,
    missing,
    query_terms,
    read_stream,
    select_metadata,
    source_size,
    split_pairs,
    unpack_value,
    version_numbers,
)
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.store.listing import check_listing, prefix_end, walk
from storekeeper.store.value import Value

__all__ = ["PostgresStore"]

_log = logging.getLogger(__name__)
#: Seconds to wait for a connection when an event listener connects (see _follow).
_POSITION_TIMEOUT = 2.0

_URL_OPTIONS = {
    "table": urls.text,
    "schema": urls.text,
    "inline_limit": urls.count,
    "chunk_size": urls.count,
    "pool_size": urls.count,
    "timeout": urls.seconds,
    "reclaim_after": urls.seconds,
    "change_log_size": urls.count,
    "max_indexes": urls.count,
    "listen": urls.flag,
}
#: Longest table name: the names derived from it must fit PostgreSQL's 63 bytes.
_MAX_TABLE_BYTES = 40


def _check_name(what: str, name: str) -> None:
    if not name or "\x00" in name or not encodable(name):
        raise ValueError(f"invalid {what} name {name!r}")
    if len(name.encode()) > _MAX_TABLE_BYTES:
        raise ValueError(f"the {what} name {name!r} is longer than {_MAX_TABLE_BYTES} bytes")


class PostgresStore(AbstractStore):
    """A store in one table of a PostgreSQL database (see the module documentation).

    ``PostgresStore(conninfo, table='store')``: *conninfo* is a libpq connection string
    or URL (``postgresql://user@host/db``); the rest is keyword-only. ``listen=False``
    runs no listener thread (no remote events; the log and the trash are then tidied
    only when a store connects). With ``listen=True`` the thread tidies them and
    listens for other writers' changes only while an event listener that could receive
    them is connected (an :class:`~storekeeper.events.EventManager` says when;
    a manager that cannot tell has it listen all the time): a listening session is
    woken by every write, so a store nobody listens to writes faster.

    **Key length**: a key is the table's primary key, and a PostgreSQL index entry holds
    at most 2,704 bytes (after compression). Keys of up to 2,600 UTF-8 bytes always
    work; a longer key works only if PostgreSQL compresses it enough, and is refused with
    :class:`~storekeeper.errors.InvalidKeyError` otherwise (nothing is written).
    """

    def __init__(
        self,
        conninfo: str,
        table: str = "store",
        *,
        schema: str | None = None,
        inline_limit: int = 1 << 20,
        chunk_size: int = 1 << 20,
        pool_size: int = 8,
        timeout: float = 30.0,
        reclaim_after: float = 600.0,
        change_log_size: int = 100_000,
        max_indexes: int = 32,
        listen: bool = True,
        maintenance_interval: float = 30.0,
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__(event_manager)
        check_types(str, conninfo=conninfo, table=table)
        check_types(int, inline_limit=inline_limit, chunk_size=chunk_size, pool_size=pool_size)
        check_types(int, change_log_size=change_log_size, max_indexes=max_indexes)
        check_types(float, timeout=timeout, reclaim_after=reclaim_after)
        check_types(float, maintenance_interval=maintenance_interval)
        check_types(bool, listen=listen)
        _check_name("table", table)
        if schema is not None:
            _check_name("schema", schema)
        if chunk_size <= 0 or inline_limit < 0 or pool_size < 2 or change_log_size < 1:
            raise ValueError(
                "chunk_size and change_log_size must be positive, inline_limit "
                "non-negative, pool_size at least 2"
            )
        try:
            self._params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ValueError(f"invalid PostgreSQL connection string: {exc}") from None
        self.conninfo = conninfo
        self.table = table
        self.schema = schema
        self.inline_limit = inline_limit
        self.chunk_size = chunk_size
        self.reclaim_after = reclaim_after
        self.change_log_size = change_log_size
        self.listen = listen
        self.maintenance_interval = maintenance_interval
        #: Names this store object's writes in the change log: remote events carry it.
        self.origin = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._schema = Schema(schema, table)
        self._connections = Connections(
            conninfo, self.origin, max_size=pool_size, timeout=timeout, what=repr(self)
        )
        self._indexes = Indexes(self._schema, max_indexes)
        self._reads = Reads(self._connections, self._schema, self._indexes, chunk_size)
        self._writes = Writes(self._schema, lambda: self.origin)
        self._listener: Listener | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        where = f"{self._params.get('host', 'local')}/{self._params.get('dbname', '')}"
        return f"<PostgresStore {where} table {self.table!r}>"

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> PostgresStore:
        """A store for a ``postgresql://user:password@host:port/dbname?...`` URL (or
        ``postgres://``), as libpq reads it. Options: ``table``, ``schema``,
        ``inline_limit``, ``chunk_size``, ``pool_size``, ``change_log_size`` and
        ``max_indexes`` (integers), ``timeout`` and ``reclaim_after`` (seconds),
        ``listen`` (true/false); keyword *options* win over them. Anything else is an
        :class:`~storekeeper.errors.InvalidURLError` naming the valid ones."""
        settings = urls.url_options(parts, _URL_OPTIONS)
        settings.update(options)
        if not urls.has_authority(parts):
            raise InvalidURLError(f"write {parts.scheme}://user@host:port/dbname")
        conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return urls.create(cls, parts, conninfo, **settings)

    @property
    def capabilities(self) -> StoreCapabilities:
        """Every capability: the server gives them all."""
        return StoreCapabilities.everything()

    def info(self) -> dict[str, Any]:
        """Store description with ``host``, ``port``, ``dbname``, ``user`` (never the
        password), ``schema``, ``table``, ``inline_limit``, ``chunk_size`` and
        ``reclaim_after``."""
        params = self._params
        return {
            **super().info(),
            **{name: params.get(name) for name in ("host", "port", "dbname", "user")},
            "schema": self.schema,
            "table": self.table,
            "inline_limit": self.inline_limit,
            "chunk_size": self.chunk_size,
            "reclaim_after": self.reclaim_after,
        }

    # -- connections ---------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Open the pool, create what is missing of the tables, indexes and trigger, and
        start the change listener (returning once it listens, or after ``timeout``).
        Connecting a connected store does nothing."""
        if self.is_connected() and self._pid == os.getpid():
            return  # connected already: one pool, one listener
        connections = self._connections
        connections.open()
        try:
            with translate(f"connecting {self!r}"), connections.pool().connection() as conn:
                self._create(conn)
                maintain(conn, self._schema, self.change_log_size, self.reclaim_after)
                start = position(conn, self._schema)
            self._indexes.load(self._reads.index_names())
        except BaseException:
            connections.close()
            raise
        self._pid = os.getpid()
        self._start_listener(start.newest, start)
        # Changes committed once connect() returns reach this store's listeners.
        self.wait_listening(self._connections.timeout)
        super().connect(credentials)

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        """Create what is missing of the tables and triggers (under an advisory lock:
        concurrent creators would clash)."""
        schema = self._schema
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._reads.lock_id("\x00schema")])
            # This version's triggers all exist once its tables, indexes, functions and
            # triggers all do (a table made by an earlier version gets them now).
            current = conn.execute(
                "SELECT count(*) FROM pg_trigger "
                "WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s)",
                [schema.main.as_string(conn), schema.triggers],
            )
            found = current.fetchone()
            if found is not None and found[0] == len(schema.triggers):
                return
            # One round trip: the statements take no parameters.
            conn.execute(b";\n".join(schema.create()))

    def _start_listener(self, cursor: int, start: Position | None) -> None:
        """Start the listener thread, which knows that the log reached *cursor*. It
        listens while someone listens to this store's events, from *start* if that is
        at once (``None``: from the position read then)."""
        if not self.listen:
            return
        schema, keep, reclaim = self._schema, self.change_log_size, self.reclaim_after
        self._listener = Listener(
            self.conninfo,
            schema,
            self.origin,
            self._deliver,
            cursor=cursor,
            track=self._connections.track,
            maintenance=lambda conn: maintain(conn, schema, keep, reclaim),
            interval=self.maintenance_interval,
        )
        self._listener.start()
        if self.event_manager.watch(self._listeners_changed):
            self._follow(self._listener, start)
        else:  # a manager that cannot tell who listens: always listen
            self._listener.activate(start or self._position())

    def _listeners_changed(self) -> None:
        """The event manager's listeners changed: listen only while one of them could
        receive this store's change events."""
        listener = self._listener
        if listener is None:
            return  # not connected, or no listener wanted
        if self._pid != os.getpid():
            self._forked()  # follows the listeners itself
            return
        self._follow(listener, None)

    def _follow(self, listener: Listener, start: Position | None) -> None:
        if not self.event_manager.may_deliver(StoreModificationEvent):
            listener.deactivate()
        elif not listener.active:
            # The position is read now, so changes committed after the event listener
            # connected reach it even before the thread listens.
            listener.activate(start or self._position())

    def _position(self) -> Position | None:
        # Briefly: this runs inside the event manager's connect().
        return read_position(self._connections.pool, self._schema, _POSITION_TIMEOUT, self)

    def disconnect(self) -> None:
        """Stop the listener and close the pool."""
        super().disconnect()
        self.event_manager.unwatch(self._listeners_changed)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop(self._wake_listener)
        self._connections.close()

    def _wake_listener(self) -> None:
        with self._connections.using("waking the change listener") as conn:
            conn.execute("SELECT pg_notify(%s, '')", [self._schema.channel])

    @property
    def event_gaps(self) -> int:
        """How many times this store's listener found changes gone from the change log
        before it could deliver them (it was disconnected, or behind, by more than
        ``change_log_size`` changes); each is also logged as a warning. Events were
        lost then: a reader that must see every change re-reads the store."""
        listener = self._listener
        return 0 if listener is None else listener.gaps

    def wait_listening(self, timeout: float = 30.0) -> bool:
        """Wait until the events of every change committed from then on will be
        delivered; whether they will (false when ``listen=False``, or when the listener
        could not connect in time). The listener listens only while someone listens to
        this store's change events: then this waits for it; otherwise it returns true
        at once (an event listener connected later receives the changes committed
        after it connected). In a process forked from the one that connected, this
        starts the process's own listener (the inherited one is the parent's)."""
        if self.is_connected() and self._pid != os.getpid():
            self._require_connection()
        listener = self._listener
        return listener is not None and listener.listening(timeout)

    def _require_connection(self) -> None:
        super()._require_connection()
        if self._pid != os.getpid():
            self._forked()

    def _forked(self) -> None:
        """First call in a process forked from the one that connected: this process's
        writes get an origin of their own (or the parent's listener would take them for
        its own), and a listener of its own from where the parent's had got to."""
        self._pid = os.getpid()
        self.origin = self._connections.origin = f"{self._pid}-{secrets.token_hex(6)}"
        # Before the parent's listener is let go: its connection must be neutralized
        # first, or freeing it would end the parent's session.
        self._connections.pool()
        inherited, self._listener = self._listener, None
        if inherited is None:
            self._start_listener(0, None)
        else:  # an active parent's listener is taken over from where it had got to
            start = Position(inherited.cursor) if inherited.active else None
            self._start_listener(inherited.cursor, start)

    def _deliver(self, change: Change) -> None:
        """Emit a change another store object made, from the listener thread."""
        if self.event_manager.has_listeners(change.event_class):
            self.event_manager.emit(change.event(self))

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """The value of *key*: in memory when inline, streamed in chunks when large (a
        value keeps its version; see ``reclaim_after``). Inside a transaction the read
        locks the key until the commit."""
        check_key(key)
        self._require_connection()
        return self._reads.value(key)

    def exists(self, key: str) -> bool:
        """Whether *key* exists (one indexed lookup; locking inside a transaction)."""
        check_key(key)
        self._require_connection()
        return self._reads.row(key) is not None

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to *select* when given."""
        check_key(key)
        names = check_select(select)
        self._require_connection()
        row = self._reads.row(key)
        if row is None:
            raise missing(key)
        return select_metadata(decode_metadata(row[4]), names)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data; one statement for an inline value."""
        check_read(key, buffer_size)
        self._require_connection()
        if self._progress_observed():
            return super().to_bytes(key, buffer_size)
        data = self._reads.inline_data(key)
        if data is not None:
            return data
        return read_stream(self._reads.value(key).data, buffer_size)

    def get_data_range(self, key: str, start: int | None = None, end: int | None = None) -> Any:
        """A stream over bytes ``start`` to ``end`` (excluded): only the chunks holding
        them are read."""
        check_key(key)
        self._require_connection()
        if (start is not None and start < 0) or (end is not None and end < 0):
            return self._reads.value(key).range(start, end)  # counted from the end
        return self._reads.data_range(key, start or 0, end)

    def multiget(self, keys: Iterable[str]) -> list[Value]:
        """The values of *keys* in input order, in one statement."""
        check_batch_keys(keys)
        key_list = list(keys)
        for key in key_list:
            check_key(key)
        self._require_connection()
        return self._reads.many(key_list)

    def multiget_data(self, keys: Iterable[str]) -> list[IO[bytes]]:
        """Data streams of *keys* in input order (one statement)."""
        return [value.data for value in self.multiget(keys)]

    def multiget_metadata(
        self, keys: Iterable[str], select: Iterable[str] | None = None
    ) -> list[Metadata]:
        """Metadata of *keys* in input order (one statement), limited to *select*."""
        check_batch_keys(keys)
        names = check_select(select)
        return [select_metadata(value.metadata, names) for value in self.multiget(keys)]

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs, found by PostgreSQL on indexes."""
        terms = query_terms(where, kwargs)
        names = check_select(select)
        self._require_connection()
        return [
            (key, select_metadata(decode_metadata(text), names))
            for key, text in self._reads.query(terms)
        ]

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys (no metadata is decoded without terms)."""
        terms = query_terms(where, kwargs)
        self._require_connection()
        if not terms:
            return self._reads.keys()
        return [key for key, _ in self._reads.query(terms)]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching *pattern*; its literal prefix narrows the scan of the key index."""
        check_pattern(pattern)
        self._require_connection()
        if "\x00" in pattern:  # no key holds NUL (nor can PostgreSQL's text)
            return []
        return self._reads.glob(pattern)

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* (see :meth:`AbstractReadOnlyStore.list_keys`): a range scan
        of the key index read in pages; a folder's keys are jumped over, not read."""
        check_listing(prefix, delimiter)
        self._require_connection()
        if "\x00" in prefix:  # no key holds NUL (nor can PostgreSQL's text)
            return iter(())
        end = prefix_end(prefix)
        return walk(lambda low: self._reads.key_range(low, end), prefix, delimiter)

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
        """Replace *key*'s data and metadata (see :meth:`AbstractStore.set`); one
        statement for an inline value, a transaction for a large one."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            return self._store(key, source, metadata_json, buffer_size, if_version, if_exists)
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]

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
        """Replace *key*'s metadata, keeping its data (empty for a new key); one statement."""
        check_write(key, if_version, if_exists)
        metadata_json = encode_metadata(metadata)
        self._require_connection()
        row = Row(key, version_numbers(1)[0], metadata_json, keep_data=True)
        with self._connections.using(f"writing the metadata of {shown(key)}") as conn:
            self._writes.write(conn, row, if_version, if_exists)
        self._emit_local(StoreSetEvent, key, metadata_json, row.version)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing.
        The row is locked from the read to the write."""
        check_write(key, if_version)
        encode_metadata(metadata)  # refuse bad input before touching anything
        self._require_connection()
        doing = f"updating the metadata of {shown(key)}"
        with self._connections.using(doing) as conn, conn.transaction():
            found = self._reads.locked_row(conn, key)
            if found is None:
                raise missing(key)
            if if_version is not None and str(found[0]) != if_version:
                raise self._writes.conflict(conn, key, if_version, None)
            merged = decode_metadata(found[4])
            merged.update(metadata)
            text = encode_metadata(merged)
            row = Row(key, version_numbers(1)[0], text, keep_data=True, action="update")
            self._writes.write(conn, row, None, True)
        self._emit(
            StoreUpdateEvent(self, key=key, metadata=merged, remote=False, version=str(row.version))
        )

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing. One statement."""
        check_write(key, if_version)
        self._require_connection()
        with self._connections.using(f"deleting {shown(key)}") as conn:
            metadata_json = self._writes.delete(conn, key, if_version)
            if metadata_json is None:
                if self._writes.version_of(conn, key) is None:
                    raise missing(key)
                raise self._writes.conflict(conn, key, if_version, None)
        self._emit_local(StoreDeleteEvent, key, metadata_json, None)

    def multiset(
        self,
        keys: Iterable[str],
        values: Iterable[Value | tuple[Any, Any]],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        """Set many keys atomically; small ``bytes`` values go in one statement."""
        check_buffer_size(buffer_size)
        key_list, value_list = split_pairs(keys, values)
        rows = self._inline_rows(key_list, value_list)
        if rows is None:
            super().multiset(key_list, value_list, buffer_size)
            return
        self._require_connection()
        latest = {row.key: row for row in rows}  # one row per key: the last value wins
        if latest:
            with self._connections.using(f"setting {len(rows)} keys") as conn:
                self._writes.batch(conn, list(latest.values()))
        if self._observed(StoreSetEvent):
            for row in rows:
                self._emit_local(StoreSetEvent, row.key, row.metadata or "{}", row.version)

    def _inline_rows(self, keys: list[str], values: list[Any]) -> list[Row] | None:
        """The rows of a batch of ``(bytes, metadata)`` pairs that all fit inline, every
        metadata validated; ``None`` if any value takes the general path."""
        rows = []
        numbers = iter(version_numbers(len(keys)))
        for key, value in zip(keys, values, strict=True):
            if type(value) is not tuple or len(value) != 2 or type(value[0]) is not bytes:
                return None
            data, metadata = value
            if len(data) > self.inline_limit:
                return None
            text = encode_metadata({} if metadata is None else metadata)
            rows.append(Row(key, next(numbers), text, data, None, len(data)))
        return rows

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
        version = version_numbers(1)[0]
        if isinstance(source, bytes | bytearray | memoryview) and len(source) <= self.inline_limit:
            row = Row(key, version, metadata_json, bytes(source), None, len(source))
            with self._connections.using(f"writing {shown(key)}") as conn:
                written = self._writes.write(conn, row, if_version, if_exists)
            return self._written(key, version, written)
        chunks = iter_source(source, min(check_buffer_size(buffer_size), self.chunk_size))
        size, metadata = source_size(source), self._progress_metadata(metadata_json)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            head, stream = take(_report(chunks, progress), self.inline_limit + 1)
            if len(head) <= self.inline_limit:
                row = Row(key, version, metadata_json, head, None, len(head))
                with self._connections.using(f"writing {shown(key)}") as conn:
                    written = self._writes.write(conn, row, if_version, if_exists)
            else:
                written = self._store_chunks(
                    key, version, stream, metadata_json, if_version, if_exists
                )
        return self._written(key, version, written)

    def _store_chunks(
        self,
        key: str,
        version: int,
        stream: Iterator[bytes],
        metadata_json: str | None,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """Write a large value: its chunks, then its row, in one transaction."""
        with self._connections.using(f"writing {shown(key)}") as conn, conn.transaction():
            blob = version_numbers(1)[0]
            size = copy_chunks(conn, self._schema, blob, rechunk(stream, self.chunk_size))
            row = Row(key, version, metadata_json, None, blob, size)
            return self._writes.write(conn, row, if_version, if_exists)

    def _written(self, key: str, version: int, metadata_json: str) -> str:
        self._emit_local(StoreSetEvent, key, metadata_json, version)
        return str(version)

    def _emit_local(
        self, cls: type[StoreModificationEvent], key: str, metadata_json: str, version: int | None
    ) -> None:
        """Emit the event of this store object's own write: ``remote=False`` and the
        version it wrote (``None`` for a delete), as remote events carry them."""
        if self._observed(cls):
            self._emit(
                cls(
                    self,
                    key=key,
                    metadata=decode_metadata(metadata_json),
                    remote=False,
                    version=None if version is None else str(version),
                )
            )

    # -- transactions --------------------------------------------------------------------
    def _begin_transaction(self) -> None:
        self._require_connection()
        self._connections.begin()

    def _commit_transaction(self) -> None:
        self._connections.commit()

    def _rollback_transaction(self) -> None:
        self._connections.rollback()

    def _savepoint(self) -> object:
        return self._connections.savepoint()

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, str)
        self._connections.rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        assert isinstance(token, str)
        self._connections.release(token)


def _report(chunks: Iterator[bytes], progress: Any) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        progress.step(step=total)
        yield chunk
