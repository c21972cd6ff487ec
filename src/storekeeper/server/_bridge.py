"""Streams between the event loop and the store's synchronous API, in bounded memory.

Uploads: :class:`BodyReader` is a binary file the store reads in a worker thread; each
read takes the next piece of the request body from the event loop, so at most one
received piece is held, whatever the value's size. A body that ends early (the client
went away) makes the read raise, and the store keeps the old value.

Downloads: :func:`iterate_stream` reads the store's stream in a worker thread, a chunk
at a time, for a streaming response.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import IO, Any

import anyio.from_thread
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from storekeeper.server._http import HTTPProblem

__all__ = ["BodyReader", "ClientGone", "iterate_stream"]

#: Request body bytes gathered per worker-thread hop while a store reads an upload.
GATHER = 1024 * 1024
#: Bytes read from a store stream per worker-thread hop when streaming a response.
CHUNK_SIZE = 1024 * 1024


class ClientGone(OSError):  # noqa: N818 - reads as what happened
    """The client disconnected before the request body was complete."""


class BodyReader(io.RawIOBase):
    """The request body as a readable binary file, for a store call in a worker thread.

    *limit* bounds the body's size: reading past it raises a 413 :class:`HTTPProblem`.
    Only usable from a thread started by ``run_in_threadpool`` (it calls back into the
    event loop).
    """

    def __init__(self, receive: Receive, limit: int | None = None) -> None:
        super().__init__()
        self._receive = receive
        self._limit = limit
        self._pending = memoryview(b"")
        self._done = False
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._done:
            wanted = max(len(view), GATHER)
            self._pending = memoryview(anyio.from_thread.run(self._next_piece, wanted))
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def read_exactly(self, count: int) -> bytes:
        """The next *count* bytes; :class:`HTTPProblem` 400 if the body is shorter."""
        parts: list[bytes] = []
        left = count
        while left > 0:
            chunk = self.read(left)
            if not chunk:
                raise HTTPProblem(400, "the request body ended early", "InvalidValueError")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    async def _next_piece(self, wanted: int) -> bytes:
        """The next received pieces of the body, up to about *wanted* bytes (one trip
        from the worker thread to the event loop per gathered batch, not per piece)."""
        pieces: list[bytes] = []
        size = 0
        while size < wanted and not self._done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._done = True
                raise ClientGone("the client disconnected before the request body was complete")
            body: bytes = message.get("body", b"")
            self._done = not message.get("more_body", False)
            self._count += len(body)
            if self._limit is not None and self._count > self._limit:
                self._done = True
                raise HTTPProblem(413, f"the request body exceeds {self._limit} bytes", "TooLarge")
            pieces.append(body)
            size += len(body)
        return b"".join(pieces)


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body (at most *limit* bytes, else a 413 :class:`HTTPProblem`)."""
    parts: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected before the request body was complete")
        body: bytes = message.get("body", b"")
        total += len(body)
        if total > limit:
            raise HTTPProblem(413, f"the request body exceeds {limit} bytes", "TooLarge")
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


async def iterate_stream(stream: IO[bytes], first: bytes = b"") -> AsyncIterator[bytes]:
    """*first*, then the rest of *stream* in chunks read in a worker thread; the stream
    is closed however the iteration ends (also when the client goes away)."""
    try:
        if first:
            yield first
        while True:
            chunk = await run_in_threadpool(stream.read, CHUNK_SIZE)
            if not chunk:
                return
            yield chunk
    finally:
        stream.close()
