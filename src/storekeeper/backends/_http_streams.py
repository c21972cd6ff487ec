"""Streams of :class:`~storekeeper.backends.http.DynamicURLStore`: response bodies read
as files, downloaded values kept in temporary files, and upload bodies."""

from __future__ import annotations

import io
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from storekeeper.errors import BackendError, BackendUnavailableError

__all__ = ["ResponseStream", "SpooledCopy", "counted", "read_body", "window"]

#: Bytes asked of the socket per read while downloading into a temporary file.
COPY_CHUNK = 1024 * 1024


class ResponseStream(io.RawIOBase):
    """A response body as a readable binary stream; closing it gives the connection back
    to the pool (or drops it when the body was not read to its end)."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        super().__init__()
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            chunk = self._response.read(len(view))
        except Urllib3Error as exc:
            raise BackendUnavailableError(f"the download broke off: {exc}") from exc
        view[: len(chunk)] = chunk
        return len(chunk)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        try:
            data: bytes = self._response.read(size)
            return data
        except Urllib3Error as exc:
            raise BackendUnavailableError(f"the download broke off: {exc}") from exc

    def readall(self) -> bytes:
        try:
            data: bytes = self._response.read()
            return data
        except Urllib3Error as exc:
            raise BackendUnavailableError(f"the download broke off: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            response = self._response
            remaining = response.length_remaining
            if remaining is None or remaining > COPY_CHUNK:
                response.close()  # reading the rest would cost more than a new connection
            else:
                response.drain_conn()
                response.release_conn()
        super().close()


def read_body(response: urllib3.BaseHTTPResponse, size: int) -> bytes:
    """The whole body of a streamed *response* of *size* bytes, read at once (which gives
    the connection back to the pool); BackendError if the server sent another length,
    BackendUnavailableError if the download broke off."""
    try:
        body: bytes = response.read()
    except Urllib3Error as exc:
        raise BackendUnavailableError(f"the download broke off: {exc}") from exc
    finally:
        response.release_conn()
    if len(body) != size:
        raise BackendError(f"the server sent {len(body)} bytes where it announced {size}")
    return body


class _PositionedReader(io.RawIOBase):
    """An independent reader of a shared file, from *start* for *length* bytes."""

    def __init__(self, owner: SpooledCopy, start: int, length: int) -> None:
        super().__init__()
        self._owner = owner  # keeps the file open while this reader lives
        self._position = start
        self._end = start + length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._end - self._position)
        if want <= 0:
            return 0
        chunk = os.pread(self._owner.fileno, want, self._position)
        view[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


class SpooledCopy:
    """A downloaded value kept in an anonymous temporary file, read by any number of
    independent streams; the file goes when the last of them (and this object) does."""

    def __init__(
        self, source: IO[bytes] | io.RawIOBase, progress: Callable[[int], None] | None = None
    ) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the finalizer
        self.fileno = self._file.fileno()
        self.size = 0
        while True:
            chunk = source.read(COPY_CHUNK)
            if not chunk:
                break
            self._file.write(chunk)
            self.size += len(chunk)
            if progress is not None:
                progress(self.size)
        self._file.flush()
        weakref.finalize(self, self._file.close)

    def open(self, start: int = 0, end: int | None = None) -> IO[bytes]:
        """A new stream over bytes ``start`` to ``end`` (end-exclusive) of the copy."""
        stop = self.size if end is None else min(end, self.size)
        reader = _PositionedReader(self, start, max(0, stop - start))
        return cast(IO[bytes], io.BufferedReader(reader))


def counted(chunks: Iterator[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    """*chunks*, reporting the running byte count to *progress* after each."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        yield chunk
        progress(total)


class _Window(io.RawIOBase):
    """Bytes *skip* onwards of *inner*, at most *limit* of them (``None``: all)."""

    def __init__(self, inner: IO[bytes] | io.RawIOBase, skip: int, limit: int | None) -> None:
        super().__init__()
        self._inner = inner
        self._skip = skip
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._skip > 0:
            dropped = self._inner.read(min(self._skip, COPY_CHUNK))
            if not dropped:
                self._skip = 0
                return 0
            self._skip -= len(dropped)
        view = memoryview(buffer).cast("B")
        want = len(view) if self._left is None else min(len(view), self._left)
        if want <= 0:
            return 0
        chunk = self._inner.read(want)
        view[: len(chunk)] = chunk
        if self._left is not None:
            self._left -= len(chunk)
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def window(inner: IO[bytes] | io.RawIOBase, skip: int, limit: int | None) -> IO[bytes]:
    """A stream over *inner* from byte *skip*, at most *limit* bytes (for a server
    that answered a range request with the whole value)."""
    return cast(IO[bytes], io.BufferedReader(_Window(inner, skip, limit)))
