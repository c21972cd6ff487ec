"""``{base}/{key}/{part}``: the data, metadata and permissions of one key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from storekeeper.backends.http_protocol import CREATED, METADATA_LENGTH, MODIFIED
from storekeeper.errors import InvalidValueError
from storekeeper.server._bridge import BodyReader, ClientGone, iterate_stream, read_body
from storekeeper.server._context import ServerContext, conditions, note_origin, parse_json
from storekeeper.server._http import (
    HTTPProblem,
    error_response,
    etag,
    http_date,
    matches_etag,
    matches_if_match,
    parse_range,
)
from storekeeper.server._paths import key_and_part, raw_remainder
from storekeeper.store.abstract import AbstractAuthorizingStore, AbstractReadOnlyStore
from storekeeper.store.backend import select_metadata
from storekeeper.store.value import Value

__all__ = ["StoreEndpoint"]

#: Values up to this size are read in one worker-thread hop and sent in one piece.
SMALL_VALUE = 256 * 1024
#: Request bodies of a known length up to this size are read before the store is called.
SMALL_BODY = 256 * 1024
_OCTETS = "application/octet-stream"


@dataclass
class _Loaded:
    """What a read found: status, headers, and the body as bytes or an open stream."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: IO[bytes] | None = None


class StoreEndpoint:
    """The ASGI application mounted at ``/store``."""

    def __init__(self, context: ServerContext, mount: str = "/store") -> None:
        self.context = context
        self.mount = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        note_origin(request.headers)
        try:
            response = await self._dispatch(request, scope, receive)
        except ClientGone:
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes an HTTP answer
            response = error_response(exc, self.context.challenge(request))
        await response(scope, receive, send)

    async def _dispatch(  # noqa: PLR0911 - one return per route
        self, request: Request, scope: Scope, receive: Receive
    ) -> Response:
        method = request.method
        raw = raw_remainder(scope, self.mount)
        key, part = key_and_part(raw, method != "DELETE")
        store = await self.context.store_for(request)
        headers = request.headers
        if method == "DELETE":
            writable = self.context.writable(store)
            found = conditions(headers, allow_exists=False)
            await run_in_threadpool(lambda: writable.delete(key, **found.for_key(writable, key)))
            return Response(status_code=204)
        if part == "data":
            if method in {"GET", "HEAD"}:
                return await self._read(store, key, headers, method == "HEAD", False)
            if method == "PUT":
                writable = self.context.writable(store)
                found = conditions(headers)
                source = await self._body(headers, receive)
                await run_in_threadpool(
                    lambda: writable.set_data(key, source, **found.for_key(writable, key))
                )
                return Response(status_code=204)
        elif part == "value":
            if method in {"GET", "HEAD"}:
                return await self._read(store, key, headers, method == "HEAD", True)
            if method == "PUT":
                return await self._put_value(store, key, headers, receive)
        elif part == "metadata":
            return await self._metadata(store, key, request, receive)
        elif part == "auth":
            return await self._permissions(store, key, request, receive)
        raise _not_allowed(method, part)

    # -- data -----------------------------------------------------------------------------
    async def _read(
        self, store: AbstractReadOnlyStore, key: str, headers: Headers, head: bool, whole: bool
    ) -> Response:
        loaded = await run_in_threadpool(_load, store, key, headers, head, whole)
        if loaded.stream is None:
            return Response(loaded.body, loaded.status, loaded.headers, media_type=None)
        return StreamingResponse(
            iterate_stream(loaded.stream, loaded.body), loaded.status, loaded.headers
        )

    async def _put_value(
        self, store: AbstractReadOnlyStore, key: str, headers: Headers, receive: Receive
    ) -> Response:
        writable = self.context.writable(store)
        text = headers.get(METADATA_LENGTH, "")
        if not text.isascii() or not text.isdigit():
            raise HTTPProblem(
                400, f"a value body needs the {METADATA_LENGTH} header", "InvalidValueError"
            )
        length = int(text)
        if length > self.context.max_json:
            raise HTTPProblem(413, f"metadata over {self.context.max_json} bytes", "TooLarge")
        found = conditions(headers)
        source = await self._body(headers, receive)

        def write() -> str | None:
            if isinstance(source, bytes):
                if len(source) < length:
                    raise HTTPProblem(400, "the request body ended early", "InvalidValueError")
                metadata = parse_json(source[:length], "metadata")
                return writable.set(
                    key, (source[length:], metadata), **found.for_key(writable, key)
                )
            metadata = parse_json(source.read_exactly(length), "metadata")
            return writable.set(key, (source, metadata), **found.for_key(writable, key))

        version = await run_in_threadpool(write)
        tag = etag(version)
        return Response(status_code=204, headers={} if tag is None else {"ETag": tag})

    async def _body(self, headers: Headers, receive: Receive) -> bytes | BodyReader:
        """The request body: read here when it is small and its length is known (one
        worker-thread hop for the whole write), else a reader the store streams from."""
        length = headers.get("content-length", "")
        limit = self.context.max_upload
        if length.isascii() and length.isdigit() and int(length) <= SMALL_BODY:
            if limit is not None and int(length) > limit:
                raise HTTPProblem(413, f"the request body exceeds {limit} bytes", "TooLarge")
            return await read_body(receive, SMALL_BODY if limit is None else limit)
        return BodyReader(receive, limit)

    # -- metadata and permissions ---------------------------------------------------------
    async def _metadata(
        self, store: AbstractReadOnlyStore, key: str, request: Request, receive: Receive
    ) -> Response:
        method = request.method
        if method in {"GET", "HEAD"}:
            select = request.query_params.getlist("select") or None
            loaded = await run_in_threadpool(_load_metadata, store, key, select, request.headers)
            return _answer(loaded, method == "HEAD")
        if method not in {"PUT", "POST"}:
            raise _not_allowed(method, "metadata")
        writable = self.context.writable(store)
        body = await read_body(receive, self.context.max_json)
        metadata = parse_json(body, "metadata")
        if method == "PUT":
            found = conditions(request.headers)
            await run_in_threadpool(
                lambda: writable.set_metadata(key, metadata, **found.for_key(writable, key))
            )
        else:
            found = conditions(request.headers, allow_exists=False)
            await run_in_threadpool(
                lambda: writable.update_metadata(key, metadata, **found.for_key(writable, key))
            )
        return Response(status_code=204)

    async def _permissions(
        self, store: AbstractReadOnlyStore, key: str, request: Request, receive: Receive
    ) -> Response:
        if not isinstance(store, AbstractAuthorizingStore):
            raise HTTPProblem(404, "this store keeps no permissions", "NotFound")
        method = request.method
        if method in {"GET", "HEAD"}:
            permissions = await run_in_threadpool(store.get_permissions, key)
            body = json.dumps({name: sorted(tags) for name, tags in permissions.items()})
            found = _Loaded(200, {"Content-Type": "application/json"}, body.encode())
            return _answer(found, method == "HEAD")
        if method not in {"PUT", "POST"} or self.context.read_only:
            raise _not_allowed(method, "auth", "GET, HEAD" if self.context.read_only else None)
        given = parse_json(await read_body(receive, self.context.max_json), "permissions")
        if not all(isinstance(tags, list) for tags in given.values()):
            raise HTTPProblem(400, "permissions map names to lists of tags", "InvalidArgumentError")
        change = store.set_permissions if method == "PUT" else store.update_permissions
        await run_in_threadpool(change, key, given)
        return Response(status_code=204)


#: The methods each part answers (RFC 9110 15.5.6: a 405 names them in ``Allow``).
_ALLOWED = {
    "data": "GET, HEAD, PUT",
    "value": "GET, HEAD, PUT",
    "metadata": "GET, HEAD, PUT, POST",
    "auth": "GET, HEAD, PUT, POST",
}


def _answer(loaded: _Loaded, head: bool) -> Response:
    """The response for *loaded* (a whole body in memory): a HEAD gets the GET's headers,
    ``Content-Length`` included, and no body (RFC 9110 9.3.2)."""
    if not head:
        return Response(loaded.body, loaded.status, loaded.headers, media_type=None)
    headers = dict(loaded.headers)
    if loaded.status == 200:
        headers["Content-Length"] = str(len(loaded.body))
    return Response(b"", loaded.status, headers, media_type=None)


def _not_allowed(method: str, part: str | None, allow: str | None = None) -> HTTPProblem:
    """The 405 answer to *method* on *part*, with the ``Allow`` header it needs."""
    allowed = allow or _ALLOWED.get(part or "", "GET, HEAD")
    return HTTPProblem(
        405, f"{method} is not allowed on {part}", "MethodNotAllowed", {"Allow": allowed}
    )


def _load(
    store: AbstractReadOnlyStore, key: str, headers: Headers, head: bool, whole: bool
) -> _Loaded:
    """Read *key* for a GET or HEAD (in a worker thread): validators, conditional and
    range handling, and the body (small values read here, large ones left open)."""
    value = store.get(key)
    size = value.size
    tag = etag(value.version)
    found = _Loaded(200, _validators(value, tag, whole))
    if _not_modified(headers, key, value.version):
        found.status = 304
        return found
    found.headers["Content-Type"] = _OCTETS
    prefix = b""
    if whole:
        prefix = json.dumps(value.metadata, separators=(",", ":")).encode()
        found.headers[METADATA_LENGTH] = str(len(prefix))
    start, end = 0, size
    if size is not None and not whole:
        requested = headers.get("range")
        if requested is not None and headers.get("if-range", tag) == tag:
            span = parse_range(requested, size)
            if span is not None:
                start, end = span
                found.status = 206
                found.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if end is not None:
        found.headers["Content-Length"] = str(len(prefix) + end - start)
    if head:
        return found
    stream = value.data if found.status == 200 else value.range(start, end)
    try:
        if end is not None and end - start <= SMALL_VALUE:
            found.body = prefix + _read_all(stream, end - start)
            stream.close()
            return found
    except BaseException:
        stream.close()
        raise
    found.body, found.stream = prefix, stream
    return found


def _load_metadata(
    store: AbstractReadOnlyStore, key: str, select: list[str] | None, headers: Headers
) -> _Loaded:
    """Read *key*'s metadata for a GET (in a worker thread), with the ETag of the version
    it belongs to (the data's ETag for that version) and the same conditional handling
    as a data GET. Read through ``get`` so that the metadata and the tag come from one
    read: a tag of another version would let a client's check of what it read pass
    over a change."""
    value = store.get(key)
    tag = etag(value.version)
    found = _Loaded(200, {"Cache-Control": "no-cache"})
    if tag is not None:
        found.headers["ETag"] = tag
    if _not_modified(headers, key, value.version):
        found.status = 304
        return found
    found.headers["Content-Type"] = "application/json"
    metadata = select_metadata(value.metadata, select)
    found.body = json.dumps(metadata, separators=(",", ":")).encode()
    return found


def _not_modified(headers: Mapping[str, str], key: str, version: str | None) -> bool:
    """Whether a read of *key* at *version* answers 304 (``If-None-Match`` names it);
    412 (HTTPProblem) when ``If-Match`` names none of its versions."""
    if_match = headers.get("if-match")
    if if_match is not None and not matches_if_match(if_match, version):
        raise HTTPProblem(412, f"{key!r} is at none of the If-Match versions", "ConflictError")
    if_none_match = headers.get("if-none-match")
    return if_none_match is not None and matches_etag(if_none_match, version)


def _validators(value: Value, tag: str | None, whole: bool) -> dict[str, str]:
    """The headers that describe the version of *value* a read found."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if tag is not None:
        headers["ETag"] = tag
    modified = http_date(value.modified)
    if modified is not None:
        headers["Last-Modified"] = modified
    if whole:  # the client's get(): times to the microsecond, not the second
        if value.modified is not None:
            headers[MODIFIED] = repr(value.modified)
        if value.created is not None:
            headers[CREATED] = repr(value.created)
    return headers


def _read_all(stream: IO[bytes], length: int) -> bytes:
    data = stream.read(length)
    while len(data) < length:
        more = stream.read(length - len(data))
        if not more:
            raise InvalidValueError("the stored value is shorter than its size")
        data += more
    return data
