"""The transport of :mod:`storekeeper.backends.static`: response bodies as streams, byte
windows, and the errors of HTTP statuses and file reads.

urllib3 is imported only inside the functions that need it (the ``[http]`` extra), so a
``file:`` root works without it.
"""

from __future__ import annotations

import base64
import io
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    KeyNotFoundError,
)

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "FileInfo",
    "Limited",
    "Opened",
    "ResponseBody",
    "auth_headers",
    "file_error",
    "file_path",
    "limit",
    "skip",
    "status_error",
]

BinaryStream = IO[bytes]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a HEAD request or ``stat`` told of a data file."""

    size: int | None
    modified: float | None
    stamp: str


@dataclass(slots=True)
class Opened:
    """An open data or index stream and the HTTP status it came with (200 for files)."""

    stream: BinaryStream
    status: int

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


class ResponseBody(io.RawIOBase):
    """A urllib3 response body as a raw stream: a body read to its end gives its
    connection back to the pool; one closed early drops its connection. ``read`` hands
    urllib3's chunks on as they are (``readinto`` would copy each one twice)."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        super().__init__()
        self._response = response
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        import urllib3

        if self.closed:
            raise ValueError("read of a closed stream")
        if size == 0:
            return b""
        try:
            chunk = self._response.read(None if size is None or size < 0 else size)
        except urllib3.exceptions.HTTPError as exc:
            raise BackendUnavailableError(f"the connection broke mid-response: {exc}") from exc
        if not chunk or size is None or size < 0:
            self._done = True
        return chunk

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            if not self._done:
                self._response.close()
            self._response.release_conn()
        super().close()


def limit(stream: BinaryStream, hi: int | None, lo: int) -> BinaryStream:
    """*stream* (positioned at byte *lo*) cut at byte *hi* (``None``: not cut)."""
    if hi is None:
        return stream
    return cast(BinaryStream, Limited(stream, hi - lo))


class Limited(io.RawIOBase):
    """At most *limit* bytes of *inner*; closing it closes *inner*."""

    def __init__(self, inner: BinaryStream, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed stream")
        want = self._left if size is None or size < 0 else min(size, self._left)
        if want <= 0:
            return b""
        chunk = self._inner.read(want)
        self._left -= len(chunk)
        return chunk

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(1 << 20):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def skip(stream: BinaryStream, count: int) -> None:
    """Read and drop *count* bytes of *stream* (fewer at its end)."""
    while count > 0:
        chunk = stream.read(min(count, 1 << 16))
        if not chunk:
            return
        count -= len(chunk)


def file_path(url: str) -> str:
    """The local path a ``file:`` *url* names."""
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


def file_error(exc: OSError, url: str, key: str | None) -> Exception:
    """The storekeeper error for *exc* reading *url*: a missing data file of *key* is
    a :class:`KeyNotFoundError`, a missing index an unavailable backend."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        if key is not None:
            return KeyNotFoundError(key)
        return BackendUnavailableError(f"cannot read {url}: {exc.strerror}")
    if isinstance(exc, PermissionError):
        return AuthorizationError(f"cannot read {url}: {exc.strerror}")
    return BackendError(f"cannot read {url}: {exc}")


def status_error(status: int, url: str, key: str | None) -> Exception:
    """The storekeeper error for an HTTP *status* answered for *url* (404 of the data
    file of *key*: :class:`KeyNotFoundError`; 401, 403; anything else a backend error)."""
    if status == 404 and key is not None:
        return KeyNotFoundError(key)
    if status == 401:
        return AuthenticationError(f"{url} needs (other) credentials: HTTP 401")
    if status == 403:
        return AuthorizationError(f"{url} is forbidden: HTTP 403")
    if status == 404:
        return BackendUnavailableError(f"{url} not found: HTTP 404")
    return BackendError(f"{url} answered HTTP {status}")


def auth_headers(credentials: Any) -> dict[str, str]:
    """The ``Authorization`` header for *credentials*: ``None``, ``{"username",
    "password"}`` (HTTP Basic) or ``{"token"}`` (bearer); ``TypeError`` otherwise."""
    if credentials is None:
        return {}
    if not isinstance(credentials, Mapping):
        raise TypeError("credentials are a dict: {'username', 'password'} or {'token'}")
    token = credentials.get("token")
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    username, password = credentials.get("username"), credentials.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise TypeError("credentials need a str 'username' and 'password' (or a 'token')")
    pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {pair}"}
