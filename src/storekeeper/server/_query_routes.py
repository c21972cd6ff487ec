"""``/query``, ``/list`` and ``/info``: questions about many keys, and about the server."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from storekeeper.backends.http_protocol import decode_terms
from storekeeper.errors import InvalidArgumentError, InvalidMetadataError
from storekeeper.server._bridge import read_body
from storekeeper.server._context import ServerContext, parse_json
from storekeeper.server._http import HTTPProblem, json_response
from storekeeper.store.abstract import AbstractAuthorizingStore

__all__ = ["info", "list_keys", "query_get", "query_post"]

#: Characters a key in the answer of ``GET /query`` (one key per line) cannot hold.
LINE_BREAKS = frozenset("\r\n")

#: Keys listed per worker-thread hop.
LIST_BATCH = 512


async def query_get(context: ServerContext, request: Request) -> Response:
    """``GET /query?name=json&...``: the matching keys, one per line, UTF-8.

    Each parameter value is ``json.dumps`` of the value to match exactly (what the
    encore client sends). No parameter: every key. A matching key holding a line break
    makes the answer 409 rather than a forged line; ``POST /query`` answers such keys.
    """
    store = await context.store_for(request)
    terms: dict[str, Any] = {}
    text = request.scope.get("query_string", b"").decode("latin-1")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgumentError("query parameters are not UTF-8") from None
    for name, value in pairs:
        if name in terms:
            raise InvalidArgumentError(f"the query parameter {name!r} is given twice")
        try:
            terms[name] = json.loads(value)
        except ValueError:
            raise InvalidMetadataError(
                f"the query parameter {name!r} is not JSON: {value!r}"
            ) from None
        except RecursionError:
            raise InvalidMetadataError(
                f"the query parameter {name!r} is JSON nested too deeply"
            ) from None
    keys = await run_in_threadpool(lambda: list(store.query_keys(terms)))
    broken = next((key for key in keys if not LINE_BREAKS.isdisjoint(key)), None)
    if broken is not None:  # never let a key forge lines of the answer
        raise HTTPProblem(
            409,
            f"the matching key {broken!r} holds a line break, which one key per line cannot "
            "express: ask POST /query (JSON) instead",
            "UnlistableKey",
        )
    body = "".join(key + "\n" for key in keys).encode("utf-8", "surrogatepass")
    return Response(body, media_type="text/plain; charset=utf-8")


async def query_post(context: ServerContext, request: Request) -> Response:
    """``POST /query`` with JSON ``{"where": terms, "select": names|null, "keys": bool}``:
    a JSON list of keys (``keys`` true) or of ``[key, metadata]`` pairs."""
    store = await context.store_for(request)
    body = parse_json(await read_body(request.receive, context.max_json), "query")
    terms = decode_terms(body.get("where", {}))
    select = body.get("select")
    if select is not None and not (
        isinstance(select, list) and all(isinstance(name, str) for name in select)
    ):
        raise InvalidArgumentError("select is a list of metadata names or null")
    if body.get("keys", False):
        keys = await run_in_threadpool(store.query_keys, terms)
        return json_response(keys)
    pairs = await run_in_threadpool(store.query, select, terms)
    return json_response([[key, metadata] for key, metadata in pairs])


async def list_keys(context: ServerContext, request: Request) -> Response:
    """``GET /list?prefix=...&delimiter=...``: the keys under the prefix in key order,
    folders (keys up to the delimiter) listed once, streamed as the store lists them:
    a JSON array, or one JSON string per line when the request accepts
    ``application/x-ndjson``."""
    store = await context.store_for(request)
    prefix = request.query_params.get("prefix", "")
    delimiter = request.query_params.get("delimiter") or None
    keys = await run_in_threadpool(store.list_keys, prefix, delimiter)

    lines = "application/x-ndjson" in request.headers.get("accept", "")
    separator, opening, closing = ("\n", "", "") if lines else (",", "[", "]")

    async def pieces() -> AsyncIterator[bytes]:
        yield opening.encode()
        first = True
        while True:
            batch = await run_in_threadpool(lambda: list(itertools.islice(keys, LIST_BATCH)))
            if not batch:
                break
            text = separator.join(json.dumps(key) for key in batch)
            yield (("" if first or lines else ",") + text + ("\n" if lines else "")).encode()
            first = False
        yield closing.encode()

    media = "application/x-ndjson" if lines else "application/json"
    return StreamingResponse(pieces(), media_type=media)


async def info(context: ServerContext, request: Request) -> Response:
    """``GET /info``: ``{"read_only", "auth", "user", "permissions", "capabilities",
    "batch", "batch_checks"}`` for the caller."""
    store = await context.store_for(request)
    user = store.user_tag if isinstance(store, AbstractAuthorizingStore) else None
    return json_response(
        {
            "read_only": context.read_only,
            "auth": context.guard is not None,
            "user": user,
            "permissions": isinstance(store, AbstractAuthorizingStore),
            "capabilities": dataclasses.asdict(store.capabilities),
            "batch": True,
            "batch_checks": True,
        }
    )
