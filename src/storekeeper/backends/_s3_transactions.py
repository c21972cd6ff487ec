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

from storekeeper.store.backend import Claim

__all__ = ["Base", "Change", "Transaction", "file_chunks"]

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
