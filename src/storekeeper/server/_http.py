"""HTTP details of the server: dates, entity tags, byte ranges and error responses."""

from __future__ import annotations

import email.utils
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidValueError,
    KeyNotFoundError,
    LockTimeoutError,
    NotConnectedError,
    ReadOnlyStoreError,
    StorekeeperError,
    TransactionError,
)

__all__ = [
    "HTTPProblem",
    "error_response",
    "etag",
    "http_date",
    "matches_etag",
    "matches_if_match",
    "parse_etags",
    "parse_range",
    "strong_versions",
]

_log = logging.getLogger("storekeeper.server")

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: list[tuple[type[BaseException], int]] = [
    (KeyNotFoundError, 404),
    (InvalidKeyError, 400),
    (InvalidMetadataError, 400),
    (InvalidValueError, 400),
    (InvalidArgumentError, 400),
    (ConflictError, 412),
    (AuthenticationError, 401),
    (AuthorizationError, 403),
    (ReadOnlyStoreError, 405),
    (TransactionError, 409),
    (LockTimeoutError, 503),
    (NotConnectedError, 503),
    (BackendError, 502),
]


class HTTPProblem(Exception):  # noqa: N818 - it is an answer, not a failure of ours
    """An error the server answers with *status* and a JSON body naming *error*."""

    def __init__(
        self,
        status: int,
        message: str,
        error: str = "HTTPError",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.headers = dict(headers or {})


def error_response(exc: BaseException, challenge: str | None = None) -> Response:
    """The response for *exc*: its status and ``{"error": name, "message": text}``.

    Errors that are not storekeeper's are logged and answered 500 without details.
    *challenge* is the ``WWW-Authenticate`` header value sent with a 401.
    """
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPProblem):
        status, name, message = exc.status, exc.error, str(exc)
        headers.update(exc.headers)
    elif isinstance(exc, StorekeeperError):
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
        name, message = type(exc).__name__, str(exc)
        if status == 405:
            headers["Allow"] = "GET, HEAD"
    else:
        _log.error("internal error", exc_info=exc)
        status, name, message = 500, "InternalServerError", "internal server error"
    if status == 401 and challenge is not None:
        headers.setdefault("WWW-Authenticate", challenge)
    body = json.dumps({"error": name, "message": message}).encode()
    return Response(body, status, headers, media_type="application/json")


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """*payload* as a compact JSON response (ASCII, so any client decodes it)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status, dict(headers or {}), media_type="application/json")


def http_date(timestamp: float | None) -> str | None:
    """*timestamp* (POSIX seconds) as an RFC 1123 date, or ``None``."""
    if timestamp is None:
        return None
    return _whole_second_date(int(timestamp))


@functools.lru_cache(maxsize=256)
def _whole_second_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def etag(version: str | None) -> str | None:
    """The strong entity tag of a store *version*, or ``None``."""
    if version is None:
        return None
    return '"' + version.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_etags(header: str) -> list[tuple[bool, str]] | None:
    """The entity tags of an ``If-Match``/``If-None-Match`` *header* as ``(weak,
    version)`` pairs; ``None`` for ``*``. HTTPProblem 400 for a malformed list."""
    if header.strip() == "*":
        return None
    tags: list[tuple[bool, str]] = []
    rest = header.strip()
    while rest:
        rest = rest.lstrip(", \t")
        weak = rest.startswith("W/")
        rest = rest.removeprefix("W/")
        if not rest.startswith('"'):
            raise HTTPProblem(400, f"malformed entity tag list {header!r}", "InvalidArgumentError")
        value, index = [], 1
        while index < len(rest) and rest[index] != '"':
            if rest[index] == "\\" and index + 1 < len(rest):
                index += 1
            value.append(rest[index])
            index += 1
        if index >= len(rest):
            raise HTTPProblem(400, f"malformed entity tag list {header!r}", "InvalidArgumentError")
        tags.append((weak, "".join(value)))
        rest = rest[index + 1 :].lstrip(" \t")
    return tags


def strong_versions(header: str) -> list[str] | None:
    """The versions an ``If-Match`` *header* accepts (``None`` for ``*``): its strong
    tags only, since If-Match uses the strong comparison (RFC 9110 13.1.1) and a weak
    tag matches nothing."""
    tags = parse_etags(header)
    return None if tags is None else [version for weak, version in tags if not weak]


def matches_etag(header: str, version: str | None) -> bool:
    """Whether the ``If-None-Match``-style *header* names *version* of an existing
    value (``*`` names every one), by the weak comparison (RFC 9110 13.1.2)."""
    tags = parse_etags(header)
    if tags is None:
        return True
    return version is not None and any(version == tagged for _, tagged in tags)


def matches_if_match(header: str, version: str | None) -> bool:
    """Whether an ``If-Match`` *header* lets a request on an existing value at
    *version* through: ``*``, or a strong tag equal to *version*."""
    versions = strong_versions(header)
    if versions is None:
        return True
    return version is not None and version in versions


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The end-exclusive byte range ``(start, end)`` a ``Range`` *header* asks of a value
    of *size* bytes; ``None`` to serve the whole value (a header that is not one
    ``bytes=`` range, which HTTP allows a server to ignore).

    Raises :class:`HTTPProblem` 416 for a range that lies outside the value.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # "-N": the last N bytes
            count = int(last)
            if count <= 0:
                raise _unsatisfiable(size)
            return max(0, size - count), size
        start = int(first)
        end = size if not last else int(last) + 1
    except ValueError:
        return None
    if start < 0 or (last and end <= start):  # "bytes=5-3": not a valid range
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> HTTPProblem:
    return HTTPProblem(
        416,
        f"the range lies outside the value's {size} bytes",
        "RangeNotSatisfiable",
        {"Content-Range": f"bytes */{size}"},
    )
