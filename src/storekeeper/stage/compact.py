"""Compaction: fold each document's copies into one snapshot, and forget old tombstones.

Every session writes its own copy of every document it edits, and deleting an entity
leaves a tombstone, so a stage grows with the number of sessions and of deletes.
:func:`compact_stage` bounds both. For each document, in one store transaction:

1. read every copy (the previous snapshot included) and merge them;
2. drop the tombstones that every *live* session's copy covers (live: touched within
   the retention), at every depth -- deleted entities, entities of entities, nested
   elements set to ``None``, and the contents of a deleted document. What is dropped is
   stamped at or before the *floor*, recorded in the snapshot: the oldest of "now minus
   the retention" (now by the compacting session's clock), each live session's copy
   revision, and the newest revision among the copies read;
3. write the merge as the snapshot (a copy under the reserved identifier ``@snapshot``)
   and delete each folded copy with a conditional delete, so a copy rewritten meanwhile
   is kept (a conflict retries the whole document). A document whose only copy is its
   snapshot is rewritten (conditionally too) when tombstones in it have become old
   enough to drop, and left alone otherwise.

Readers treat the snapshot as one more copy, holding everything written up to its
floor. Joined with it, a copy made before (of a session that returns after the
retention, say) adds only what it wrote after the floor: it cannot bring back a
dropped tombstone's element, even one it edited offline, so such a session rebases on
the snapshot. The snapshot's revision is never older than its floor, so a session that
reads it stamps its later edits after the floor, whatever its wall clock says.

Why no acknowledged edit is lost unless a later edit of the same field replaced it,
however skewed the clocks. Take an edit stamped *s*:

- If its copy is among those the compaction read, the snapshot is their join, so it
  holds the edit or the later write that replaced it; collecting drops only deleted
  elements, i.e. edits a later delete removed.
- If it reaches the store afterwards through a commit, the commit reads the snapshot's
  floor in the same store transaction as its conditional write, and raises
  :class:`~storekeeper.stage.TransactionError`, writing nothing, when the floor is at
  or after its earliest edit (see :class:`~storekeeper.stage.DirtyBuffer`): an edit is
  refused, never acknowledged and then hidden. The floor is never after the newest
  revision the compaction read, and a transaction that read the document before
  editing stamps its edits after every revision it read; so this happens only when
  another session wrote the document after that read and the edits are older than the
  retention by the compacting session's clock: the transaction was kept open that
  long, or the writer's clock runs more than the retention behind the compacting
  session's (then a short transaction is refused too; redone, it reads the snapshot,
  its clock passes the floor and it commits).
- If it reaches the store afterwards as a copy synced from elsewhere (a device that was
  offline), nothing checks it: its edits stamped at or before the floor are superseded.
  The floor is bounded twice, so a clock running ahead on either side cannot put it in
  the future of the writers: it is at least the retention behind the compacting
  session's clock, and never after the newest revision among the copies -- a
  compacting clock 40 days ahead does not move the floor past what was written. Such a
  device keeps every edit made after the newest write the compaction saw, and, when
  the compacting clock is right, every edit younger than the retention.

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
    """Compact the document at *key*; False if it had nothing to fold or collect."""
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
    only_snapshot = len(copies) == 1 and copies[0][0] == snapshot_key
    if only_snapshot and collected.state == merged.state:
        # Nothing more to collect: the snapshot stays as it is (a newer floor alone is
        # not worth a write, and a second compaction in a row writes nothing).
        return False
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
