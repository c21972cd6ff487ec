"""The reads of a :class:`SqliteStore`: values, metadata, queries and key patterns.

A row holds its value inline (``data``), or names where it lives (``blob``): a value
file (``file:<name>``, file databases) or a chunk set in the side table (in-memory
databases). A value read from either keeps the version it was read with: it holds its
file open, or holds its chunk set (see ``_sqlite_files``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import IO, NamedTuple, cast

from storekeeper.backends._sqlite_connections import Connections
from storekeeper.backends._sqlite_files import ChunkHolds, ValueFiles, file_value, is_file_ref
from storekeeper.backends._sqlite_listing import key_range, row_range
from storekeeper.backends._sqlite_schema import (
    Schema,
    compile_query,
    has_string_terms,
    prefix_range,
)
from storekeeper.errors import BackendError, ConflictError
from storekeeper.store.backend import Metadata, decode_metadata, matches, missing, pick_metadata
from storekeeper.store.query import QueryTerm
from storekeeper.store.utils import BufferIteratorIO
from storekeeper.store.value import BytesValue, Head, KeyInfo, StreamValue, Value

__all__ = ["Reads", "Row", "literal_prefix"]

# Reads of a row whose value file was replaced before it could be opened.
_READ_RETRIES = 16


class Row(NamedTuple):
    """A key's row as :attr:`Schema.select_row` reads it."""

    metadata: str
    created: float
    modified: float
    version: str
    size: int
    blob: str | None
    data: bytes | None


class Reads:
    """Reads of one table through *connections*; large values from *files* (a file
    database) or from chunk sets of *chunk_size* bytes that *holds* keeps alive."""

    def __init__(
        self,
        connections: Connections,
        schema: Schema,
        files: ValueFiles | None,
        holds: ChunkHolds,
        chunk_size: int,
    ) -> None:
        self.connections = connections
        self.schema = schema
        self.files = files
        self.holds = holds
        self.chunk_size = chunk_size

    def value(self, key: str) -> Value:
        """*key*'s value: in memory when inline, a lazily streamed value otherwise."""
        for _ in range(_READ_RETRIES):
            with self.connections.using() as conn:
                found = conn.execute(self.schema.select_row, (key,)).fetchone()
                if found is None:
                    raise missing(key)
                row = Row._make(found)
                if row.blob is not None and not is_file_ref(row.blob):
                    return self._chunked_value(key, row, self.holds.hold(row.blob))
            if row.blob is None:
                return BytesValue(
                    cast(bytes, row.data),
                    created=row.created,
                    modified=row.modified,
                    version=row.version,
                    metadata_json=row.metadata,
                )
            value = self._file_value(row)
            if value is not None:
                return value
        raise ConflictError(f"key {key!r} changed {_READ_RETRIES} times while being read")

    def inline_data(self, key: str) -> bytes | None:
        """*key*'s data if its row holds it, else ``None`` (stored outside the row)."""
        row = self.connections.fetch_one(self.schema.select_data, (key,))
        if row is None:
            raise missing(key)
        return cast("bytes | None", row[0])

    def exists(self, key: str) -> bool:
        """Whether *key* has a row."""
        return self.connections.fetch_one(self.schema.select_exists, (key,)) is not None

    def head(self, key: str) -> Head | None:
        """*key*'s version, size and decoded metadata, or ``None`` if it has no row."""
        row = self.connections.fetch_one(self.schema.select_head, (key,))
        if row is None:
            return None
        version, size, metadata = row
        return Head(cast(str, version), cast(int, size), decode_metadata(cast(str, metadata)))

    def metadata(self, key: str) -> Metadata:
        """*key*'s metadata, decoded."""
        row = self.connections.fetch_one(self.schema.select_metadata, (key,))
        if row is None:
            raise missing(key)
        return decode_metadata(cast(str, row[0]))

    def query(
        self, terms: dict[str, QueryTerm], names: list[str] | None
    ) -> list[tuple[str, Metadata]]:
        """``(key, metadata picked to names)`` of the rows matching *terms*."""
        clause, params, _ = compile_query(terms)
        with self.connections.using() as conn:
            rows = conn.execute(self.schema.select_query(clause, with_metadata=True), params)
            result = []
            for key, text in rows:
                metadata = decode_metadata(text)
                if matches(metadata, terms):
                    result.append((key, pick_metadata(metadata, names)))
        return result

    def query_keys(self, terms: dict[str, QueryTerm]) -> list[str] | None:
        """Keys matching *terms*, or ``None`` when SQL cannot decide every term (the
        caller then decides in Python). Metadata is decoded only of rows holding a
        string with NUL, which SQL reads cut short."""
        clause, params, exact = compile_query(terms)
        if not exact:
            return None
        if not has_string_terms(terms):
            with self.connections.using() as conn:
                sql = self.schema.select_query(clause, with_metadata=False)
                return [key for (key,) in conn.execute(sql, params)]
        sql = self.schema.select_query(clause, with_metadata=False, metadata_if_nul=True)
        with self.connections.using() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [key for key, text in rows if text is None or matches(decode_metadata(text), terms)]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching *pattern*, scanning only the range of its literal prefix."""
        where, params = prefix_range(literal_prefix(pattern))
        with self.connections.using() as conn:
            rows = conn.execute(self.schema.select_query(where, with_metadata=False), params)
            return [key for (key,) in rows if fnmatch.fnmatchcase(key, pattern)]

    def key_range(self, low: str, high: str | None) -> Iterator[str]:
        """The keys from *low* (included) to *high* (excluded; ``None``: no end), in
        order, read a page at a time (:func:`key_range`)."""
        return key_range(self.connections.using, self.schema.main, low, high)

    def info_range(
        self, low: str, high: str | None, *, metadata: bool
    ) -> Iterator[tuple[str, KeyInfo]]:
        """``(key, info)`` of the keys from *low* to *high* (as :meth:`key_range`), read
        from the rows alone: sizes, times and versions, and the metadata when asked."""
        columns = self.schema.info_columns + (", metadata" if metadata else "")
        rows = row_range(self.connections.using, self.schema.main, columns, low, high)
        if not metadata:
            return (
                (key, KeyInfo(size, created, modified, version))
                for key, size, created, modified, version in rows
            )
        return (
            (key, KeyInfo(size, created, modified, version, decode_metadata(text)))
            for key, size, created, modified, version, text in rows
        )

    def _file_value(self, row: Row) -> Value | None:
        """The value of a row naming a value file, or ``None`` if the file is gone (the
        row was replaced since it was read)."""
        assert self.files is not None and row.blob is not None  # only in a file database
        try:
            shared = self.files.open_shared(row.blob)
        except FileNotFoundError:
            return None
        return file_value(shared, row.size, row.metadata, row.created, row.modified, row.version)

    def _chunked_value(self, key: str, row: Row, hold: object) -> Value:
        """The value of a row naming a chunk set, which *hold* keeps from being deleted."""
        blob, size = cast(str, row.blob), row.size
        return StreamValue(
            lambda: self._chunk_stream(key, blob, size, 0, size, hold),
            size=size,
            created=row.created,
            modified=row.modified,
            version=row.version,
            metadata_json=row.metadata,
            range_opener=lambda lo, hi: self._chunk_stream(key, blob, size, lo, hi, hold),
        )

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
            row = self.connections.fetch_one(self.schema.select_chunk, (blob, seq))
            if row is None:  # never while held: a damaged database
                raise BackendError(f"chunk {seq} of key {key!r} is missing")
            chunk = cast(bytes, row[0])
            yield chunk[max(0, start - position) : stop - position]
            position += len(chunk)
            seq += 1


def literal_prefix(pattern: str) -> str:
    """The part of a glob *pattern* before its first wildcard."""
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern
