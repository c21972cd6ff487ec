"""How a staged document's copy is kept in a store: a JSON body and stage metadata.

The body is the fields' merge state (see :mod:`storekeeper.stage._form` for its
JSON form). The metadata, under the one name :data:`METADATA_NAME`, holds the revision,
the base revisions and the document's own stamps (created, deleted, compaction floor),
so revisions are read without parsing the body.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar

from storekeeper.stage._form import decode_body, encode_body
from storekeeper.stage._lattice import Stamp
from storekeeper.stage._schema import Kind
from storekeeper.stage.document import MergeableDocument, decode_value, fields_of
from storekeeper.stage.merge import DocState
from storekeeper.stage.session import Revision, RevisionSet, Session, from_micros, to_micros

__all__ = [
    "METADATA_NAME",
    "decode_document",
    "decode_revision",
    "decode_slot",
    "encode_document",
    "plain_document",
    "revision_micros",
]

_D = TypeVar("_D", bound=MergeableDocument)

#: The metadata name under which a stored copy keeps its revision, base revisions and
#: slot stamps, so they are read without parsing the body.
METADATA_NAME = "storekeeper.stage"


def _stamp_json(stamp: Stamp | None) -> list[Any] | None:
    return None if stamp is None else [stamp[0], stamp[1]]


def _stamp_from(raw: Any) -> Stamp | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int)):
        raise ValueError(f"malformed stamp {raw!r}")
    return (raw[0], str(raw[1]))


def _revision_text(revision: tuple[Session, datetime]) -> str:
    return f"{revision[0].identifier} {to_micros(revision[1])}"


def _revision_from(text: Any) -> Revision:
    if not isinstance(text, str) or text.count(" ") != 1:
        raise ValueError(f"malformed revision {text!r}")
    identifier, micros = text.split(" ")
    return Revision(Session(identifier), from_micros(int(micros)))


def encode_document(
    cls: type, doc: DocState, revision: Revision, bases: RevisionSet
) -> tuple[bytes, dict[str, Any]]:
    """The body bytes and metadata that store the merge state *doc*."""
    body = json.dumps(encode_body(fields_of, cls, doc.state), separators=(",", ":"))
    meta = {
        "type": cls.__name__,
        "revision": _revision_text(revision),
        "bases": sorted(_revision_text(r) for r in bases.items()),
        "added": _stamp_json(doc.added),
        "deleted": _stamp_json(doc.deleted),
        "floor": _stamp_json(doc.floor),
    }
    return body.encode("utf-8"), {METADATA_NAME: meta}


def decode_revision(metadata: dict[str, Any]) -> tuple[Revision, RevisionSet] | None:
    """The revision and base revisions in a stored copy's *metadata*; ``None`` for an
    unstamped document. ValueError if they are malformed."""
    meta = metadata.get(METADATA_NAME)
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ValueError(f"malformed {METADATA_NAME} metadata")  # noqa: TRY004 - stored data, not an argument
    bases = RevisionSet(_revision_from(text) for text in meta.get("bases", ()))
    return _revision_from(meta.get("revision")), bases


def revision_micros(metadata: dict[str, Any]) -> int | None:
    """The time of the revision in a stored copy's *metadata*, in microseconds since the
    epoch (``None`` for an unstamped document), without parsing its base revisions;
    ValueError if it is malformed."""
    meta = metadata.get(METADATA_NAME)
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ValueError(f"malformed {METADATA_NAME} metadata")  # noqa: TRY004 - stored data
    return to_micros(_revision_from(meta.get("revision")).updated_at)


def decode_slot(metadata: dict[str, Any]) -> tuple[Stamp | None, Stamp | None, Stamp | None]:
    """The ``(added, deleted, floor)`` stamps in a stored copy's *metadata*."""
    meta = metadata.get(METADATA_NAME) or {}
    return (
        _stamp_from(meta.get("added")),
        _stamp_from(meta.get("deleted")),
        _stamp_from(meta.get("floor")),
    )


def decode_document(cls: type, body: bytes, metadata: dict[str, Any]) -> DocState:
    """The merge state stored as *body* and *metadata* (ValueError if malformed). An
    unstamped body (no stage metadata) is a plain JSON object of field values, which
    must then be adopted with :func:`captured_state`."""
    raw = json.loads(body.decode("utf-8")) if body else {}
    added, deleted, floor = decode_slot(metadata)
    return DocState(added, deleted, floor, decode_body(fields_of, cls, raw))


def plain_document(cls: type[_D], body: bytes) -> _D:
    """A fresh document of type *cls* from a plain JSON object of field values (an
    unstamped document someone put in the store by hand)."""
    raw = json.loads(body.decode("utf-8")) if body else {}
    if not isinstance(raw, dict):
        raise ValueError(f"an unstamped {cls.__name__} must be a JSON object")  # noqa: TRY004
    values = {}
    for name, spec in fields_of(cls).items():
        if name in raw:
            values[name] = (
                decode_value(spec, raw[name]) if spec.kind is not Kind.ELEMENT else raw[name]
            )
    return cls(**{k: v for k, v in values.items() if fields_of(cls)[k].kind in _PLAIN})


_PLAIN = (Kind.SCALAR, Kind.DATETIME, Kind.LIST)
