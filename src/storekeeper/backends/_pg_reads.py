"""The reads of a :class:`~storekeeper.backends.postgres.PostgresStore`.

Inside a transaction a read of a key locks its row (``SELECT ... FOR UPDATE``), so that a
read-modify-write transaction holds what it read until it commits: a concurrent writer
of the key (a plain write or another transaction, in any process) waits for it instead
of being overwritten, and PostgreSQL's READ COMMITTED re-reads the latest committed row
for the waiter. A key that does not exist has no row to lock; the read then takes a
transaction-scoped advisory lock named after the table and key, so two transactions
that both find the key missing run one after the other. Deadlocks between transactions
that lock keys in opposite orders are detected by PostgreSQL, which rolls one back (a
:class:`~storekeeper.errors.TransactionError`).

Outside transactions reads lock nothing: PostgreSQL's snapshots make each statement
see committed rows only, so readers never see part of a write.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import psycopg
from psycopg import sql

from storekeeper.backends._pg_connections import Connections
from storekeeper.backends._pg_errors import shown
from storekeeper.backends._pg_query import Indexes, compile_query
from storekeeper.backends._pg_schema import Schema
from storekeeper.backends._pg_values import open_chunks
from storekeeper.store.backend import decode_metadata, matches, missing
from storekeeper.store.listing import prefix_end
from storekeeper.store.query import QueryTerm
from storekeeper.store.value import BytesValue, StreamValue, Value

__all__ = ["Reads", "literal_prefix"]

_log = logging.getLogger(__name__)
_COLUMNS = "version, size, created, modified, metadata, data, blob"
_INT4 = 2**31 - 1
_FIRST_PAGE = 32
_LAST_PAGE = 2048

RowTuple = tuple[Any, ...]


def literal_prefix(pattern: str) -> str:
    """The part of a glob *pattern* before its first wildcard."""
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern


class Reads:
    """Reads of one table through *connections*."""

    def __init__(
        self, connections: Connections, schema: Schema, indexes: Indexes, chunk_size: int
    ) -> None:
        self.connections = connections
        self.schema = schema
        self.indexes = indexes
        self.chunk_size = chunk_size
        self._select = schema.compose(f"SELECT {_COLUMNS} FROM {{main}} WHERE key = %s")
        self._lock = schema.compose(f"SELECT {_COLUMNS} FROM {{main}} WHERE key = %s FOR UPDATE")
        self._data = schema.compose("SELECT data FROM {main} WHERE key = %s")
        self._range = schema.compose(
            "SELECT size, blob, CASE WHEN blob IS NULL THEN substring(data FROM %s::int "
            "FOR coalesce(%s::int, octet_length(data))) END FROM {main} WHERE key = %s"
        )

    # -- one key ---------------------------------------------------------------------------
    def row(self, key: str) -> RowTuple | None:
        """*key*'s row (locked inside a transaction), or ``None``."""
        locking = self.connections.transaction() is not None
        with self.connections.using(f"reading {shown(key)}") as conn:
            if not locking:
                return conn.execute(self._select, [key], binary=True).fetchone()
            return self.locked_row(conn, key)

    def inline_data(self, key: str) -> bytes | None:
        """*key*'s data if it is stored inline and no transaction is open (one short
        statement); ``None`` when the general path must answer (a missing key too)."""
        if self.connections.transaction() is not None:
            return None
        with self.connections.using(f"reading {shown(key)}") as conn:
            found = conn.execute(self._data, [key], binary=True).fetchone()
        if found is None or found[0] is None:
            return None
        return bytes(found[0])

    def data_range(self, key: str, start: int, end: int | None) -> IO[bytes]:
        """Bytes *start* to *end* (excluded; both non-negative) of *key*'s data: an
        inline value is cut by PostgreSQL, a chunked one reads only its chunks."""
        if self.connections.transaction() is not None:
            return self.value(key).range(start, end)  # the locking read of one key
        with self.connections.using(f"reading {shown(key)}") as conn:
            # substring() counts from 1 in int4: an inline value is far shorter.
            first = min(start, _INT4 - 1) + 1
            length = None if end is None else min(max(end - start, 0), _INT4)
            found = conn.execute(self._range, [first, length, key], binary=True).fetchone()
        if found is None:
            raise missing(key)
        size, blob, part = found
        if blob is None:
            return io.BytesIO(bytes(part))
        stop = size if end is None else min(end, size)
        return open_chunks(self.connections.using, self.schema, blob, start, stop, self.chunk_size)

    def locked_row(self, conn: psycopg.Connection[Any], key: str) -> RowTuple | None:
        """*key*'s row read on *conn* (in a transaction) and locked until it ends; a
        missing key's advisory lock is taken instead."""
        found = conn.execute(self._lock, [key], binary=True).fetchone()
        if found is None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.lock_id(key)])
            found = conn.execute(self._lock, [key], binary=True).fetchone()
        return found

    def lock_id(self, key: str) -> int:
        """The advisory lock standing for *key* of this table (64-bit, signed)."""
        name = f"{self.schema.schema or ''}\x00{self.schema.table}\x00{key}"
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def value(self, key: str) -> Value:
        """The value of *key*; :class:`KeyNotFoundError` if it is missing."""
        found = self.row(key)
        if found is None:
            raise missing(key)
        return self.make_value(found)

    def make_value(self, row: RowTuple) -> Value:
        """A value from a row of the main table (its columns as in ``_COLUMNS``)."""
        version, size, created, modified, metadata, data, blob = row
        if blob is None:
            return BytesValue(
                bytes(data),
                created=created,
                modified=modified,
                version=str(version),
                metadata_json=metadata,
            )
        using, schema, width = self.connections.using, self.schema, self.chunk_size

        def opener() -> Any:
            return open_chunks(using, schema, blob, 0, size, width)

        def range_opener(start: int, end: int | None) -> Any:
            stop = size if end is None else min(end, size)
            return open_chunks(using, schema, blob, start, stop, width)

        return StreamValue(
            opener,
            size=size,
            created=created,
            modified=modified,
            version=str(version),
            metadata_json=metadata,
            range_opener=range_opener,
        )

    def many(self, keys: Sequence[str]) -> list[Value]:
        """The values of *keys* in order (one statement); KeyNotFoundError if one is
        missing."""
        if self.connections.transaction() is not None:
            return [self.value(key) for key in keys]  # each row locked, as one read does
        statement = self.schema.compose(f"SELECT key, {_COLUMNS} FROM {{main}} WHERE key = ANY(%b)")
        with self.connections.using("reading many keys") as conn:
            rows = conn.execute(statement, [list(set(keys))], binary=True).fetchall()
        found = {row[0]: row[1:] for row in rows}
        values = []
        for key in keys:
            row = found.get(key)
            if row is None:
                raise missing(key)
            values.append(self.make_value(row))
        return values

    # -- many keys -------------------------------------------------------------------------
    def query(self, terms: Mapping[str, QueryTerm]) -> list[tuple[str, str]]:
        """``(key, metadata JSON)`` of the keys matching *terms* (see ``_pg_query``)."""
        if not terms:
            with self.connections.using("running a query") as conn:
                rows = conn.execute(self.schema.compose("SELECT key, metadata FROM {main}"), [])
                return [(key, text) for key, text in rows]
        condition, compiled = compile_query(terms)
        self._ensure_indexes(compiled.indexed)
        statement = self.schema.compose(
            "SELECT key, metadata FROM {main} WHERE meta IS NOT NULL AND ({condition}) "
            "UNION ALL SELECT key, metadata FROM {main} WHERE meta IS NULL",
            condition=condition,
        )
        with self.connections.using("running a query") as conn:
            found = conn.execute(statement, compiled.params).fetchall()
        return [(key, text) for key, text in found if matches(decode_metadata(text), terms)]

    def keys(self) -> list[str]:
        """Every key."""
        with self.connections.using("listing keys") as conn:
            rows = conn.execute(self.schema.compose("SELECT key FROM {main}"), [])
            return [key for (key,) in rows]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching *pattern*, scanning only the range of its literal prefix."""
        prefix = literal_prefix(pattern)
        return [
            key
            for key in self.key_range(prefix, prefix_end(prefix), page=_LAST_PAGE)
            if fnmatch.fnmatchcase(key, pattern)
        ]

    def key_range(self, low: str, high: str | None, page: int = _FIRST_PAGE) -> Iterator[str]:
        """The keys from *low* (included) to *high* (excluded; ``None``: no end), in
        order, a page per statement (pages double up to 2,048 keys): nothing stays open
        between the keys yielded."""
        bounded = "" if high is None else " AND key < %(high)s"
        first = self.schema.compose(
            f"SELECT key FROM {{main}} WHERE key >= %(low)s{bounded} ORDER BY key LIMIT %(size)s"
        )
        after = self.schema.compose(
            f"SELECT key FROM {{main}} WHERE key > %(low)s{bounded} ORDER BY key LIMIT %(size)s"
        )
        statement, size = first, page
        while True:
            with self.connections.using("listing keys") as conn:
                params = {"low": low, "high": high, "size": size}
                rows = conn.execute(statement, params).fetchall()
            for (key,) in rows:
                yield key
            if len(rows) < size:
                return
            low = rows[-1][0]
            statement, size = after, min(2 * size, _LAST_PAGE)

    def _ensure_indexes(self, names: set[str]) -> None:
        """Create the expression indexes a query would use, outside transactions (an
        index built inside one would wait for that transaction's own locks)."""
        if not names or self.connections.transaction() is not None:
            return
        statements = self.indexes.missing(names)
        if not statements:
            return
        try:
            with self.connections.pool().connection() as conn:
                for index, statement in statements:
                    with conn.transaction():
                        conn.execute("SET LOCAL lock_timeout = '2s'")
                        conn.execute(statement, [])  # composed for parameters
                    self.indexes.existing.add(index)
        except psycopg.Error as exc:
            # The query still answers without the index, only more slowly.
            _log.warning("could not create an index on %s: %s", self.schema.table, exc)

    def index_names(self) -> list[str]:
        """The names of the table's indexes."""
        statement = sql.SQL(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s "
            "AND schemaname = COALESCE(%s, current_schema())"
        )
        with self.connections.using("reading the indexes") as conn:
            rows = conn.execute(statement, [self.schema.table, self.schema.schema])
            return [name for (name,) in rows]
