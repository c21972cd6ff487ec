"""``POST /batch``: several writes applied in one transaction of the served store.

A :class:`~storekeeper.backends.http.DynamicURLStore` commits its transactions here, so
a commit is one request, and all-or-nothing wherever the served store's transactions
are (``atomic_transactions``). ``check`` entries make the batch fail (412) unless a key
is still at the version the client read, so a commit based on a key it only read does
not pass over another client's change of that key.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from storekeeper.backends.http_protocol import decode_batch
from storekeeper.errors import ConflictError, KeyNotFoundError
from storekeeper.server._bridge import read_body
from storekeeper.server._context import ServerContext
from storekeeper.server._http import json_response
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore, VersionedStore
from storekeeper.store.backend import check_precondition

__all__ = ["batch"]

#: Largest batch body when the server sets no ``max_upload``, in bytes.
MAX_BATCH = 256 * 1024 * 1024


async def batch(context: ServerContext, request: Request) -> Response:
    """Apply the writes of the body in order, in one transaction; answer each ``set``'s
    version (``null`` for the other entries). A failing write rolls all of them back
    (where the store's transactions are atomic) and is answered as its error.

    A batch of checks only (a client's read-only transaction) writes nothing, so it is
    answered by read-only servers too and by users who may only read: the keys are
    checked one after another, outside any transaction. That is enough: the client read
    every key before sending the batch, and versions never repeat, so each key that
    passes was unchanged from its read to its check, and at the moment of the first
    check every key was still at the version read.
    """
    store = await context.store_for(request)
    limit = context.max_upload if context.max_upload is not None else MAX_BATCH
    entries = decode_batch(await read_body(request.receive, limit))
    if all(header["op"] == "check" for header, _ in entries):
        await run_in_threadpool(_check_all, store, entries)
        return json_response([None] * len(entries))
    writable = context.writable(store)
    versions = await run_in_threadpool(_apply, writable, entries)
    return json_response(versions)


def _check_all(
    store: AbstractReadOnlyStore, entries: list[tuple[dict[str, Any], bytes | None]]
) -> None:
    for header, _ in entries:
        _check(store, header["key"], _conditions(header))


def _apply(store: AbstractStore, writes: list[tuple[dict[str, Any], bytes | None]]) -> list[Any]:
    versions: list[Any] = []
    with store.transaction(f"HTTP batch of {len(writes)} writes"):
        for header, data in writes:
            versions.append(_write(store, header, data))
    return versions


def _conditions(header: dict[str, Any]) -> dict[str, Any]:
    return {
        name: header[name] for name in ("if_version", "if_exists") if header.get(name) is not None
    }


def _write(store: AbstractStore, header: dict[str, Any], data: bytes | None) -> str | None:
    """One entry, as checked by ``decode_batch`` (metadata and data where the
    operation takes them)."""
    key, operation = header["key"], header["op"]
    conditions = _conditions(header)
    metadata: dict[str, Any] = header.get("metadata") or {}
    if operation == "check":
        _check(store, key, conditions)
    elif operation == "set":
        return store.set(key, (data, metadata), **conditions)
    elif operation == "set_data":
        store.set_data(key, data, **conditions)
    elif operation == "set_metadata":
        store.set_metadata(key, metadata, **conditions)
    elif operation == "update_metadata":
        store.update_metadata(key, metadata, **conditions)
    else:
        store.delete(key, **conditions)
    return None


def _check(store: AbstractReadOnlyStore, key: str, conditions: dict[str, Any]) -> None:
    """A ``check`` entry: ConflictError unless *key* is as the client read it (at
    ``if_version``, missing with ``if_exists: false``, present at any version with
    ``if_exists: true``)."""
    expected, exists = conditions.get("if_version"), conditions.get("if_exists")
    try:
        current = (
            store.version_of(key) if isinstance(store, VersionedStore) else store.get(key).version
        )
    except KeyNotFoundError:
        check_precondition(key, None, expected, exists)
        return
    if current is None:  # present, at a version the store cannot tell
        if expected is not None:
            raise ConflictError(f"the version of {key!r} is unknown: it cannot be checked")
        check_precondition(key, "", None, exists)
        return
    check_precondition(key, current, expected, exists)
