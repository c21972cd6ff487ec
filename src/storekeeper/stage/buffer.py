"""A stage transaction's pending writes and their commit.

:class:`DirtyBuffer` holds, per store key, the merge state a transaction will write to
the session's own copy (:class:`PendingCopy`). Its flush writes every copy in one store
transaction: each is re-read, merged with whatever another thread or process of the same
session wrote meanwhile, and written with a conditional write, retried on conflict, so
no edit is lost; it refuses (:class:`TransactionError`, nothing written) a commit whose
edits a compaction's floor has passed meanwhile (see :mod:`storekeeper.stage.stage`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from storekeeper import errors
from storekeeper.stage._copies import Copy, CopyCache, load_copy
from storekeeper.stage.codec import decode_slot, encode_document
from storekeeper.stage.document import MergeableDocument
from storekeeper.stage.merge import DocState, join_documents
from storekeeper.stage.session import Revision, RevisionSet, Session, from_micros
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.owners import current_owner

__all__ = ["DirtyBuffer", "PendingCopy", "TransactionError", "get_current_context_id"]

_COMMIT_ATTEMPTS = 64


class TransactionError(errors.TransactionError, RuntimeError):
    """A stage operation needs a transaction and none is open in this context, or one
    is begun while another is open in it; also a commit that kept conflicting."""


def get_current_context_id() -> object:
    """The current context: the running asyncio task, or else the current thread."""
    return current_owner()


@dataclass(slots=True)
class PendingCopy:
    """What a transaction will merge into one copy of a document at commit: its type,
    merge state, revision and base revisions."""

    document_type: type[MergeableDocument]
    state: DocState
    revision: Revision
    bases: RevisionSet
    #: The time (microseconds) of the earliest edit this transaction stamped into the
    #: entry, ``None`` if it made none (an adopted document).
    first: int | None = None
    #: The store key of the document's compacted snapshot, checked at commit.
    snapshot: str | None = None


class DirtyBuffer:
    """A transaction's pending writes: store key -> merge state of the session's copy.

    Internal: the stage creates one per transaction and :meth:`flush`\\ es it on commit;
    the flush raises :class:`TransactionError`, writing nothing, when a compaction floor
    recorded since would supersede the transaction's edits (see the module docstring).
    *repository* is the store it flushes to, *lock* the stage's lock shared by its buffers.
    """

    def __init__(
        self, repository: AbstractStore, lock: threading.RLock, cache: CopyCache | None = None
    ) -> None:
        self.repository = repository
        self.lock = lock
        self.cache = cache if cache is not None else CopyCache()
        #: Pending writes: key -> what will be merged into the stored copy.
        self.dictionary: dict[str, PendingCopy] = {}
        #: Whether :meth:`BaseStage.touch` was called: the commit records the session.
        self.touched = False
        #: Whether the transaction wrote or deleted a document: the commit records the
        #: session too (at most once per :attr:`BaseStage.touch_interval`). A read that
        #: adopts an unstamped document buffers a copy but does not set it.
        self.edited = False

    def write(self, key: str, entry: PendingCopy) -> None:
        """Buffer *entry* for *key*, merged with what the buffer already holds for it."""
        known = self.dictionary.get(key)
        if known is not None:
            state = join_documents(entry.document_type, known.state, entry.state)
            updated = max(known.revision.updated_at, entry.revision.updated_at)
            bases = known.bases.merge(entry.bases)
            firsts = [f for f in (known.first, entry.first) if f is not None]
            entry = PendingCopy(
                entry.document_type,
                state,
                Revision(entry.revision.session, updated),
                bases,
                min(firsts, default=None),
                entry.snapshot or known.snapshot,
            )
        self.dictionary[key] = entry

    def keys_under(self, prefix: str) -> list[str]:
        """The buffered keys starting with *prefix*."""
        return [key for key in self.dictionary if key.startswith(prefix)]

    def flush(self, session: Session, extra: dict[str, bytes] | None = None) -> None:
        """Write every buffered copy (plus the raw *extra* keys) in one store
        transaction, merging each with its stored version; retried on conflict."""
        if not self.dictionary and not extra:
            return
        with self.lock:
            for attempt in range(_COMMIT_ATTEMPTS):
                written = []
                try:
                    with self.repository.transaction("stage commit"):
                        for key, entry in self.dictionary.items():
                            written.append(self._flush_one(session, key, entry))
                        for key, data in (extra or {}).items():
                            self.repository.set(key, (data, {}))
                except errors.ConflictError:
                    time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 8)))
                    continue
                for key, version, copy in written:
                    self.cache.put((copy.state_type, key), version, copy.copy)
                self.dictionary.clear()
                return
        raise TransactionError(f"the commit conflicted {_COMMIT_ATTEMPTS} times in a row")

    def _flush_one(
        self, session: Session, key: str, entry: PendingCopy
    ) -> tuple[str, str | None, _Written]:
        store = self.repository
        self._check_floor(session, key, entry)
        found = load_copy(store, key, entry.document_type, session, self.cache)
        version = None
        if found is not None:
            stored, version = found
            merged = join_documents(entry.document_type, entry.state, stored.state)
            updated = max(entry.revision.updated_at, stored.revision.updated_at)
            entry = PendingCopy(
                entry.document_type,
                merged,
                Revision(session, updated),
                entry.bases.merge(stored.bases),
            )
        body, metadata = encode_document(
            entry.document_type, entry.state, entry.revision, entry.bases
        )
        if found is None:
            new_version = store.set(key, (body, metadata), if_exists=False)
        else:
            new_version = store.set(key, (body, metadata), if_version=version)
        copy = Copy(entry.state, entry.revision, entry.bases, True)
        return key, new_version, _Written(entry.document_type, copy)

    def _check_floor(self, session: Session, key: str, entry: PendingCopy) -> None:
        """TransactionError if a compaction that ran while this transaction was open put
        its floor at or after the transaction's earliest edit of *key*: the snapshot
        would supersede that edit, so committing it would drop it silently. A floor
        never passes what the compaction saw written (see
        :mod:`storekeeper.stage.compact`), so this only happens when another session
        wrote the document after this transaction read it and this transaction's edits
        are stamped more than the retention before the compacting session's clock:
        because the transaction stayed open that long, or because this session's clock
        runs more than the retention behind the compacting session's (then even a
        short transaction is refused; the retry succeeds, since reading the snapshot
        moves this session's clock past its floor)."""
        if entry.first is None or entry.snapshot is None:
            return
        try:
            floor = decode_slot(self.repository.get_metadata(entry.snapshot))[2]
        except KeyError:
            return
        if floor is not None and floor >= (entry.first, session.identifier):
            raise TransactionError(
                f"cannot commit {key!r}: a compaction ran while this transaction was open "
                f"and supersedes what it stamped at {from_micros(entry.first).isoformat()} "
                f"(the compaction's floor is {from_micros(floor[0]).isoformat()}); nothing "
                "was written -- read the document again and redo the edit in a new "
                "transaction (this happens when the transaction stayed open longer than "
                "the compaction's retention, or when this session's clock runs more than "
                "the retention behind the compacting session's clock)"
            )


@dataclass(frozen=True, slots=True)
class _Written:
    state_type: type[MergeableDocument]
    copy: Copy
