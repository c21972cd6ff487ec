"""Optimistic transactions of :class:`~storekeeper.backends.redis.RedisStore`.

A transaction holds one connection of its own (a redis-py pipeline). Every key it reads
from Redis is ``WATCH``-ed first, on that connection, and so is every index or key list
a query or listing of it reads. Its writes are kept aside (:attr:`Transaction.changes`,
records in the stored layout; large data already staged as chunk sets), seen only by
its owner. The commit sends them all in one ``MULTI``/``EXEC``: Redis applies every
write or, when a watched key changed since it was read, none
(:class:`~storekeeper.errors.ConflictError`). So a read-modify-write transaction never
loses a concurrent update from any process; it fails instead, and the caller decides
whether to run it again.

Within one store object one transaction is open at a time (an owner lock): another
thread waits for it, another asyncio task of the same thread gets
:class:`~storekeeper.errors.TransactionError` at once. So transactions of one store
object never conflict with each other: only writes outside transactions and other
processes' (or store objects') writes can make one fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as rx

from storekeeper.backends._redis_errors import translated
from storekeeper.backends._redis_values import chunk_set
from storekeeper.store.backend import Claim

__all__ = ["FIELDS", "Record", "Transaction", "as_record"]

#: A record in the stored layout (field name -> bytes), or None for a deleted key.
Record = dict[bytes, bytes]
#: The fields of a record a read fetches (all but the index entries), as bytes: the
#: client sends bytes as they are, where it would encode each str again on every call.
FIELDS = (b"v", b"c", b"t", b"z", b"m", b"d", b"b", b"h")


def as_record(values: list[bytes | None]) -> Record | None:
    """The record of an ``HMGET`` of :data:`FIELDS` (``None``: no such key)."""
    if values[0] is None:
        return None
    return {name: value for name, value in zip(FIELDS, values, strict=True) if value is not None}


_ABSENT = object()


@dataclass(slots=True)
class Transaction:
    """One open transaction: its owner, connection and pending writes."""

    claim: Claim
    pipe: Any
    root: str
    changes: dict[str, Record | None] = field(default_factory=dict)
    log: list[tuple[str, object]] = field(default_factory=list)
    #: The change-stream entries of the writes, in order: (position in :attr:`log`,
    #: fields); the commit appends them, so other processes see each write's event.
    events: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    staged: set[str] = field(default_factory=set)
    watched: set[str] = field(default_factory=set)

    # -- reads --------------------------------------------------------------------------
    def watch(self, names: Iterable[str]) -> None:
        """``WATCH`` the Redis keys *names* (each once per transaction)."""
        fresh = [name for name in names if name not in self.watched]
        if fresh:
            self._call("watching keys", self.pipe.watch, *fresh)
            self.watched.update(fresh)

    def record(self, key: str) -> Record | None:
        """*key*'s record as the transaction sees it (its own write, else the committed
        record, watched)."""
        if key in self.changes:
            return self.changes[key]
        name = f"{self.root}k:{key}"
        self.watch([name])
        return as_record(self._call(f"reading {key!r}", self.pipe.hmget, name, FIELDS))

    def read(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """Run a read command on the transaction's connection (after ``WATCH``, the
        pipeline runs it at once)."""
        if not self.pipe.watching:
            self.watch([f"{self.root}K"])
        return self._call(what, call, *args)

    def _call(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except rx.RedisError as exc:
            raise translated(exc, what) from exc

    # -- writes -------------------------------------------------------------------------
    def put(self, key: str, record: Record | None) -> None:
        """Keep *record* (``None``: deleted) as *key*'s pending write."""
        self.log.append((key, self.changes.get(key, _ABSENT)))
        self.changes[key] = record
        if record is not None and b"b" in record:
            self.staged.add(record[b"b"].decode())

    def note_event(self, fields: dict[str, str]) -> None:
        """Keep the change-stream entry *fields* of the write just :meth:`put`."""
        self.events.append((len(self.log) - 1, fields))

    def rollback_to(self, mark: int) -> None:
        """Undo the writes (and their events) made since the log had *mark* entries."""
        while self.events and self.events[-1][0] >= mark:
            self.events.pop()
        while len(self.log) > mark:
            key, previous = self.log.pop()
            if previous is _ABSENT:
                del self.changes[key]
            else:
                self.changes[key] = previous  # type: ignore[assignment]

    def unclaimed(self) -> list[str]:
        """Chunk sets staged by the transaction that no pending write points at."""
        used = {
            record[b"b"].decode()
            for record in self.changes.values()
            if record is not None and b"b" in record
        }
        return [chunk_set(self.root, blob) for blob in self.staged - used]

    def close(self, client: Any, blobs: list[str]) -> None:
        """Release the connection (``UNWATCH``) and delete the chunk sets *blobs*."""
        try:
            self.pipe.reset()
        finally:
            if blobs:
                with contextlib.suppress(rx.RedisError):  # staged sets expire on their own
                    client.unlink(*blobs)
