"""The open transaction of an S3Store: writes kept aside until the commit.

S3 has no multi-key atomicity, and an S3Store does not pretend to have it
(``atomic_transactions=False``). What a transaction does guarantee:

- *Isolation in the store object*: one transaction is open at a time per store object;
  other threads' writes wait for it, and its writes are invisible to every other owner
  until the commit (they are held here, in memory or, over one part, in a temporary
  file).
- *No lost update, across processes and hosts*: the commit writes each key the
  transaction read (or wrote or deleted on a condition) on the condition that it is
  still at the version the transaction first saw (``If-Match`` on that write's ETag,
  ``If-None-Match: *`` for a key that was missing), after checking all of them first. A
  concurrent change from anywhere makes the commit fail with
  :class:`~storekeeper.errors.ConflictError` before anything is written. A key the
  transaction only wrote, without reading it, is written as a plain ``set`` would be.
- *Never silently half-applied*: if a write fails after others of the same commit were
  applied (a change that raced the check, a lost connection), the commit raises
  :class:`~storekeeper.errors.TransactionError` naming the keys written and the keys
  not written. Other readers may see some of the keys new and some old while a commit
  runs, and after such a failure.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from storekeeper.backends._s3_bucket import Known, Objects
from storekeeper.backends._s3_client import PreconditionError
from storekeeper.errors import ConflictError, TransactionError
from storekeeper.store.backend import Claim

__all__ = ["Base", "Change", "Transaction", "apply", "file_chunks"]

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Base:
    """A key as the transaction first saw it: its ETag (``None``: missing), and the
    version, created time, sidecar and inline metadata of that write."""

    etag: str | None
    version: str | None = None
    created: float | None = None
    sidecar: str | None = None
    metadata_json: str | None = None


@dataclass(slots=True)
class Change:
    """One pending write: new data (``bytes`` or a temporary file's path) and metadata,
    or a deletion (``data is None``)."""

    name: str
    data: bytes | str | None
    metadata_json: str
    tag: bytes
    size: int

    @property
    def version(self) -> str:
        """The version the key gets at the commit."""
        return self.tag.hex()


@dataclass(slots=True)
class Transaction:
    """The open transaction: its owner, its changes in order, the bases of the keys it
    touched and, for savepoints, what each change replaced."""

    claim: Claim
    changes: dict[str, Change] = field(default_factory=dict)
    bases: dict[str, Base] = field(default_factory=dict)
    log: list[tuple[str, object]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def record(self, key: str, change: Change) -> None:
        """Note *change* of *key* (replacing an earlier one of this transaction)."""
        self.log.append((key, self.changes.get(key, _ABSENT)))
        self.changes.pop(key, None)  # the commit applies keys in their last write's order
        self.changes[key] = change

    def rollback_to(self, mark: int) -> None:
        """Undo the changes recorded since ``len(log)`` was *mark*."""
        while len(self.log) > mark:
            key, previous = self.log.pop()
            if previous is _ABSENT:
                del self.changes[key]
            else:
                assert isinstance(previous, Change)
                self.changes[key] = previous

    def spill(self, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Write *chunks* to a new temporary file this transaction owns; its path and
        size."""
        handle, path = tempfile.mkstemp(prefix="storekeeper-s3-")
        self.files.append(path)
        size = 0
        with os.fdopen(handle, "wb") as stream:
            for chunk in chunks:
                stream.write(chunk)
                size += len(chunk)
        return path, size

    def discard_files(self) -> None:
        """Remove the temporary files (at the end of the transaction)."""
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.files.clear()


def file_chunks(path: str, size: int = 1024 * 1024) -> Iterator[bytes]:
    """The bytes of the file *path*, in chunks of *size*."""
    with open(path, "rb") as stream:
        while chunk := stream.read(size):
            yield chunk


def apply(objects: Objects, transaction: Transaction) -> None:
    """Write the transaction's changes: a key the transaction read (or wrote on a
    condition) only if it is still as first seen, a key it only wrote as a plain set
    does; see the module's docstring."""
    bases = transaction.bases
    changes = [
        (key, change)
        for key, change in transaction.changes.items()
        if change.data is not None or bases[key].etag is not None
    ]
    checked = [(key, change) for key, change in changes if key in bases]
    if len(changes) > 1:  # every condition checked before the first write
        for key, change in checked:
            head = objects.head(key, change.name)
            if (None if head is None else head.etag) != bases[key].etag:
                raise ConflictError(f"key {key!r} changed since the transaction read it")
    done: list[str] = []
    for key, change in changes:
        try:
            _apply_one(objects, key, change, bases.get(key))
        except Exception as exc:
            if not done:
                if isinstance(exc, PreconditionError):
                    raise ConflictError(
                        f"key {key!r} changed since the transaction read it"
                    ) from exc
                raise
            left = [k for k, _ in changes[len(done) :]]
            raise TransactionError(
                f"commit partly applied: written {done}, not written {left} "
                f"(writing {key!r} failed: {exc})"
            ) from exc
        done.append(key)


def _apply_one(objects: Objects, key: str, change: Change, base: Base | None) -> None:
    """Write one change: on *base*'s condition, or (``None``: a blind set) as a
    plain set that tries again after losing a race."""
    if change.data is None:
        assert base is not None and base.etag is not None  # deletes look first
        objects.delete(key, change.name, base.etag, base.sidecar)
        return
    if base is None:
        known = objects.recall(key)
    elif base.etag is None:
        known = None
    else:
        known = Known(base.version or "", base.etag, base.created or 0.0, base.sidecar)
    data = change.data
    objects.write(
        key,
        change.name,
        lambda: [data] if isinstance(data, bytes) else file_chunks(data),
        change.tag,
        change.metadata_json,
        known,
        retry=base is None,
    )
