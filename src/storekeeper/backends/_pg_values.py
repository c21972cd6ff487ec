"""Large values of a :class:`~storekeeper.backends.postgres.PostgresStore`: chunks in and
out, with bounded memory.

A value over ``inline_limit`` bytes is written as rows of ``T__chunks`` (``COPY ... FROM
STDIN`` in binary, ``chunk_size`` bytes a row) in the same transaction as the row naming
it, so a failure part-way leaves nothing. It is read back a few chunks per statement
(about 8 MiB), each statement on the connection the reader's owner uses then, so an open
stream holds no connection between reads. Chunk sets are never changed: an overwrite or a
delete moves the old set to ``T__trash`` (the table's trigger does it), whence it is
deleted ``reclaim_after`` seconds later; a stream over it reads it until then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import IO, Any

import psycopg

from storekeeper.backends._pg_schema import Schema
from storekeeper.errors import BackendError
from storekeeper.store.utils import BufferIteratorIO

__all__ = ["copy_chunks", "open_chunks", "rechunk", "take"]

Using = Callable[[str], AbstractContextManager[psycopg.Connection[Any]]]
#: Bytes read per statement when streaming a large value.
_BATCH_BYTES = 8 << 20


def take(chunks: Iterator[bytes], limit: int) -> tuple[bytes, Iterator[bytes]]:
    """Up to *limit* bytes from the start of *chunks* (more only if a chunk straddles
    the limit), and an iterator over the whole stream again (those bytes first)."""
    head: list[bytes] = []
    total = 0
    for chunk in chunks:
        if chunk:
            head.append(chunk)
            total += len(chunk)
        if total >= limit:
            break
    first = b"".join(head)

    def again() -> Iterator[bytes]:
        if first:
            yield first
        yield from chunks

    return first, again()


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """*chunks* cut and joined into pieces of exactly *size* bytes (the last shorter)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def copy_chunks(
    conn: psycopg.Connection[Any], schema: Schema, blob: int, chunks: Iterable[bytes]
) -> int:
    """Write *chunks* as the chunk set *blob*; the number of bytes written."""
    # psycopg sends a COPY without parameters as it is: the names stay unescaped.
    statement = schema.script("COPY {chunks} (blob, seq, data) FROM STDIN (FORMAT BINARY)")
    total = 0
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(["int8", "int4", "bytea"])
        for seq, chunk in enumerate(chunks):
            copy.write_row((blob, seq, chunk))
            total += len(chunk)
    return total


def open_chunks(
    using: Using, schema: Schema, blob: int, start: int, end: int, chunk_size: int
) -> IO[bytes]:
    """A stream over bytes *start* to *end* (excluded) of the chunk set *blob*."""
    return BufferIteratorIO(_read(using, schema, blob, start, end, chunk_size))  # type: ignore[return-value]


def _read(
    using: Using, schema: Schema, blob: int, start: int, end: int, chunk_size: int
) -> Iterator[bytes]:
    remaining = end - start
    if remaining <= 0:
        return
    width = chunk_size
    if start:
        width = _chunk_width(using, schema, blob)
    seq, offset = divmod(start, width)
    batch = max(1, _BATCH_BYTES // width)
    statement = schema.compose(
        "SELECT seq, data FROM {chunks} WHERE blob = %s AND seq >= %s ORDER BY seq LIMIT %s"
    )
    while remaining > 0:
        with using("reading a large value") as conn:
            rows = conn.execute(statement, [blob, seq, batch], binary=True).fetchall()
        if not rows:
            raise _reclaimed(blob)
        for number, data in rows:
            if number != seq:
                raise _reclaimed(blob)
            piece = bytes(data[offset : offset + remaining])
            offset = 0
            remaining -= len(piece)
            seq += 1
            yield piece
            if remaining <= 0:
                return


def _chunk_width(using: Using, schema: Schema, blob: int) -> int:
    """The size of the chunks of *blob* (every chunk but the last has it)."""
    statement = schema.compose(
        "SELECT octet_length(data) FROM {chunks} WHERE blob = %s AND seq = 0"
    )
    with using("reading a large value") as conn:
        row = conn.execute(statement, [blob]).fetchone()
    if row is None:
        raise _reclaimed(blob)
    width: int = row[0]
    return width


def _reclaimed(blob: int) -> BackendError:
    return BackendError(
        f"the data of this value (chunk set {blob}) is gone: its key was overwritten or "
        "deleted more than reclaim_after seconds ago; read the key again"
    )
