"""Reading one stored copy of a staged document, with a cache of decoded copies.

Decoding a copy (JSON, then every entity's registers) is most of what a read costs.
:class:`CopyCache` keeps decoded copies by store key together with the version they
were read at: a later read still fetches the key (so it sees every change) but skips
the decoding when the version is the same. Merged results are kept the same way, by
the versions of all the copies they were merged from.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from storekeeper.errors import CorruptFileError
from storekeeper.stage.codec import decode_document, decode_revision, plain_document
from storekeeper.stage.document import MergeableDocument
from storekeeper.stage.merge import DocState, adopted_state
from storekeeper.stage.session import Revision, RevisionSet, Session, from_micros
from storekeeper.store.abstract import AbstractStore

__all__ = ["Copy", "CopyCache", "decode_copy", "load_copy"]


@dataclass(frozen=True, slots=True)
class Copy:
    """One decoded copy: its merge state, revision, base revisions, and whether it was
    stamped (an unstamped one was put in the store by hand)."""

    state: DocState
    revision: Revision
    bases: RevisionSet
    stamped: bool


def decode_copy(
    session: Session, document_type: type[MergeableDocument], body: bytes, metadata: dict[str, Any]
) -> Copy:
    """A stored copy's merge state. An unstamped document gets the oldest possible
    stamp, the same for every reader, so adopting it again changes nothing and any
    later edit wins over it."""
    found = decode_revision(metadata)
    if found is None:
        state = adopted_state(plain_document(document_type, body))
        return Copy(state, Revision(session, from_micros(0)), RevisionSet(), False)
    revision, bases = found
    return Copy(decode_document(document_type, body, metadata), revision, bases, True)


class CopyCache:
    """Decoded copies and merges, each valid while the versions it was read at hold
    (least recently used dropped beyond *size*). Thread-safe."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[object, tuple[object, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object, version: object) -> Any:
        """What :meth:`put` stored for *key* at *version*, or ``None``."""
        if version is None:
            return None
        with self._lock:
            found = self._items.get(key)
            if found is None or found[0] != version:
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: object, version: object, value: object) -> None:
        """Remember *value* for *key* at *version* (nothing without a version)."""
        if version is None:
            return
        with self._lock:
            self._items[key] = (version, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def load_copy(
    store: AbstractStore,
    key: str,
    document_type: type[MergeableDocument],
    session: Session,
    cache: CopyCache,
) -> tuple[Copy, str | None] | None:
    """The copy stored at *key* and its version (``None`` if the key is missing);
    *session*'s clock observes its revision."""
    try:
        value = store.get(key)
    except KeyError:
        return None
    version = value.version
    copy = cache.get((document_type, key), version)
    if copy is None:
        try:
            with value.data as stream:
                body = stream.read()
        except KeyError:  # deleted since: as if it were missing
            return None
        try:
            copy = decode_copy(session, document_type, body, value.metadata)
        except ValueError as exc:
            raise CorruptFileError(
                f"the stored copy {key!r} is not a {document_type.__name__}: {exc}"
            ) from exc
        cache.put((document_type, key), version, copy)
    if copy.stamped:
        session.clock.observe(copy.revision.updated_at)
    return copy, version
