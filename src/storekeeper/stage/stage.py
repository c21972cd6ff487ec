"""The stage: transactions over staged documents, each session writing its own copies.

``with stage:`` opens a transaction for the current context (a thread, or an asyncio
task). Reads merge every session's copy of a document, seen through the transaction's
:class:`DirtyBuffer` (so a transaction reads its own writes); writes go to the buffer.
When the block exits normally the buffer is flushed in one store transaction: each copy
is re-read, merged with whatever another thread or process of the same session wrote
meanwhile, and written with a conditional write, retried on conflict, so no edit is
lost. When the block raises, the buffer is discarded and nothing is written.

Edits are stamped when they are assigned (``stage.route = doc``, ``directory[i] =
doc``, ``del directory[i]``), not at commit, by the session's clock, which has by then
passed everything the session has read -- including what ``in``, ``len`` and
iteration of a :class:`~storekeeper.stage.Directory` revealed. Assigning a document
built by its constructor, or any document where the document is deleted or missing,
first reads the metadata of every copy at its key, so it is stamped after each of them:
a document re-added after a delete that is already in the store wins over it, and the
transaction sees it, however slow this session's clock. A delete another session
commits after the assignment, stamped later, is a later edit and wins.

A compaction (:meth:`BaseStage.compact`) that runs while a transaction is open may put
its floor after that transaction's edits when other sessions write the document
meanwhile and the edits are stamped more than the retention before the compacting
session's clock: the transaction stayed open longer than the retention, or this
session's clock runs more than the retention behind the compacting session's (then a
transaction of a second can be hit). Committing would then hide the edits, so the
commit checks each document's snapshot floor and, in that case, raises
:class:`TransactionError` and writes nothing. Redo the edits in a new transaction: it
reads the snapshot, which moves the clock past the floor, so the retry commits. Keep
transactions much shorter than the retention, and clocks within it of each other.

Assigning a document to a key where the document is deleted (or missing) adds it
again, whether it was built by its constructor or read (from that key before the
delete, from another key, or copied): a read document is written as new, every field
as it shows at the assignment, stamped after every copy at the key. Assigning a read
document where the document exists is an edit: only the fields changed since it was
read are written.
"""

from __future__ import annotations

import threading
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import NamedTuple, TypeVar

from storekeeper import errors
from storekeeper.stage._copies import Copy, CopyCache, load_copy
from storekeeper.stage._lattice import Stamp
from storekeeper.stage.buffer import (
    DirtyBuffer,
    PendingCopy,
    TransactionError,
    get_current_context_id,
)
from storekeeper.stage.codec import decode_slot, revision_micros
from storekeeper.stage.document import MergeableDocument
from storekeeper.stage.merge import (
    DocState,
    build_document,
    document_alive,
    has_pending,
    is_new,
    join_all_documents,
    join_documents,
    renewed,
    state_of,
    take_over,
    tombstone,
)
from storekeeper.stage.route import (
    KeySpec,
    Route,
    compile_format_to_pattern,
    escape_component,
    join_key,
    unescape_component,
)
from storekeeper.stage.session import Revision, RevisionSet, Session, from_micros, to_micros
from storekeeper.store.abstract import AbstractStore

__all__ = [
    "SNAPSHOT_IDENTIFIER",
    "BaseStage",
    "DirtyBuffer",
    "TransactionError",
    "get_current_context_id",
]

_D = TypeVar("_D", bound=MergeableDocument)
_Slot = tuple[Stamp | None, Stamp | None, Stamp | None]
_T = TypeVar("_T")
#: The name a compacted snapshot takes in place of a session identifier (it cannot be
#: one: session identifiers have no ``@``).
SNAPSHOT_IDENTIFIER = "@snapshot"
_MISSING = "missing"  # the version token of a listed copy that has vanished since


class _SnapshotSession(NamedTuple):
    """Stands in for a session when formatting the snapshot's key."""

    identifier: str


class BaseStage:
    """Typed documents routed into *repository* (a store, or a store URL to open),
    edited by *session* inside per-context transactions (``with stage:``).

    Subclasses declare :class:`~storekeeper.stage.Route` attributes. Every operation
    needs an open transaction in the current context, else :class:`TransactionError`.
    """

    #: Where sessions record when they last used the stage (one key per session): a
    #: commit that writes or deletes a document records it, as does :meth:`touch`;
    #: a transaction that only reads records nothing (see :meth:`touch`).
    SESSION_DIRECTORY_KEY: Sequence[str] = (".sessions",)
    #: A writing session records itself at most this often (:meth:`touch` always does).
    touch_interval = timedelta(seconds=30)

    def __init__(self, session: Session, repository: AbstractStore | str) -> None:
        if not isinstance(session, Session):
            raise TypeError(f"expected a Session, not {type(session)!r}")
        if isinstance(repository, str):
            from storekeeper.store.registry import open_store

            repository = open_store(repository)
        if not isinstance(repository, AbstractStore):
            raise TypeError(f"expected a store or a store URL, not {type(repository)!r}")
        if not repository.is_connected():
            repository.connect()
        self.session = session
        self.repository = repository
        self.lock = threading.RLock()
        #: Open transactions: context id -> (buffer, where it began).
        self.transactions: dict[object, tuple[DirtyBuffer, str]] = {}
        #: Decoded copies and merges, valid while their versions hold.
        self.cache = CopyCache()
        self._last_touch: datetime | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__module__}.{type(self).__name__}({self.session!r}, {self.repository!r})"
        )

    def compact(self, retention: timedelta = timedelta(days=30)) -> int:
        """Fold every document's copies into one snapshot and remove the copies it
        contains; drop tombstones, at every depth, that every live session's copy
        covers (live: wrote or called :meth:`touch` within *retention*, which also
        bounds how old a dropped tombstone is, by this session's clock; the floor of
        what is dropped is also never after the newest revision among the copies, so
        this clock running ahead cannot supersede edits made after them). A document
        left with only its snapshot is compacted again once its tombstones are old
        enough. Safe while other threads and processes use the stage -- a transaction
        whose edits the floor passes (one kept open across it for longer than the
        retention, or one of a session whose clock runs more than the retention behind
        this session's) fails at commit rather than lose its edits, and succeeds when
        redone (see :mod:`storekeeper.stage.stage`); a session that returns
        later rebases on the snapshot and cannot bring anything deleted back. Returns
        how many documents were compacted (snapshots rewritten). See
        :mod:`storekeeper.stage.compact`."""
        from storekeeper.stage.compact import compact_stage

        return compact_stage(self, retention)

    # -- transactions --------------------------------------------------------------------
    def __enter__(self) -> BaseStage:
        context = get_current_context_id()
        with self.lock:
            if context in self.transactions:
                began = self.transactions[context][1]
                raise TransactionError(
                    "a transaction is already open in this context; it began at:\n" + began
                )
            stack = "".join(traceback.format_stack()[:-1])
            self.transactions[context] = (
                DirtyBuffer(self.repository, self.lock, self.cache),
                stack,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buffer = self.get_current_transaction(pop=True)
        # A rolled-back transaction writes nothing at all, not even the touch record,
        # and one that only read writes nothing either (bar an adopted document).
        if exc_type is None:
            record = buffer.touched or buffer.edited
            buffer.flush(self.session, self._touch_entry(buffer.touched) if record else None)

    def get_current_transaction(self, pop: bool = False) -> DirtyBuffer:
        """The current context's :class:`DirtyBuffer` (removed from :attr:`transactions`
        with *pop*); :class:`TransactionError` when no transaction is open here."""
        context = get_current_context_id()
        with self.lock:
            found = self.transactions.pop(context, None) if pop else self.transactions.get(context)
        if found is None:
            raise TransactionError(
                "no transaction is open in this context: use 'with stage:' around stage operations"
            )
        return found[0]

    # -- sessions ------------------------------------------------------------------------
    def _session_prefix(self) -> str:
        return join_key(self.SESSION_DIRECTORY_KEY) + "/"

    @property
    def sessions(self) -> frozenset[Session]:
        """Every session that has used the stage (touched it), this one included once
        it has."""
        prefix = self._session_prefix()
        found = set()
        for key in self.repository.list_keys(prefix, "/"):
            name = unescape_component(key[len(prefix) :])
            if Session.IDENTIFIER_PATTERN.fullmatch(name):
                found.add(Session(name))
        return frozenset(found)

    def session_times(self) -> dict[Session, datetime]:
        """When each session last touched the stage."""
        prefix = self._session_prefix()
        times = {}
        for key in self.repository.list_keys(prefix, "/"):
            name = unescape_component(key[len(prefix) :])
            if not Session.IDENTIFIER_PATTERN.fullmatch(name):
                continue
            try:
                text = self.repository.to_bytes(key).decode("ascii")
                times[Session(name)] = datetime.fromisoformat(text)
            except (KeyError, ValueError):
                continue
        return times

    def _touch_entry(self, force: bool) -> dict[str, bytes] | None:
        now = self.session.clock.now()
        recent = self._last_touch is not None and now - self._last_touch < self.touch_interval
        if recent and not force:
            return None
        self._last_touch = now
        key = join_key([*self.SESSION_DIRECTORY_KEY, self.session.identifier])
        return {key: now.isoformat().encode("ascii")}

    def touch(self) -> None:
        """Record in the store that this session used the stage, when the open
        transaction commits (nothing if it rolls back); :class:`TransactionError`
        outside a transaction, like every operation.

        The record is what makes a session *live* for :meth:`compact`: a live session's
        copies bound which tombstones it may drop. Commits that write record it on
        their own; a transaction that only reads writes nothing, so a session that only
        reads counts as live only if it calls this. It rarely needs to: compaction never
        lets a copy bring a deleted entity back, and an edit stamped after the
        snapshot's floor always survives -- which every edit is when made after reading
        the document (a session's clock passes every revision it reads, the
        snapshot's included) and committed within the retention, or made when the
        session's wall clock is less than the retention behind the compacting
        session's. A commit whose edits a newer floor would supersede fails instead of
        losing them."""
        self.get_current_transaction().touched = True

    # -- reading -------------------------------------------------------------------------
    def _read_copy(self, buffer: DirtyBuffer, key: str, document_type: type[_D]) -> Copy | None:
        return self._load(buffer, key, document_type)[0]

    def _load(
        self, buffer: DirtyBuffer, key: str, document_type: type[_D]
    ) -> tuple[Copy | None, object]:
        """The copy at *key* as this transaction sees it, and a token of its version
        (``None`` when it cannot be cached: buffered, or the store has no versions)."""
        entry = buffer.dictionary.get(key)
        if entry is not None:
            return Copy(entry.state, entry.revision, entry.bases, True), None
        found = load_copy(self.repository, key, document_type, self.session, self.cache)
        if found is None:
            return None, _MISSING
        return found

    def read(self, document_type: type[_D], key: Sequence[str]) -> _D:
        """The document of *document_type* stored at *key* (a sequence of components),
        as this session's; KeyError if it is missing. Internal: use routes."""
        _check_type(document_type)
        buffer = self.get_current_transaction()
        copy = self._read_copy(buffer, join_key(key), document_type)
        if copy is None:
            raise errors.KeyNotFoundError(f"no document at {list(key)!r}")
        revision = Revision(self.session, copy.revision.updated_at)
        return build_document(document_type, copy.state, revision, copy.bases)

    def list_level(self, key: Sequence[str]) -> list[str]:
        """The component names one level below *key*, with the open transaction's."""
        buffer = self.get_current_transaction()
        prefix = join_key(key) + "/" if key else ""
        names = set()
        keys = [*self.repository.list_keys(prefix, "/"), *buffer.keys_under(prefix)]
        for found in keys:
            names.add(unescape_component(found[len(prefix) :].split("/", 1)[0]))
        return sorted(names)

    def copy_keys(self, spec: KeySpec, key: Sequence[str]) -> Iterator[tuple[str, str]]:
        """``(store key, session identifier)`` of each copy of the document at *key*
        (its components before the session's): one prefix listing."""
        buffer = self.get_current_transaction()
        component = spec.components[spec.session_index]
        head = component.split("{", 1)[0]
        base = join_key(key) + "/" if key else ""
        prefix = base + escape_component(head.replace("}}", "}"))
        pattern = compile_format_to_pattern(component)
        rest = [
            spec.format(i, (), self.session)
            for i in range(spec.session_index + 1, len(spec.components))
        ]
        tail = "/" + join_key(rest) if rest else ""
        listed = set(self.repository.list_keys(prefix, "/")) | set(buffer.keys_under(prefix))
        for found in sorted(listed):
            name = found[len(base) :]
            if rest:
                if not name.endswith("/") or "/" in name[:-1]:
                    continue
                name = name[:-1]
            elif "/" in name:
                continue
            match = pattern.match(unescape_component(name))
            if match is None:
                continue
            identifier = match.group(1)
            components = [*key, unescape_component(name), *rest]
            if _is_copy(identifier) and not self._claimed_elsewhere(spec, components):
                yield base + name + tail, identifier

    def snapshot_key(self, spec: KeySpec, key: Sequence[str]) -> str:
        """The store key of the compacted snapshot of the document at *key* (its
        components before the session's), whether or not it exists."""
        snapshot = _SnapshotSession(SNAPSHOT_IDENTIFIER)
        components = [*key] + [
            spec.format(i, (), snapshot) for i in range(spec.session_index, len(spec.components))
        ]
        return join_key(components)

    def _fetch_copies(
        self, spec: KeySpec, key: Sequence[str], fetch: Callable[[str], _T]
    ) -> list[tuple[str, _T]]:
        """``(store key, fetch(store key))`` for every copy of the document at *key*:
        the listed copies, then the snapshot, fetched whether it was listed or not.

        Listing the copies and fetching them are separate steps, and a compaction may
        fold a listed copy into the snapshot and delete it in between; fetched alone,
        that copy is missing (or rewritten by its session without its old content) and
        its acknowledged edits would be hidden. A compaction writes the snapshot before
        (or together with) deleting what it folded, and a later snapshot contains the
        earlier ones, so a snapshot fetched after every other copy holds whatever
        vanished from under the fetches."""
        snapshot = self.snapshot_key(spec, key)
        listed = [store_key for store_key, _ in self.copy_keys(spec, key)]
        ordered = [store_key for store_key in listed if store_key != snapshot] + [snapshot]
        return [(store_key, fetch(store_key)) for store_key in ordered]

    def _claimed_elsewhere(self, spec: KeySpec, components: Sequence[str]) -> bool:
        """Whether another route of this stage claims the key *components* more
        specifically than *spec* (see :meth:`KeySpec.claim`): then it is that route's."""
        own = spec.claim(components)
        if own is None:
            return False
        for other in _route_specs(type(self)):
            if other is spec or other.components == spec.components:
                continue
            claim = other.claim(components)
            if claim is not None and claim[0] > own[0] and _is_copy(claim[1]):
                return True
        return False

    def check_own_key(self, spec: KeySpec, key: Sequence[str]) -> None:
        """ValueError if this session's copy at *key* (of a route with *spec*) would be
        taken for another route's copy: its identifier makes the key ambiguous."""
        if self._claimed_elsewhere(spec, key):
            raise ValueError(
                f"session {self.session.identifier!r} cannot write {list(key)!r}: another "
                "route of this stage claims that key (its identifier holds that route's text)"
            )

    def read_merged_document(
        self, document_type: type[_D], key_spec: Sequence[str], key: Sequence[str]
    ) -> _D | None:
        """Every session's copy of the document at *key* (the components before the
        session's) merged, as this session's; ``None`` if there is none or it was
        deleted. Writes nothing, but adopts an unstamped copy into this session's own.
        Internal: use routes."""
        _check_type(document_type)
        merged = self._merged(document_type, KeySpec(key_spec), key)
        if merged is None or not document_alive(merged[0]):
            return None
        state, revision, bases = merged
        return build_document(document_type, state, revision, bases)

    def _merged(
        self, document_type: type[_D], spec: KeySpec, key: Sequence[str]
    ) -> tuple[DocState, Revision, RevisionSet] | None:
        buffer = self.get_current_transaction()
        copies = []
        versions: list[object] = [document_type]
        for store_key, (copy, version) in self._fetch_copies(
            spec, key, lambda store_key: self._load(buffer, store_key, document_type)
        ):
            versions.append((store_key, version))
            if copy is not None:
                copies.append(copy)
        if not copies:
            return None
        signature = tuple(versions)
        cacheable = all(v[1] is not None for v in versions[1:])  # type: ignore[index]
        merged = self.cache.get(signature, True) if cacheable else None
        if merged is None:
            merged = _merge_copies(document_type, copies)
            if cacheable:
                self.cache.put(signature, True, merged)
        state, updated, bases = merged
        if not all(c.stamped for c in copies):
            self._adopt(buffer, document_type, spec, key, state, updated, bases)
        return state, Revision(self.session, updated), bases

    def _adopt(
        self,
        buffer: DirtyBuffer,
        document_type: type[_D],
        spec: KeySpec,
        key: Sequence[str],
        state: DocState,
        updated: datetime,
        bases: RevisionSet,
    ) -> None:
        own = self._own_key(spec, key)
        mine = self._read_copy(buffer, own, document_type)
        if (
            mine is not None
            and mine.stamped
            and join_documents(document_type, mine.state, state) is mine.state
        ):
            return
        buffer.write(own, PendingCopy(document_type, state, Revision(self.session, updated), bases))

    def _own_key(self, spec: KeySpec, key: Sequence[str]) -> str:
        components = [*key] + [
            spec.format(i, (), self.session)
            for i in range(spec.session_index, len(spec.components))
        ]
        return join_key(components)

    def document_exists(self, key_spec: Sequence[str] | KeySpec, key: Sequence[str]) -> bool:
        """Whether the document at *key* exists (some copy, and not deleted), judged
        from the copies' metadata alone, as their merge would judge it: a copy older
        than a compacted snapshot counts only with what it did after the snapshot's
        floor."""
        spec = key_spec if isinstance(key_spec, KeySpec) else KeySpec(key_spec)
        return _slots_alive(self._copy_slots(spec, key))

    def _copy_slots(self, spec: KeySpec, key: Sequence[str]) -> list[_Slot]:
        """The ``(added, deleted, floor)`` stamps of every copy of the document at *key*,
        from their metadata alone. The session's clock observes each copy's revision:
        what a read reveals (that a document exists, or was deleted) is something the
        session has read, so its later edits are stamped after it."""
        clock = self.session.clock
        found = self._copy_stamps(spec, key)
        for _, micros in found:
            if micros is not None:
                clock.observe_micros(micros)
        return [slot for slot, _ in found]

    def _copy_stamps(self, spec: KeySpec, key: Sequence[str]) -> list[tuple[_Slot, int | None]]:
        """Each copy's slot stamps and the time of its stored revision (``None`` for a
        buffered or unstamped copy), without observing them."""
        buffer = self.get_current_transaction()

        def fetch(store_key: str) -> tuple[_Slot, int | None] | None:
            entry = buffer.dictionary.get(store_key)
            if entry is not None:
                return (entry.state.added, entry.state.deleted, entry.state.floor), None
            try:
                metadata = self.repository.get_metadata(store_key)
            except KeyError:
                return None
            return decode_slot(metadata), revision_micros(metadata)

        return [found for _, found in self._fetch_copies(spec, key, fetch) if found is not None]

    def _slots_alive_else_observe(self, spec: KeySpec, key: Sequence[str]) -> bool:
        """Whether the document at *key* exists; when it does not, the session's clock
        observes every copy there first (an edit of an existing document observes
        nothing: it stays concurrent with the edits it did not read)."""
        found = self._copy_stamps(spec, key)
        if _slots_alive([slot for slot, _ in found]):
            return True
        for _, micros in found:
            if micros is not None:
                self.session.clock.observe_micros(micros)
        return False

    def _route_of(self, key: Sequence[str]) -> KeySpec | None:
        """The key spec of the route of this stage that claims the complete *key*."""
        best: tuple[int, KeySpec] | None = None
        for spec in _route_specs(type(self)):
            claim = spec.claim(key)
            if claim is not None and (best is None or claim[0] > best[0]):
                best = claim[0], spec
        return None if best is None else best[1]

    # -- writing -------------------------------------------------------------------------
    def write(self, key: Sequence[str], document: _D, merge: bool = True) -> _D:
        """Save *document* as this session's copy at *key* (a sequence of components):
        its pending edits are stamped now and it is merged with the copy already there
        when the transaction commits (*merge* also merges at once, so the returned
        document -- the one actually written -- shows the result). Internal: use routes."""
        if not isinstance(document, MergeableDocument):
            raise TypeError(f"expected a MergeableDocument, not {type(document)!r}")
        buffer = self.get_current_transaction()
        buffer.edited = True
        store_key = join_key(key)
        document_type = type(document)
        spec = self._route_of(key)
        snapshot = None
        assigned = document
        if spec is not None:
            snapshot = self.snapshot_key(spec, key[: spec.session_index])
            if is_new(document):
                # A new document may re-add a deleted one: stamp it after every copy
                # there now (their deletes included), however slow this clock is.
                self._copy_slots(spec, key[: spec.session_index])
            elif not self._slots_alive_else_observe(spec, key[: spec.session_index]):
                # A read document assigned where the document is deleted (or missing)
                # re-adds it: its stamps predate the delete, which would prune them, so
                # write it as new, every field as it shows now, stamped after every copy
                # there (their deletes included), however slow this clock is.
                document = renewed(document)
                object.__setattr__(document, "__base_revisions__", assigned.__base_revisions__)
        # Read before stamping, so the stamps come after whatever the read reveals.
        known = self._read_copy(buffer, store_key, document_type) if merge else None
        first = None
        if has_pending(document) or document.__revision__ is None:
            self.session.revise(document)
            assert document.__revision__ is not None
            first = to_micros(document.__revision__.updated_at)
        revision = document.__revision__
        assert revision is not None
        entry = PendingCopy(
            document_type,
            state_of(document),
            Revision(self.session, revision.updated_at),
            document.__base_revisions__,
            first,
            snapshot,
        )
        if known is not None:
            state = join_documents(document_type, known.state, entry.state)
            updated = max(known.revision.updated_at, revision.updated_at)
            entry = PendingCopy(
                document_type,
                state,
                Revision(self.session, updated),
                entry.bases.merge(known.bases),
                first,
                snapshot,
            )
        buffer.write(store_key, entry)
        if document is not assigned:
            take_over(assigned, document)
        return build_document(document_type, entry.state, entry.revision, entry.bases)

    def delete_document(
        self, document_type: type[_D], key_spec: Sequence[str], key: Sequence[str]
    ) -> bool:
        """Delete the document at *key* for every session: a tombstone in this
        session's copy. False if there was no such document."""
        spec = KeySpec(key_spec)
        merged = self._merged(document_type, spec, key)
        if merged is None or not document_alive(merged[0]):
            return False
        state, _, bases = merged
        micros = self.session.clock.now_micros()
        stamp = (micros, self.session.identifier)
        tomb = tombstone(document_type, state, stamp)
        buffer = self.get_current_transaction()
        buffer.edited = True
        revision = Revision(self.session, from_micros(micros))
        entry = PendingCopy(
            document_type, tomb, revision, bases, micros, self.snapshot_key(spec, key)
        )
        buffer.write(self._own_key(spec, key), entry)
        return True


def _merge_copies(
    document_type: type[MergeableDocument], copies: list[Copy]
) -> tuple[DocState, datetime, RevisionSet]:
    """The join of *copies*, the time of the merged revision (that of the copy that is
    the join, if one is, else the newest) and the merged base revisions.

    An unstamped copy (put in the store by hand) takes the newest compaction floor of
    the others: its contents carry the oldest possible stamp, so against a snapshot
    they would count as superseded by it; this way they fill the fields no session
    wrote, and lose to every real write."""
    states = [c.state for c in copies]
    if not all(c.stamped for c in copies):
        floors = [s.floor for s in states if s.floor is not None]
        if floors:
            top = max(floors)
            states = [c.state if c.stamped else c.state._replace(floor=top) for c in copies]
    state = join_all_documents(document_type, states)
    same = [c for c in copies if c.state is state]
    newest = same[0] if same else max(copies, key=lambda c: c.revision.updated_at)
    revisions = RevisionSet(c.revision for c in copies if c.stamped)
    return state, newest.revision.updated_at, revisions.merge(*(c.bases for c in copies))


_ROUTE_SPECS: weakref.WeakKeyDictionary[type, list[KeySpec]] = weakref.WeakKeyDictionary()


def _slots_alive(slots: list[_Slot]) -> bool:
    """Whether copies with these ``(added, deleted, floor)`` stamps hold a document
    that exists, as their merge would judge it: a copy older than a compacted
    snapshot counts only with what it did after the snapshot's floor."""
    if not slots:
        return False
    top = max((slot[2] for slot in slots if slot[2] is not None), default=None)
    added = deleted = None
    for slot in slots:
        made, gone = slot[0], slot[1]
        if top is not None and slot[2] != top:  # superseded up to the snapshot's floor
            made, gone = _after(made, top), _after(gone, top)
        if made is not None and (added is None or made > added):
            added = made
        if gone is not None and (deleted is None or gone > deleted):
            deleted = gone
    return document_alive(DocState(added, deleted, None, {}))


def _after(stamp: Stamp | None, floor: Stamp) -> Stamp | None:
    """*stamp* if it is after *floor*, else ``None``."""
    return stamp if stamp is not None and stamp > floor else None


def _route_specs(cls: type) -> list[KeySpec]:
    """The key specs of the routes *cls* declares (or inherits)."""
    specs = _ROUTE_SPECS.get(cls)
    if specs is None:
        seen: dict[str, object] = {}
        for klass in reversed(cls.__mro__):
            seen.update(vars(klass))
        specs = [value.spec for value in seen.values() if isinstance(value, Route)]
        _ROUTE_SPECS[cls] = specs
    return specs


def _is_copy(identifier: str) -> bool:
    """Whether a copy's name part is a session identifier or the snapshot's."""
    return identifier == SNAPSHOT_IDENTIFIER or bool(
        Session.IDENTIFIER_PATTERN.fullmatch(identifier)
    )


def _check_type(document_type: type) -> None:
    if not (isinstance(document_type, type) and issubclass(document_type, MergeableDocument)):
        raise TypeError(f"expected a MergeableDocument subclass, not {document_type!r}")
