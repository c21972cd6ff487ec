"""Small pieces of the HTTP exchange of :class:`~storekeeper.backends.http.DynamicURLStore`:
request headers for preconditions, versions and times from response headers, and body
helpers."""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping

from storekeeper.backends._http_streams import ResponseStream
from storekeeper.backends.http_protocol import CREATED, MODIFIED
from storekeeper.errors import BackendError
from storekeeper.store.backend import decode_metadata

__all__ = [
    "batch_header",
    "condition_headers",
    "etag_version",
    "json_lines",
    "prefixed",
    "read_exactly",
    "value_times",
    "watched",
]


#: A backslash-escaped character inside an entity tag (the server escapes ``"`` and ``\\``).
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def batch_header(operation: str, key: str, metadata_json: str | None = None) -> dict[str, object]:
    """The ``/batch`` header of one write (see ``http_protocol.encode_batch``)."""
    header: dict[str, object] = {"op": operation, "key": key}
    if metadata_json is not None:
        header["metadata"] = decode_metadata(metadata_json)
    return header


def condition_headers(if_version: str | None, if_exists: bool | None) -> dict[str, str]:
    """``If-Match`` / ``If-None-Match`` for the preconditions of a write."""
    headers: dict[str, str] = {}
    if if_version is not None:
        headers["If-Match"] = '"' + if_version.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if if_exists is True:
        headers.setdefault("If-Match", "*")
    elif if_exists is False:
        headers["If-None-Match"] = "*"
    return headers


def etag_version(tag: str | None) -> str | None:
    """The store version an ``ETag`` header names (``None`` without one)."""
    if tag is None:
        return None
    tag = tag.removeprefix("W/")
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    if "\\" in tag:  # escapes appear only in versions holding a quote or a backslash
        tag = _ESCAPED.sub(r"\1", tag)
    return tag


def value_times(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """``(created, modified)`` from a response's headers (``None`` where not told)."""
    found: list[float | None] = []
    for name, fallback in ((CREATED, None), (MODIFIED, "Last-Modified")):
        text = headers.get(name)
        try:
            found.append(float(text) if text is not None else None)
        except ValueError:
            found.append(None)
        if found[-1] is None and fallback is not None and headers.get(fallback):
            with contextlib.suppress(TypeError, ValueError):
                found[-1] = email.utils.parsedate_to_datetime(headers[fallback]).timestamp()
    return found[0], found[1]


def read_exactly(stream: ResponseStream, count: int) -> bytes:
    """The next *count* bytes of *stream*; BackendError if the answer ends first."""
    parts, left = [], count
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            raise BackendError("the server's answer ended early")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def json_lines(stream: ResponseStream) -> Iterator[str]:
    """The JSON strings of a ``/list`` answer, one per line, read as they arrive."""
    with io.BufferedReader(stream, 8192) as reader:
        for line in reader:
            yield json.loads(line)


def prefixed(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """*head*, then *chunks*."""
    yield head
    yield from chunks


def watched(chunks: Iterable[bytes], failure: list[BaseException]) -> Iterator[bytes]:
    """*chunks*, noting in *failure* an error their source raises (urllib3 wraps it)."""
    try:
        yield from chunks
    except BaseException as exc:
        failure.append(exc)
        raise
