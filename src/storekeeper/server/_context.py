"""What every request handler shares: the store, its limits and who is asking."""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from storekeeper.errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidMetadataError,
    KeyNotFoundError,
    ReadOnlyStoreError,
)
from storekeeper.server._bridge import ClientGone
from storekeeper.server._http import HTTPProblem, error_response, parse_etags, strong_versions
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore, VersionedStore

__all__ = [
    "ORIGIN",
    "Conditions",
    "Guard",
    "ServerContext",
    "conditions",
    "handled",
    "note_origin",
    "parse_json",
]

#: The ``X-Storekeeper-Origin`` of the request being handled; store calls made for it
#: (in worker threads, which copy the context) see it, so its change events carry it.
ORIGIN: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "storekeeper-server-origin", default=None
)


def note_origin(headers: Headers) -> None:
    """Remember the request's origin header for the change events it causes."""
    ORIGIN.set(headers.get("x-storekeeper-origin"))


#: Default limit of a JSON request body (metadata, permissions, query), in bytes.
MAX_JSON = 16 * 1024 * 1024
BASIC_CHALLENGE = 'Basic realm="storekeeper", charset="UTF-8"'


class Guard(Protocol):
    """Authentication: the store as the requesting user sees it."""

    async def store_for(self, request: Request) -> AbstractReadOnlyStore:
        """The user's view of the store; AuthenticationError without valid credentials."""
        ...

    def challenge(self, request: Request) -> str:
        """The ``WWW-Authenticate`` value to answer an unauthenticated *request* with."""
        ...


class ServerContext:
    """The served store and its settings, shared by the handlers of one application."""

    def __init__(
        self,
        store: AbstractReadOnlyStore,
        *,
        read_only: bool,
        guard: Guard | None,
        max_upload: int | None,
        max_json: int = MAX_JSON,
    ) -> None:
        self.store = store
        self.read_only = read_only or not isinstance(store, AbstractStore)
        self.guard = guard
        self.max_upload = max_upload
        self.max_json = max_json

    async def store_for(self, request: Request) -> AbstractReadOnlyStore:
        """The store as the requesting user may see it."""
        if self.guard is None:
            return self.store
        return await self.guard.store_for(request)

    def writable(self, store: AbstractReadOnlyStore) -> AbstractStore:
        """*store* for a write; ReadOnlyStoreError when the server is read-only."""
        if self.read_only or not isinstance(store, AbstractStore):
            raise ReadOnlyStoreError("this server is read-only")
        return store

    def challenge(self, request: Request) -> str:
        """The ``WWW-Authenticate`` value for a 401 answer to *request*."""
        return BASIC_CHALLENGE if self.guard is None else self.guard.challenge(request)


Handler = Callable[[ServerContext, Request], Awaitable[Response | None]]


def handled(context: ServerContext, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running *handler*, answering its errors as JSON errors."""

    async def endpoint(request: Request) -> Response:
        note_origin(request.headers)
        try:
            response = await handler(context, request)
        except ClientGone:
            return Response(status_code=499)  # nobody is listening any more
        except Exception as exc:  # noqa: BLE001 - every failure becomes an HTTP answer
            return error_response(exc, context.challenge(request))
        return response if response is not None else Response(status_code=204)

    return endpoint


class Conditions(dict[str, Any]):
    """Keyword preconditions (``if_version`` / ``if_exists``) read from request headers.

    ``candidates`` holds the versions of an ``If-Match`` list of several strong tags:
    a store compares one version, so :meth:`for_key` picks the one the key is at.
    """

    candidates: list[str] | None = None

    def for_key(self, store: AbstractReadOnlyStore, key: str) -> dict[str, Any]:
        """The keywords for a write of *key* (in a worker thread). With several
        candidates, the key's current version if it is one of them (the write then
        still checks it atomically); ConflictError (412) if none matches."""
        if self.candidates is None:
            return self
        current: str | None
        try:
            if isinstance(store, VersionedStore):
                current = store.version_of(key)
            else:
                current = store.get(key).version
        except KeyNotFoundError:
            raise ConflictError(f"{key!r} does not exist: If-Match fails") from None
        if current is None or current not in self.candidates:
            raise ConflictError(f"{key!r} is at none of the If-Match versions")
        return {**self, "if_version": current}


def conditions(headers: Headers, *, allow_exists: bool = True) -> Conditions:
    """``If-Match`` / ``If-None-Match: *`` as ``if_version`` / ``if_exists`` keywords.

    ``If-Match: *`` means the key must exist, ``If-Match: "v"`` that it is at version
    ``v``, a list of tags that it is at one of them. If-Match compares strongly: weak
    tags (``W/"v"``) never match, so a header of weak tags only fails at once (412).
    ``If-None-Match: *`` means the key must not exist; a tag in ``If-None-Match`` is
    refused with 400.
    """
    found = Conditions()
    if_match = headers.get("if-match")
    if if_match is not None:
        versions = strong_versions(if_match)
        if versions is None:
            found["if_exists"] = True
        elif not versions:
            raise HTTPProblem(
                412, "If-Match names no strong entity tag; weak ones never match", "ConflictError"
            )
        elif len(set(versions)) == 1:
            found["if_version"] = versions[0]
        else:
            found.candidates = versions
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if parse_etags(if_none_match) is not None:
            raise InvalidArgumentError("a write takes If-None-Match: * only")
        if found.get("if_exists") is True:
            raise HTTPProblem(
                412, "If-Match: * and If-None-Match: * exclude each other", "ConflictError"
            )
        found["if_exists"] = False
    if not allow_exists and "if_exists" in found and found.pop("if_exists") is not True:
        raise InvalidArgumentError("this write takes If-Match only")
    return found


def parse_json(body: bytes, what: str, kind: type = dict) -> Any:
    """*body* decoded as a JSON *kind*; InvalidMetadataError (400) otherwise, also for
    JSON nested deeper than the decoder can follow."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMetadataError(f"the {what} is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses per nesting level: hostile depth
        raise InvalidMetadataError(f"the {what} JSON is nested too deeply") from None
    if not isinstance(value, kind):
        raise InvalidMetadataError(
            f"the {what} is a JSON {kind.__name__}, not {type(value).__name__}"
        )
    return value
