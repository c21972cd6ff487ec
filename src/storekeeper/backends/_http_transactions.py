"""Client-side transactions of :class:`~storekeeper.backends.http.DynamicURLStore`.

A transaction holds the store object's write lock from its start to its end, so plain
writes and transactions of other threads and tasks of this process wait for it (or are
refused, see :mod:`storekeeper.store.owners`). Its writes are kept here, in memory, as
an *overlay* its owner reads through, and as a log sent at the commit: in one
``POST /batch`` that the server applies inside one transaction of the served store
(all-or-nothing where that store's transactions are), or, to a server without
``/batch``, write by write.

Other clients are not kept out: a read inside the transaction sees their committed
writes as they happen (so two reads of one key may differ). The transaction is
*optimistic*: each key it read (by ``get``, ``get_data``, ``get_metadata``, ``exists``,
``version_of``, ...) is remembered at the version it first had, and at the commit the
server checks that every one of them is still at that version (or still missing),
refusing the whole commit with :class:`~storekeeper.errors.ConflictError` otherwise.
That holds for a transaction that only read, too: its commit is a batch of checks,
which fails if what it read was not one consistent state of the store. What a query
or a listing finds is not checked (a key another client adds to its results goes
unnoticed), only the keys read; nor is anything checked at a commit to a server
without ``/batch`` checks (``"batch_checks"`` in ``/info``).

The server gives a value its version only when the commit applies it, so inside the
transaction a key it wrote has no known version: ``set`` returns ``None``,
``get(key).version`` and ``version_of(key)`` are ``None``, and a write conditional on
an ``if_version`` of such a key fails (``ConflictError``) since the key is no longer at
any version the caller could have read. After the commit, reads give the version the
server assigned.

So :attr:`~storekeeper.backends.http.DynamicURLStore.capabilities` declares
``isolated_transactions`` where the server takes batch checks and the served store's
transactions are isolated: a transaction's writes are seen by nobody before the commit,
a read-modify-write never loses another client's concurrent update, and a transaction
that read an inconsistent state does not end normally; only, the isolation is checked
at the commit rather than kept during the transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storekeeper.backends.http_protocol import encode_batch
from storekeeper.errors import ConflictError
from storekeeper.store.backend import (
    Claim,
    check_precondition,
    exists_conflict,
    missing,
    shown_key,
)
from storekeeper.store.owners import busy, may_wait
from storekeeper.store.value import BytesValue, Value

__all__ = ["ClientTransactions", "Op", "Overlay", "PendingTransaction", "Turn", "Write"]


@dataclass(frozen=True, slots=True)
class Overlay:
    """What the transaction wrote to one key: ``deleted``, or the data and metadata
    (``None``: as the server has it)."""

    deleted: bool = False
    data: bytes | None = None
    metadata_json: str | None = None


#: One write to replay at the commit, request by request.
Write = Callable[[], object]


@dataclass(frozen=True, slots=True)
class Op:
    """One write as a ``/batch`` entry: its header (``op``, ``key``, ``metadata``) and
    its data."""

    header: dict[str, object]
    data: bytes | None = None


@dataclass
class PendingTransaction:
    """The open transaction of one owner: its overlay and its log of writes."""

    claim: Claim
    overlay: dict[str, Overlay] = field(default_factory=dict)
    log: list[tuple[Write, Op]] = field(default_factory=list)
    #: The server's version of each key the transaction read (``None``: it was missing),
    #: as first read; the commit makes the server check them (``if_version``).
    seen: dict[str, str | None] = field(default_factory=dict)

    def record(self, key: str, entry: Overlay, write: Write, op: Op) -> None:
        """Note that *key* now reads as *entry* and that *write* (or *op* in a batch)
        makes it so."""
        self.overlay[key] = entry
        self.log.append((write, op))

    def checked_ops(self, checks: bool) -> list[Op]:
        """The log's writes, the first write of each key read by the transaction made
        conditional on the version it read, so that a commit over another client's
        change of that key fails instead of losing it. With *checks* (a server that
        takes them), a ``check`` entry first for each key read but not written: a
        commit based on a key it only read fails too if that key changed."""
        ops: list[Op] = []
        pinned: set[str] = set()
        for _, logged in self.log:
            key = str(logged.header["key"])
            if key in self.seen and key not in pinned:
                pinned.add(key)
                extra = _precondition(self.seen[key])
                logged = Op({**logged.header, **extra}, logged.data)  # noqa: PLW2901
            ops.append(logged)
        if not checks:
            return ops
        only_read = [key for key in self.seen if key not in pinned]
        return [
            Op({"op": "check", "key": key, **_precondition(self.seen[key])}) for key in only_read
        ] + ops

    def savepoint(self) -> tuple[int, dict[str, Overlay]]:
        """A token for :meth:`rollback_to`."""
        return len(self.log), dict(self.overlay)

    def rollback_to(self, token: object) -> None:
        """Forget what was written since the savepoint *token*."""
        assert isinstance(token, tuple)  # made by savepoint()
        count, overlay = token
        del self.log[count:]
        self.overlay = dict(overlay)


def _precondition(version: str | None) -> dict[str, object]:
    """The batch precondition "as read": at *version*, or missing (``None``)."""
    return {"if_exists": False} if version is None else {"if_version": version}


class ClientTransactions:
    """The transaction side of :class:`~storekeeper.backends.http.DynamicURLStore`: the
    transaction hooks, the overlay reads and the write turn (see the module)."""

    _turn: threading.Condition
    _writers: int
    _pending: PendingTransaction | None
    _server: dict[str, Any]
    root_url: str

    if TYPE_CHECKING:

        def _call(
            self, method: str, url: str, key: str | None, ok: tuple[int, ...] = ..., **kwargs: Any
        ) -> Any: ...
        def _url(self, key: str, part: str) -> str: ...
        def _head(self, key: str) -> dict[str, Any] | None: ...
        def _require_connection(self) -> None: ...

    def _own_pending(self) -> PendingTransaction | None:
        pending = self._pending
        if pending is not None and pending.claim.is_mine():
            return pending
        return None

    def _overlay(self, key: str) -> Overlay | None:
        pending = self._pending
        if pending is None or not pending.overlay or not pending.claim.is_mine():
            return None
        self._require_connection()
        return pending.overlay.get(key)

    def _overlay_metadata(self, key: str, entry: Overlay) -> str:
        if entry.deleted:
            raise missing(key)
        if entry.metadata_json is not None:
            return entry.metadata_json
        response = self._call("GET", self._url(key, "metadata"), key, (200,))
        return str(response.data.decode("utf-8"))

    def _overlay_value(self, key: str, entry: Overlay) -> Value:
        metadata_json = self._overlay_metadata(key, entry)
        data = entry.data
        if data is None:
            data = bytes(self._call("GET", self._url(key, "data"), key, (200,)).data)
        return BytesValue(data, metadata_json=metadata_json)

    def _check_pending(self, key: str, if_version: str | None, if_exists: bool | None) -> bool:
        """Check the preconditions of a transaction's write to *key* now; whether *key*
        exists for the transaction. A key the transaction wrote has no version until the
        commit (see the module), so an ``if_version`` fails for it."""
        entry = self._overlay(key)
        if entry is None:
            found = self._head(key)
            current = None if found is None else (found["version"] or "")
            if if_version is not None or if_exists is not None:
                check_precondition(key, current, if_version, if_exists)
            return found is not None
        if entry.deleted:
            check_precondition(key, None, if_version, if_exists)
            return False
        if if_version is not None:
            raise ConflictError(
                f"key {shown_key(key)} is not at version {if_version!r}: this transaction "
                "wrote it, and it gets its version when the transaction commits"
            )
        if if_exists is False:
            raise exists_conflict(key)
        return True

    def _writing(self) -> Turn:
        return Turn(self)

    def _begin_transaction(self) -> None:
        self._require_connection()
        with self._turn:
            while self._pending is not None or self._writers:
                self._wait_turn()
            self._pending = PendingTransaction(Claim.take())

    def _wait_turn(self) -> None:
        pending = self._pending
        if pending is not None and pending.claim.blocks_here():
            raise pending.claim.refusal(self)
        if not may_wait():
            raise busy(self)
        self._turn.wait()

    def _commit_transaction(self) -> None:
        pending = self._own_pending()
        assert pending is not None  # hooks run in the owner
        try:
            checks = bool(self._server.get("batch_checks"))
            if not pending.log:
                if pending.seen and checks:
                    self._send_batch(pending.checked_ops(True))
                return
            if not self._server.get("batch"):
                for write, _ in pending.log:
                    write()
                return
            self._send_batch(pending.checked_ops(checks))
        finally:
            self._end()

    def _send_batch(self, ops: list[Op]) -> None:
        """``POST /batch`` of *ops*; ConflictError when a check or precondition fails."""
        body = encode_batch([(op.header, op.data) for op in ops])
        self._call("POST", self.root_url + "/batch", None, (200,), body=b"".join(body))

    def _rollback_transaction(self) -> None:
        if self._own_pending() is not None:
            self._end()

    def _end(self) -> None:
        with self._turn:
            self._pending = None
            self._turn.notify_all()

    def _savepoint(self) -> object:
        pending = self._own_pending()
        assert pending is not None
        return pending.savepoint()

    def _rollback_to_savepoint(self, token: object) -> None:
        pending = self._own_pending()
        assert pending is not None
        pending.rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        return None


class Turn:
    """``with store._writing() as pending``: the caller's own transaction, or ``None``
    once no other owner's transaction is open (counted as a running plain write)."""

    def __init__(self, store: ClientTransactions) -> None:
        self._store = store
        self._counted = False

    def __enter__(self) -> PendingTransaction | None:
        store = self._store
        with store._turn:
            while True:
                pending = store._pending
                if pending is None:
                    store._writers += 1
                    self._counted = True
                    return None
                if pending.claim.is_mine():
                    return pending
                store._wait_turn()

    def __exit__(self, *exc: object) -> None:
        if self._counted:
            store = self._store
            with store._turn:
                store._writers -= 1
                store._turn.notify_all()
