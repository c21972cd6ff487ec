"""Transaction staging and commit for :mod:`storekeeper.backends.filesystem`.

A transaction holds the store lock from begin to end and keeps its writes in a
:class:`Staging` overlay (visible only to its owner, the task or thread), so rolling back means
forgetting the overlay. :func:`commit_staging` then writes the overlay to disk: a single
changed key is written directly (one atomic rename is already all-or-nothing), more
keys go through staged files and the journal (see :mod:`._fs_journal`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from storekeeper import files
from storekeeper.backends._fs_journal import (
    JOURNAL_NAME,
    STAGE_PREFIX,
    Journal,
    commit_journal,
)
from storekeeper.backends._fs_names import encode_key
from storekeeper.backends._fs_records import (
    Record,
    damaged_record,
    load_record,
    obsolete_data_file,
    pack_record,
)
from storekeeper.errors import CorruptFileError
from storekeeper.files import fsync_directory
from storekeeper.store.backend import (
    new_version,
)

__all__ = ["Staging", "commit_staging", "remove_staged_files"]

_ABSENT = object()

#: Stores one key's committed record: ``(key, old record, new record or None)``.
StoreCommitted = Callable[[str, Record | None, Record | None], None]


@dataclass
class Staging:
    """One transaction's writes, not yet visible to anyone else.

    ``changes`` maps a key to its new record (``None``: deleted); ``log`` keeps each
    change's previous entry so a savepoint can be rolled back; ``created_data`` lists
    the data files written for the transaction (never one a committed record uses);
    ``journaled`` turns true at the commit point, after which a failure must not undo
    anything (recovery rolls forward).
    """

    changes: dict[str, Record | None] = field(default_factory=dict)
    log: list[tuple[str, object]] = field(default_factory=list)
    created_data: list[str] = field(default_factory=list)
    journaled: bool = False

    def record(self, key: str, new: Record | None) -> None:
        """Stage *new* (``None``: a deletion) as *key*'s record."""
        self.log.append((key, self.changes.get(key, _ABSENT)))
        self.changes[key] = new

    def savepoint(self) -> int:
        """A token for :meth:`rollback_to`."""
        return len(self.log)

    def rollback_to(self, token: int) -> None:
        """Forget the changes staged since :meth:`savepoint` returned *token*."""
        while len(self.log) > token:
            key, previous = self.log.pop()
            if previous is _ABSENT:
                del self.changes[key]
            else:
                self.changes[key] = previous  # type: ignore[assignment]

    def referenced_data(self) -> set[str]:
        """The data files the staged records name."""
        return {r.data_file for r in self.changes.values() if r is not None and r.data_file}


def commit_staging(
    root: str, staging: Staging, store_committed: StoreCommitted, *, durable: bool
) -> list[str]:
    """Make *staging*'s changes the committed state; return the data files now unused.

    *store_committed* writes one key's record directly (the single-key path).
    """
    keys_dir = os.path.join(root, "keys")
    olds = {key: _committed(keys_dir, key) for key in staging.changes}
    effective = [k for k, new in staging.changes.items() if new is not None or olds[k] is not None]
    if len(effective) == 1:
        key = effective[0]
        store_committed(key, olds[key], staging.changes[key])
    elif effective:
        _commit_through_journal(root, staging, effective, olds, durable=durable)
    referenced = staging.referenced_data()
    return [name for name in staging.created_data if name not in referenced]


def _committed(keys_dir: str, key: str) -> Record | None:
    try:
        record = load_record(os.path.join(keys_dir, encode_key(key)), with_data=False)
    except CorruptFileError:
        # The transaction replaces or deletes it (other writes of it raised earlier).
        return damaged_record(key)
    return record if record is not None and record.key == key else None


def _commit_through_journal(
    root: str,
    staging: Staging,
    keys: list[str],
    olds: dict[str, Record | None],
    *,
    durable: bool,
) -> None:
    keys_dir = os.path.join(root, "keys")
    journal = Journal()
    prefix = f"{STAGE_PREFIX}{new_version()}-"
    for number, key in enumerate(keys):
        new, name = staging.changes[key], encode_key(key)
        if new is None:
            journal.deletes.append(name)
        else:
            staged = f"{prefix}{number}"
            _write_staged(os.path.join(keys_dir, staged), pack_record(new), durable=durable)
            journal.puts.append((staged, name))
        obsolete = obsolete_data_file(olds[key], new)
        if obsolete is not None:
            journal.garbage.append(obsolete)
    if durable:
        fsync_directory(keys_dir)
    staging.journaled = True
    try:
        commit_journal(root, journal, durable=durable)
    except BaseException:
        # No journal on disk (its write failed: a full disk) means no commit point was
        # reached: the rollback may then remove the staged and data files. (Were it
        # applied and removed already, those are renamed or referenced, and kept.)
        if not os.path.exists(os.path.join(root, JOURNAL_NAME)):
            staging.journaled = False
        raise


def _write_staged(path: str, content: bytes, *, durable: bool) -> None:
    # No rename: the journal, written once this file is durable, is what makes it count.
    with open(path, "xb") as stream:
        stream.write(content)
        stream.flush()
        if durable:
            files.fsync(stream.fileno())


def remove_staged_files(root: str) -> None:
    """Remove the staged files of a transaction that did not reach its commit point."""
    for entry in os.scandir(os.path.join(root, "keys")):
        if entry.name.startswith(STAGE_PREFIX):
            os.unlink(entry.path)
