"""Client-side transactions of :class:`~storekeeper.backends.http.DynamicURLStore`.

A transaction holds the store object's write lock from its start to its end, so plain
writes and transactions of other threads and tasks of this process wait for it (or are
refused, see :mod:`storekeeper.store.owners`). Its writes are kept here, in memory, as
an *overlay* its owner reads through, and as a log sent at the commit: in one
``POST /batch`` that the server applies inside one transaction of the served store
(all-or-nothing where that store's transactions are), or, to a server without
``/batch``, write by write. Other clients' writes between the transaction's reads and
its commit are not seen by it: transactions are isolated between the users of one
store object only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from storekeeper.store.backend import Claim

__all__ = ["Op", "Overlay", "PendingTransaction", "Write"]


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
    """One write as a ``/batch`` entry: its header (``op``, ``key``, ``metadata``), its
    data, and the version alias a ``set`` returned."""

    header: dict[str, object]
    data: bytes | None = None
    alias: str | None = None


@dataclass
class PendingTransaction:
    """The open transaction of one owner: its overlay and its log of writes."""

    claim: Claim
    overlay: dict[str, Overlay] = field(default_factory=dict)
    log: list[tuple[Write, Op]] = field(default_factory=list)

    def record(self, key: str, entry: Overlay, write: Write, op: Op) -> None:
        """Note that *key* now reads as *entry* and that *write* (or *op* in a batch)
        makes it so."""
        self.overlay[key] = entry
        self.log.append((write, op))

    def savepoint(self) -> tuple[int, dict[str, Overlay]]:
        """A token for :meth:`rollback_to`."""
        return len(self.log), dict(self.overlay)

    def rollback_to(self, token: object) -> None:
        """Forget what was written since the savepoint *token*."""
        assert isinstance(token, tuple)  # made by savepoint()
        count, overlay = token
        del self.log[count:]
        self.overlay = dict(overlay)
