"""Whole staged documents: their merge state, join, revise, pull and merge.

A document's merge state (:class:`DocState`) is its fields' state (see
:mod:`storekeeper.stage._lattice`) plus its own slot stamps -- created and deleted, so a
deleted document stays deleted unless it is created again afterwards -- and the floor
of the last compaction that dropped tombstones. :func:`join_documents` is the join
of two such states: the one with the older floor is first pruned to what it wrote
after the newer floor (pruning distributes over the join and pruning twice is pruning
at the later floor, so this stays commutative, associative and idempotent).
:class:`~storekeeper.stage.Session` builds ``revise``, ``pull`` and ``merge`` on the
functions here.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, TypeVar

from storekeeper.stage._capture import PendingEditsError, StampClock, capture, settle
from storekeeper.stage._collect import collect
from storekeeper.stage._lattice import (
    Stamp,
    State,
    join,
    join_all,
    newest_stamp,
    prune,
)
from storekeeper.stage._schema import Kind
from storekeeper.stage.document import (
    Element,
    MergeableDocument,
    fields_of,
    init_document,
)
from storekeeper.stage.session import Revision, RevisionSet, Session, from_micros

__all__ = [
    "DocState",
    "adopted_state",
    "build_document",
    "captured_state",
    "collect_tombstones",
    "document_alive",
    "has_pending",
    "is_new",
    "join_all_documents",
    "join_documents",
    "merge_documents",
    "pull_document",
    "renewed",
    "revise_document",
    "state_of",
    "take_over",
    "tombstone",
]

_D = TypeVar("_D", bound=MergeableDocument)
_L = TypeVar("_L", bound=Element)


class DocState(NamedTuple):
    """A document's full merge state: its own slot stamps (created, deleted), the floor
    of the last compaction that dropped tombstones, and its fields' state."""

    added: Stamp | None
    deleted: Stamp | None
    floor: Stamp | None
    state: State


def document_alive(doc: DocState) -> bool:
    """Whether *doc* exists: never deleted, or created again after its last delete."""
    return doc.deleted is None or (doc.added is not None and doc.added > doc.deleted)


def state_of(doc: MergeableDocument) -> DocState:
    """*doc*'s merge state as last revised (edits not yet revised are not in it)."""
    return DocState(doc._added, doc._deleted, doc._floor, doc._state)


def is_new(doc: MergeableDocument) -> bool:
    """Whether *doc* was built by its constructor and never revised: assigning it adds
    (or re-adds) a document rather than editing one that was read."""
    return doc._fresh


def renewed(element: _L) -> _L:
    """A copy of *element* built by its constructor, every field given as *element*
    shows it now (nested elements and entities renewed the same way): revising it
    writes every field it shows, at that revise's time. Assigning a document where the
    document was deleted stores this instead, so that what the user sees is what the
    re-added document holds, all of it stamped after the delete."""
    values: dict[str, Any] = {}
    for name, spec in fields_of(type(element)).items():
        value = element.__dict__[name]
        if spec.kind is Kind.ENTITIES:
            values[name] = {key: renewed(entity) for key, entity in value.items()}
        elif spec.kind is Kind.ELEMENT:
            values[name] = None if value is None else renewed(value)
        else:
            values[name] = copy.deepcopy(value)
    return type(element)(**values)


def take_over(doc: MergeableDocument, written: MergeableDocument) -> None:
    """Make *doc* show *written* (its :func:`renewed` copy, just revised): the same
    state and revision, and no pending edits."""
    settle(doc, written._state)
    init_document(doc, written._added, written._deleted, written._floor, fresh=False)
    object.__setattr__(doc, "__revision__", written.__revision__)
    object.__setattr__(doc, "__base_revisions__", written.__base_revisions__)


def has_pending(doc: Element) -> bool:
    """Whether *doc* has edits that no revise has stamped yet."""
    if isinstance(doc, MergeableDocument) and doc._fresh:
        return True
    try:
        capture(doc, None)
    except PendingEditsError:
        return True
    return False


def _superseded(cls: type, low: DocState, floor: Stamp) -> DocState:
    """*low* as a snapshot compacted at *floor* leaves it: only what it wrote after the
    floor (the snapshot holds everything up to it, except what it collected)."""
    return DocState(
        None if low.added is None or low.added <= floor else low.added,
        None if low.deleted is None or low.deleted <= floor else low.deleted,
        floor,
        prune(fields_of, cls, low.state, floor),
    )


def join_documents(cls: type, a: DocState, b: DocState) -> DocState:
    """The join of two merge states of document type *cls*."""
    if a is b or a == b:
        return a
    pa, pb = a, b
    if a.floor != b.floor:
        if b.floor is None or (a.floor is not None and a.floor > b.floor):
            assert a.floor is not None
            pb = _superseded(cls, b, a.floor)
        else:
            assert b.floor is not None
            pa = _superseded(cls, a, b.floor)
    state = join(fields_of, cls, pa.state, pb.state)
    deleted = _max_stamp(pa.deleted, pb.deleted)
    if deleted is not None:
        state = prune(fields_of, cls, state, deleted)
    added = _max_stamp(pa.added, pb.added)
    result = DocState(added, deleted, _max_stamp(a.floor, b.floor), state)
    if result == a:
        return a
    return b if result == b else result


def join_all_documents(cls: type, docs: list[DocState]) -> DocState:
    """The join of every merge state in *docs* (at least one): equal to folding
    :func:`join_documents` over them, faster for many copies."""
    if len(docs) <= 2 or len({d.floor for d in docs}) > 1:
        result = docs[0]
        for doc in docs[1:]:
            result = join_documents(cls, result, doc)
        return result
    state = join_all(fields_of, cls, [d.state for d in docs])
    deleted = max((d.deleted for d in docs if d.deleted is not None), default=None)
    if deleted is not None and any(d.deleted != deleted for d in docs):
        state = prune(fields_of, cls, state, deleted)
    added = max((d.added for d in docs if d.added is not None), default=None)
    result = DocState(added, deleted, docs[0].floor, state)
    for doc in docs:
        if doc == result:
            return doc
    return result


def _max_stamp(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)


def build_document(
    cls: type[_D], doc: DocState, revision: Revision | None, bases: RevisionSet
) -> _D:
    """A document of type *cls* holding the merge state *doc*."""
    built = cls._from_state(doc.state)
    init_document(built, doc.added, doc.deleted, doc.floor, fresh=False)
    object.__setattr__(built, "__revision__", revision)
    object.__setattr__(built, "__base_revisions__", bases)
    return built


def captured_state(doc: MergeableDocument, session: Session) -> tuple[DocState, int]:
    """*doc*'s merge state with its pending edits stamped by *session*'s next clock time
    (*doc* itself is left as it is), and that time."""
    micros = session.clock.now_micros()
    state = capture(doc, StampClock(micros, session.identifier))
    added = (micros, session.identifier) if doc._fresh else doc._added
    return DocState(added, doc._deleted, doc._floor, state), micros


def adopted_state(doc: MergeableDocument) -> DocState:
    """The merge state of an unstamped document: all its fields written at the oldest
    possible stamp, the same for every reader, so adopting it again changes nothing and
    any real edit wins over it."""
    clock = StampClock(0, "")
    return DocState(clock.stamp, None, None, capture(doc, clock))


def tombstone(cls: type, doc: DocState, stamp: Stamp) -> DocState:
    """*doc* deleted at *stamp* (what the delete covers dropped)."""
    return DocState(doc.added, stamp, doc.floor, prune(fields_of, cls, doc.state, stamp))


def collect_tombstones(cls: type, doc: DocState, floor: Stamp) -> DocState:
    """*doc* as a compaction at *floor* stores it: without the deleted elements, at any
    depth, whose every stamp is at or before *floor* (a deleted document's contents
    too, when all of them are), and with *floor* recorded, so that joining it with a
    copy made before prunes that copy to what it wrote after the floor and a deleted
    element never comes back (see :mod:`storekeeper.stage._collect`)."""
    state = collect(fields_of, cls, doc.state, floor)
    if not document_alive(doc) and state:
        newest = newest_stamp(fields_of, cls, state)
        if newest is None or newest <= floor:
            state = {}
    if doc.floor is not None and doc.floor >= floor:
        floor = doc.floor
    return DocState(doc.added, doc.deleted, floor, state)


def revise_document(doc: MergeableDocument, session: Session) -> None:
    """Stamp *doc*'s pending edits by *session* and make it ``Revision(session, now)``."""
    merged, micros = captured_state(doc, session)
    settle(doc, merged.state)
    object.__setattr__(doc, "_added", merged.added)
    object.__setattr__(doc, "_fresh", False)
    object.__setattr__(doc, "__revision__", Revision(session, from_micros(micros)))


def pull_document(doc: _D, session: Session) -> _D:
    """*doc* as *session*'s (see :meth:`Session.pull`)."""
    revision = doc.__revision__
    if revision is not None and revision.session is session:
        return doc
    if revision is not None:
        session.clock.observe(revision.updated_at)
    if revision is None or has_pending(doc):
        merged, micros = captured_state(doc, session)
        updated_at = from_micros(micros)
    else:
        merged, updated_at = state_of(doc), revision.updated_at
    return build_document(type(doc), merged, Revision(session, updated_at), doc.__base_revisions__)


def merge_documents(session: Session, a: _D, b: _D) -> _D:
    """The join of *a* and *b* as *session* sees it (see :meth:`Session.merge`)."""
    if type(a) is not type(b):
        raise TypeError(f"cannot merge a {type(a).__name__} with a {type(b).__name__}")
    for revision in (a.__revision__, b.__revision__):
        if revision is not None:
            session.clock.observe(revision.updated_at)
    pending_a, pending_b = has_pending(a), has_pending(b)
    sa = captured_state(a, session)[0] if pending_a else state_of(a)
    sb = captured_state(b, session)[0] if pending_b else state_of(b)
    merged = join_documents(type(a), sa, sb)
    if merged is sa and not pending_a:
        return pull_document(a, session)
    if merged is sb and not pending_b:
        return pull_document(b, session)
    revisions = [r for r in (a.__revision__, b.__revision__) if r is not None]
    bases = a.__base_revisions__.merge(b.__base_revisions__, RevisionSet(revisions))
    return build_document(type(a), merged, Revision(session, session.clock.now()), bases)
