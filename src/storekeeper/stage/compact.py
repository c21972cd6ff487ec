"""Compaction: fold each document's copies into one snapshot, and forget old tombstones.

Every session writes its own copy of every document it edits, and deleting an entity
leaves a tombstone, so a stage grows with the number of sessions and of deletes.
:func:`compact_stage` bounds both. For each document, in one store transaction:

1. read every copy (the previous snapshot included) and merge them;
2. drop the tombstones that every *live* session's copy covers (live: touched within
   the retention), at every depth -- deleted entities, entities of entities, nested
   elements set to ``None``, and the contents of a deleted document. What is dropped is
   stamped at or before the *floor*, the oldest of "now minus the retention" and each
   live session's copy revision, recorded in the snapshot;
3. write the merge as the snapshot (a copy under the reserved identifier ``@snapshot``)
   and delete each folded copy with a conditional delete, so a copy rewritten meanwhile
   is kept (a conflict retries the whole document).

Readers treat the snapshot as one more copy, holding everything written up to its
floor. Joined with it, a copy made before (of a session that returns after the
retention, say) adds only what it wrote after the floor: it cannot bring back a
dropped tombstone's element, even one it edited offline, so such a session rebases on
the snapshot. Edits stamped after the floor always survive, and the snapshot's revision
is never older than its floor, so a session that reads it stamps its later edits after
the floor, whatever its wall clock says. The floor is at least the retention in the
past: a writer whose clock runs behind by more than that, and that has not read the
snapshot, may see its older-stamped edits superseded.

A deleted document keeps a small snapshot (its created and deleted stamps, no
contents) so that a stale copy cannot bring it back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from storekeeper import errors
from storekeeper.stage.codec import decode_document, decode_revision, encode_document
from storekeeper.stage.document import MergeableDocument
from storekeeper.stage.merge import DocState, collect_tombstones, join_documents
from storekeeper.stage.route import KeySpec, Route, compile_format_to_pattern
from storekeeper.stage.session import Revision, RevisionSet, from_micros, to_micros

if TYPE_CHECKING:
    from storekeeper.stage.stage import BaseStage

__all__ = ["compact_document", "compact_stage", "documents_of"]

_ATTEMPTS = 64
#: Sorts after every session identifier (they are ASCII letters, digits and ``-_.``):
#: a floor at ``(t, _AFTER_EVERY_SESSION)`` covers every stamp made at time ``t``.
_AFTER_EVERY_SESSION = "~"


def documents_of(stage: BaseStage, route: Route[Any]) -> Iterator[list[str]]:
    """The key (components before the session's) of every document *route* holds."""
    spec = route.spec
    yield from _walk(stage, spec, [], ())


def _walk(
    stage: BaseStage, spec: KeySpec, key: list[str], indices: tuple[str, ...]
) -> Iterator[list[str]]:
    level = len(indices)
    first = spec.levels[level - 1] + 1 if level else 0
    if level == len(spec.levels):
        yield key + [
            spec.format(i, indices, stage.session) for i in range(first, spec.session_index)
        ]
        return
    here = key + [spec.format(i, indices, stage.session) for i in range(first, spec.levels[level])]
    pattern = compile_format_to_pattern(spec.components[spec.levels[level]])
    for name in stage.list_level(here):
        match = pattern.match(name)
        if match is not None:
            yield from _walk(stage, spec, [*here, name], (*indices, match.group(1)))


def compact_stage(stage: BaseStage, retention: timedelta) -> int:
    """Compact every document of every route of *stage* (see the module docstring)."""
    now = stage.session.clock.now()
    times = stage.session_times()
    live = {s.identifier for s, t in times.items() if now - t <= retention}
    horizon = (to_micros(now - retention), "")
    count = 0
    with stage:
        routes = [r for r in vars_of(type(stage)) if isinstance(r, Route)]
        work = [(route, key) for route in routes for key in documents_of(stage, route)]
    for route, key in work:
        if compact_document(stage, route.document_type, route.spec, key, live, horizon):
            count += 1
    return count


def vars_of(cls: type) -> list[Any]:
    """The class attributes of *cls* and its bases."""
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        seen.update(vars(klass))
    return list(seen.values())


def compact_document(
    stage: BaseStage,
    document_type: type[MergeableDocument],
    spec: KeySpec,
    key: list[str],
    live: set[str],
    horizon: tuple[int, str],
) -> bool:
    """Compact the document at *key*; False if it had nothing to fold."""
    store = stage.repository
    snapshot_key = stage.snapshot_key(spec, key)
    for attempt in range(_ATTEMPTS):
        try:
            with store.transaction("stage compaction"):
                return _fold(stage, document_type, spec, key, snapshot_key, live, horizon)
        except errors.ConflictError:
            time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 8)))
    raise errors.TransactionError(f"compacting {key!r} conflicted {_ATTEMPTS} times in a row")


def _fold(
    stage: BaseStage,
    document_type: type[MergeableDocument],
    spec: KeySpec,
    key: list[str],
    snapshot_key: str,
    live: set[str],
    horizon: tuple[int, str],
) -> bool:
    store = stage.repository
    with stage:
        listed = list(stage.copy_keys(spec, key))
    copies: list[tuple[str, str | None, DocState, Revision, RevisionSet]] = []
    floor = horizon
    newest = 0
    for store_key, identifier in listed:
        try:
            value = store.get(store_key)
            with value.data as stream:
                body = stream.read()
        except KeyError:
            continue
        found = decode_revision(value.metadata)
        if found is None:
            return False  # an unstamped copy is adopted by a reader first
        revision, bases = found
        state = decode_document(document_type, body, value.metadata)
        copies.append((store_key, value.version, state, revision, bases))
        newest = max(newest, to_micros(revision.updated_at))
        if identifier in live:
            floor = min(floor, (to_micros(revision.updated_at), identifier))
    if not copies:
        return False
    # Never past what was written: a copy's revision is at or after each of its stamps,
    # so this floor covers every stamp the copies hold, and nothing newer.
    floor = min(floor, (newest, _AFTER_EVERY_SESSION))
    merged = copies[0][2]
    for copy in copies[1:]:
        merged = join_documents(document_type, merged, copy[2])
    collected = collect_tombstones(document_type, merged, floor)
    if len(copies) == 1 and copies[0][0] == snapshot_key:
        if collected.state == merged.state:
            return False  # only the snapshot, and nothing more to collect from it
        # The floor is recorded only when it lets tombstones go: otherwise the snapshot
        # stays as it is (a second compaction in a row writes nothing).
    merged = collected
    assert merged.floor is not None
    # Never older than the floor: a reader's clock observes the snapshot's revision, so
    # whatever it edits after reading is stamped after the floor and survives the join.
    updated = max([c[3].updated_at for c in copies] + [from_micros(merged.floor[0])])
    revision = Revision(stage.session, updated)
    bases = RevisionSet(c[3] for c in copies).merge(*(c[4] for c in copies))
    body, metadata = encode_document(document_type, merged, revision, bases)
    snapshot = next((c for c in copies if c[0] == snapshot_key), None)
    if snapshot is None:
        store.set(snapshot_key, (body, metadata), if_exists=False)
    else:
        store.set(snapshot_key, (body, metadata), if_version=snapshot[1])
    for store_key, version, *_ in copies:
        if store_key != snapshot_key:
            store.delete(store_key, if_version=version)
    return True
