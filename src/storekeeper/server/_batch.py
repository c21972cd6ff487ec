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
from storekeeper.errors import InvalidArgumentError, InvalidMetadataError, KeyNotFoundError
from storekeeper.server._bridge import read_body
from storekeeper.server._context import ServerContext
from storekeeper.server._http import json_response
from storekeeper.store.abstract import AbstractStore, VersionedStore
from storekeeper.store.backend import check_conditions, check_precondition

__all__ = ["batch"]

#: Largest batch body when the server sets no ``max_upload``, in bytes.
MAX_BATCH = 256 * 1024 * 1024


async def batch(context: ServerContext, request: Request) -> Response:
    """Apply the writes of the body in order, in one transaction; answer each ``set``'s
    version (``null`` for the other entries). A failing write rolls all of them back
    (where the store's transactions are atomic) and is answered as its error."""
    store = context.writable(await context.store_for(request))
    limit = context.max_upload if context.max_upload is not None else MAX_BATCH
    writes = decode_batch(await read_body(request.receive, limit))
    versions = await run_in_threadpool(_apply, store, writes)
    return json_response(versions)


def _apply(store: AbstractStore, writes: list[tuple[dict[str, Any], bytes | None]]) -> list[Any]:
    versions: list[Any] = []
    with store.transaction(f"HTTP batch of {len(writes)} writes"):
        for header, data in writes:
            versions.append(_write(store, header, data))
    return versions


def _write(store: AbstractStore, header: dict[str, Any], data: bytes | None) -> str | None:
    key, operation = header["key"], header["op"]
    conditions = {
        name: header[name] for name in ("if_version", "if_exists") if header.get(name) is not None
    }
    if operation == "check":
        _check(store, key, conditions)
        return None
    metadata = header.get("metadata")
    if operation in {"set", "set_metadata", "update_metadata"} and not isinstance(metadata, dict):
        raise InvalidMetadataError(f"the batch write {operation} of {key!r} needs metadata")
    if operation in {"set", "set_data"} and data is None:
        raise InvalidArgumentError(f"the batch write {operation} of {key!r} needs data")
    if operation == "set":
        return store.set(key, (data, metadata), **conditions)
    if operation == "set_data":
        store.set_data(key, data, **conditions)
    elif operation == "set_metadata":
        store.set_metadata(key, metadata, **conditions)  # type: ignore[arg-type]
    elif operation == "update_metadata":
        store.update_metadata(key, metadata, **conditions)  # type: ignore[arg-type]
    else:
        store.delete(key, **conditions)
    return None


def _check(store: AbstractStore, key: str, conditions: dict[str, Any]) -> None:
    """A ``check`` entry: ConflictError unless *key* is as the client read it (at
    ``if_version``, or missing with ``if_exists: false``)."""
    if not conditions:
        raise InvalidArgumentError(f"the batch check of {key!r} names no version")
    check_conditions(conditions.get("if_version"), conditions.get("if_exists"))
    try:
        current = (
            store.version_of(key) if isinstance(store, VersionedStore) else store.get(key).version
        )
    except KeyNotFoundError:
        current = None
    check_precondition(key, current, conditions.get("if_version"), conditions.get("if_exists"))
