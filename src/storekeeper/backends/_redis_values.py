"""Values of :class:`~storekeeper.backends.redis.RedisStore`: small ones inline in the
record, large ones as a chunk set streamed in and out.

Writing (:func:`stage`) reads the source one buffer at a time. Up to the inline limit
the bytes stay in memory; past it they go to a new chunk set, one chunk at a time, which
expires after ``STAGING_SECONDS`` unless a write points a record at it, so a writer that
dies half-way leaves nothing behind for long. Memory stays bounded by one chunk plus one
buffer whatever the size of the value.

Reading (:class:`ChunkStream`) fetches one chunk at a time and, every
``REFRESH_SECONDS``, pushes back the expiry of a chunk set that is being replaced, so a
stream opened before an overwrite keeps reading its own version as long as it keeps
reading.
"""

from __future__ import annotations

import io
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from storekeeper.errors import KeyNotFoundError
from storekeeper.store.backend import iter_source

__all__ = ["REFRESH_SECONDS", "STAGING_SECONDS", "ChunkStream", "Staged", "chunk_set", "stage"]

#: How long a chunk set may stay unclaimed while its value is being written.
STAGING_SECONDS = 3600

#: Reads one chunk: (chunk set name, chunk number, whether to push back the set's
#: expiry) -> bytes, or None if gone.
ChunkReader = Callable[[str, int, bool], bytes | None]
#: How often (seconds) a stream pushes back the expiry of the set it reads; well under
#: the shortest grace period (1 s), so a set being read never expires.
REFRESH_SECONDS = 0.25


def chunk_set(root: str, blob: str) -> str:
    """The Redis name of chunk set *blob* under *root*."""
    return f"{root}c:{blob}"


@dataclass(slots=True)
class Staged:
    """Data read from a source: ``inline`` bytes, or the id of a staged chunk set
    (``blob``) holding ``size`` bytes in chunks of ``chunk_size``."""

    inline: bytes | None
    blob: str | None
    size: int
    chunk_size: int


def stage(
    client: Any,
    root: str,
    source: object,
    buffer_size: int,
    inline_limit: int,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> Staged:
    """Read *source* (anything ``set`` accepts as data) into a :class:`Staged` value.

    If the source fails, the chunks staged so far are deleted and its error propagates.
    """
    if isinstance(source, bytes) and len(source) <= inline_limit:
        return Staged(source, None, len(source), chunk_size)
    pieces: list[bytes] = []  # read and not yet sent; joined only when they must be
    held = total = count = 0
    blob: str | None = None
    try:
        for piece in _pieces(source, buffer_size):
            pieces.append(piece)
            held += len(piece)
            total += len(piece)
            if progress is not None:
                progress(total)
            if blob is None and held <= inline_limit:
                continue
            if blob is None:
                blob = secrets.token_hex(12)
            while held >= chunk_size:
                chunk = _take(pieces, chunk_size)
                held -= len(chunk)
                _put(client, chunk_set(root, blob), count, chunk)
                count += 1
        if blob is None:
            return Staged(b"".join(pieces), None, total, chunk_size)
        if pieces:
            _put(client, chunk_set(root, blob), count, b"".join(pieces))
    except BaseException:
        if blob is not None:
            client.unlink(chunk_set(root, blob))
        raise
    return Staged(None, blob, total, chunk_size)


def _take(pieces: list[bytes], size: int) -> bytes:
    """Remove the first *size* bytes from *pieces* (which hold at least that many) and
    return them; a piece that is exactly one chunk is passed on without a copy (memory
    freshly touched costs this machine more than anything else in a large write)."""
    if len(pieces[0]) == size:
        return pieces.pop(0)
    parts: list[bytes] = []
    need = size
    while need:
        piece = pieces[0]
        if len(piece) <= need:
            parts.append(pieces.pop(0))
            need -= len(piece)
        else:
            parts.append(piece[:need])
            pieces[0] = piece[need:]
            need = 0
    return b"".join(parts)


def _pieces(source: object, buffer_size: int) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), buffer_size):
            yield bytes(view[start : start + buffer_size])
        return
    yield from iter_source(source, buffer_size)


def _put(client: Any, name: str, number: int, chunk: bytes) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hset(name, str(number), chunk)
    pipe.expire(name, STAGING_SECONDS)
    pipe.execute()


class ChunkStream(io.RawIOBase):
    """A read-only stream over bytes ``start`` to ``end`` of a chunk set."""

    def __init__(
        self,
        read_chunk: ChunkReader,
        name: str,
        key: str,
        chunk_size: int,
        start: int,
        end: int,
    ) -> None:
        super().__init__()
        self._read_chunk = read_chunk
        self._name = name
        self._key = key
        self._chunk_size = chunk_size
        self._position = start
        self._end = end
        self._buffer = b""
        self._buffer_start = 0
        self._refreshed = -math.inf

    def readable(self) -> bool:
        return True

    def _load(self) -> None:
        number = self._position // self._chunk_size
        now = time.monotonic()
        refresh = now - self._refreshed > REFRESH_SECONDS
        if refresh:
            self._refreshed = now
        chunk = self._read_chunk(self._name, number, refresh)
        if chunk is None:
            raise KeyNotFoundError(
                f"the data of the value of {self._key!r} this stream reads is gone: the key "
                "was overwritten or deleted, and nothing read this value for longer than "
                "the store's grace period"
            )
        self._buffer = chunk
        self._buffer_start = number * self._chunk_size

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._end - self._position
        parts: list[bytes] = []
        while size > 0 and self._position < self._end:
            offset = self._position - self._buffer_start
            if not 0 <= offset < len(self._buffer):
                self._load()
                offset = self._position - self._buffer_start
            take = min(size, len(self._buffer) - offset, self._end - self._position)
            if take <= 0:
                break
            parts.append(self._buffer[offset : offset + take])
            self._position += take
            size -= take
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._buffer = b""
        super().close()
