"""The wire format shared by :class:`~storekeeper.backends.http.DynamicURLStore` and
:mod:`storekeeper.server`: standard library only, so the server needs no HTTP client.

The layout (``base`` is ``http://HOST:PORT/store``)::

    HEAD/GET  {base}/{key}/data        data (Content-Length, ETag, Last-Modified, Range)
    PUT       {base}/{key}/data        replace the data, keep the metadata
    HEAD/GET  {base}/{key}/metadata    metadata as JSON, with the ETag of the value's
                                       version (If-Match, If-None-Match);
                                       ?select=NAME (repeatable; ?select= alone: no
                                       field) answers only those fields
    PUT       {base}/{key}/metadata    replace the metadata, keep the data
    POST      {base}/{key}/metadata    metadata merged like dict.update
    HEAD/GET/PUT/POST {base}/{key}/auth  permissions: {permission: [tags]}
    HEAD/GET/PUT {base}/{key}/value    data and metadata in one body (see below)
    DELETE    {base}/{key}             delete the key
    GET       /query?name=json...      matching keys, one per line (UTF-8); 409 when
                                       one holds a line break
    POST      /query                   JSON {"where": {...}, "select": [...]} -> JSON
    GET       /list?prefix=&delimiter= keys (folders) under a prefix, in key order, as a
                                       JSON array (one JSON string per line with
                                       Accept: application/x-ndjson), streamed
    POST      /batch                   writes applied in one transaction (see below)
    GET       /info                    {"read_only", "auth", "user", "permissions",
                                        "capabilities", "batch", "batch_checks"}

A *value body* is the metadata as UTF-8 JSON followed by the data; the header
:data:`METADATA_LENGTH` gives the length of the JSON part in bytes. Error responses
carry JSON ``{"error": class name, "message": text}``; :func:`error_class` maps the
name back to the storekeeper exception.

A *batch* body is a sequence of entries, each a line of JSON naming its ``op`` and
``key``. Writes: ``set`` (``metadata``, ``size``), ``set_data`` (``size``), each
followed by *size* bytes of data; ``set_metadata`` and ``update_metadata``
(``metadata``); ``delete``. A write may carry the preconditions of the same call
(``if_version``: a version string; ``if_exists``: ``true`` / ``false``, not for
``update_metadata`` and ``delete``). A check ``{"op": "check", "key": ...}`` writes
nothing and fails the batch unless the key is as its condition says: ``"if_version":
v`` at that version, ``"if_exists": false`` missing, ``"if_exists": true`` present (at
any version). An entry with a field its ``op`` does not take (data after anything but
``set`` / ``set_data``), without a field it needs, or with a precondition of the wrong
type makes the whole batch a 400, nothing applied; see :func:`encode_batch` /
:func:`decode_batch`. The server applies the entries in order inside one transaction
of the served store and answers a JSON list: each ``set``'s version, else ``null``; a
failed condition is a 412 (``ConflictError``) and nothing is applied. A batch of
checks only (a client's read-only transaction) is also answered by a read-only
server and to a user who may only read. A server that takes checks says
``"batch_checks": true`` in ``/info``.

Query terms travel as JSON by :func:`encode_terms` / :func:`decode_terms`: a plain
value is an exact match, ``{"$in": [...]}``, ``{"$range": [low, high, include_low,
include_high]}``, ``{"$prefix": text}`` and ``{"$exists": bool}`` are the other terms,
and ``{"$eq": value}`` is an exact match of any value (a dict is always sent that way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from storekeeper import errors
from storekeeper.errors import InvalidArgumentError, StorekeeperError
from storekeeper.store.query import Equals, Exists, In, Prefix, QueryTerm, Range

__all__ = [
    "BATCH_OPERATIONS",
    "CREATED",
    "METADATA_LENGTH",
    "MODIFIED",
    "ORIGIN",
    "decode_batch",
    "decode_terms",
    "encode_batch",
    "encode_terms",
    "error_class",
    "quote_key",
]

#: Headers of a read: the key's creation and modification times, POSIX seconds
#: (``Last-Modified`` has whole seconds only).
CREATED = "X-Storekeeper-Created"
MODIFIED = "X-Storekeeper-Modified"
#: Header naming the client object that sent a request; the event stream repeats it
#: as a change's ``origin``, so a client can tell its own changes from others'.
ORIGIN = "X-Storekeeper-Origin"
#: Header of a value body: the length in bytes of the metadata JSON that starts it.
METADATA_LENGTH = "X-Storekeeper-Metadata-Length"

# Characters a key keeps unescaped in a URL path (as the encore client quoted them),
# minus "?", "#" and "%", which quote() escapes anyway.
_SAFE = "/~!$&'()*+,;=:@"


def quote_key(key: str) -> str:
    """*key* as a URL path (UTF-8, percent-escaped), decoded exactly once by the server.

    Segments that are ``.`` or ``..`` are escaped as ``%2E`` so that no client or proxy
    normalises them away (``a/../b`` stays three segments).
    """
    quoted = quote(key, safe=_SAFE)
    if "." not in quoted:
        return quoted
    return "/".join(
        segment.replace(".", "%2E") if segment in {".", ".."} else segment
        for segment in quoted.split("/")
    )


def error_class(name: object) -> type[StorekeeperError] | None:
    """The storekeeper exception class called *name*, or ``None``."""
    if not isinstance(name, str):
        return None
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, StorekeeperError):
        return found
    return None


def encode_terms(terms: Mapping[str, QueryTerm]) -> dict[str, Any]:
    """Compiled query *terms* (see :func:`storekeeper.store.query.query_terms`) as JSON."""
    encoded: dict[str, Any] = {}
    for name, term in terms.items():
        encoded[name] = _encode_term(term)
    return encoded


def _encode_term(term: QueryTerm) -> Any:
    if isinstance(term, Equals):
        value = term.expected
        return {"$eq": value} if isinstance(value, dict) else value
    if isinstance(term, In):
        return {"$in": list(term.values)}
    if isinstance(term, Range):
        return {"$range": [term.low, term.high, term.include_low, term.include_high]}
    if isinstance(term, Prefix):
        return {"$prefix": term.prefix}
    if isinstance(term, Exists):
        return {"$exists": term.present}
    raise InvalidArgumentError(f"the query term {term!r} cannot be sent over HTTP")


def decode_terms(encoded: object) -> dict[str, Any]:
    """The query terms of a JSON object made by :func:`encode_terms`, ready for
    ``store.query(None, terms)``; :class:`~storekeeper.errors.InvalidArgumentError`
    for anything else."""
    if not isinstance(encoded, dict):
        raise InvalidArgumentError("query terms are a JSON object of name -> term")
    return {name: _decode_term(value) for name, value in encoded.items()}


def _decode_term(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise InvalidArgumentError(f"a query term object has one '$' entry, not {value!r}")
    ((kind, argument),) = value.items()
    if kind == "$eq":
        return argument
    if kind == "$in" and isinstance(argument, list):
        return In(argument)
    if kind == "$range" and isinstance(argument, list) and len(argument) == 4:
        low, high, include_low, include_high = argument
        return Range(low, high, include_low, include_high)
    if kind == "$prefix" and isinstance(argument, str):
        return Prefix(argument)
    if kind == "$exists" and isinstance(argument, bool):
        return Exists(argument)
    raise InvalidArgumentError(f"unknown query term {value!r}")


#: The writes a batch may hold.
BATCH_OPERATIONS = frozenset(
    {"set", "set_data", "set_metadata", "update_metadata", "delete", "check"}
)


def encode_batch(writes: list[tuple[dict[str, Any], bytes | None]]) -> list[bytes]:
    """The body of ``POST /batch`` for *writes* (a header dict and the data, if any), as
    pieces to send one after another."""
    pieces: list[bytes] = []
    for header, data in writes:
        fields = dict(header)
        if data is not None:
            fields["size"] = len(data)
        pieces.append(json.dumps(fields, separators=(",", ":")).encode() + b"\n")
        if data is not None:
            pieces.append(data)
    return pieces


def decode_batch(body: bytes) -> list[tuple[dict[str, Any], bytes | None]]:
    """The writes of a ``POST /batch`` body; :class:`~storekeeper.errors.InvalidArgumentError`
    for a malformed one (nothing is applied then): a header that is not a JSON object of
    a known ``op``, a field that ``op`` does not take (data, ``"size"``, only after
    ``set`` and ``set_data``, which need it), a precondition of the wrong type, or a
    body that ends early."""
    writes: list[tuple[dict[str, Any], bytes | None]] = []
    view = memoryview(body)
    position = 0
    while position < len(body):
        end = body.find(b"\n", position)
        if end < 0:
            raise InvalidArgumentError("a batch write's header line has no end")
        header = _batch_header(body[position:end])
        position = end + 1
        data = None
        size = header.pop("size", None)
        if size is not None:
            if type(size) is not int or size < 0 or position + size > len(body):
                raise InvalidArgumentError(f"a batch write's size is wrong: {size!r}")
            data = bytes(view[position : position + size])
            position += size
        writes.append((header, data))
    return writes


#: The fields each batch entry takes (besides ``op`` and ``key``).
_BATCH_FIELDS = {
    "set": frozenset({"metadata", "size", "if_version", "if_exists"}),
    "set_data": frozenset({"size", "if_version", "if_exists"}),
    "set_metadata": frozenset({"metadata", "if_version", "if_exists"}),
    "update_metadata": frozenset({"metadata", "if_version"}),
    "delete": frozenset({"if_version"}),
    "check": frozenset({"if_version", "if_exists"}),
}


def _batch_header(line: bytes) -> dict[str, Any]:
    """One entry's header line, checked: see :func:`decode_batch`."""
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise InvalidArgumentError(f"a batch write's header is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgumentError("a batch write's header is nested too deeply") from None
    if not isinstance(header, dict) or header.get("op") not in BATCH_OPERATIONS:
        raise InvalidArgumentError(f"not a batch write: {header!r}")
    operation = header["op"]
    if not isinstance(header.get("key"), str):
        raise InvalidArgumentError(f"a batch write names its key: {header!r}")
    unknown = sorted(set(header) - {"op", "key"} - _BATCH_FIELDS[operation])
    if unknown:
        raise InvalidArgumentError(f"a batch {operation} takes no {', '.join(unknown)}: {header!r}")
    if operation in {"set", "set_data"} and "size" not in header:
        raise InvalidArgumentError(f"a batch {operation} is followed by its data: {header!r}")
    if "metadata" in _BATCH_FIELDS[operation] and not isinstance(header.get("metadata"), dict):
        raise InvalidArgumentError(f"a batch {operation} carries its metadata: {header!r}")
    version, exists = header.get("if_version"), header.get("if_exists")
    if version is not None and (not isinstance(version, str) or not version):
        raise InvalidArgumentError(f"if_version is a non-empty version string: {header!r}")
    if exists is not None and not isinstance(exists, bool):
        raise InvalidArgumentError(f"if_exists is true or false: {header!r}")
    if operation == "check" and version is None and exists is None:
        raise InvalidArgumentError(f"a batch check names the version it expects: {header!r}")
    return header
