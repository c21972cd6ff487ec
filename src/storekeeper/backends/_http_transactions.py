"""Client-side transactions of :class:`~storekeeper.backends.http.DynamicURLStore`.

A transaction holds the store object's write lock from its start to its end, so plain
writes and transactions of other threads and tasks of this process wait for it (or are
refused, see :mod:`storekeeper.store.owners`). Its writes are kept here, in memory, as
an *overlay* its owner reads through, and as a log replayed against the server, in
order, at the commit. The server applies each write on its own: other clients may see
a commit half done, and a commit that fails part-way keeps the writes already sent
(the store does not declare ``atomic_transactions``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from storekeeper.store.backend import Claim

__all__ = ["Overlay", "PendingTransaction", "Write"]


@dataclass(frozen=True, slots=True)
class Overlay:
    """What the transaction wrote to one key: ``deleted``, or the data and metadata
    (``None``: as the server has it)."""

    deleted: bool = False
    data: bytes | None = None
    metadata_json: str | None = None


#: One write to replay at the commit.
Write = Callable[[], object]


@dataclass
class PendingTransaction:
    """The open transaction of one owner: its overlay and its log of writes."""

    claim: Claim
    overlay: dict[str, Overlay] = field(default_factory=dict)
    log: list[Write] = field(default_factory=list)

    def record(self, key: str, entry: Overlay, write: Write) -> None:
        """Note that *key* now reads as *entry* and that *write* makes it so."""
        self.overlay[key] = entry
        self.log.append(write)

    def savepoint(self) -> tuple[int, dict[str, Overlay]]:
        """A token for :meth:`rollback_to`."""
        return len(self.log), dict(self.overlay)

    def rollback_to(self, token: object) -> None:
        """Forget what was written since the savepoint *token*."""
        assert isinstance(token, tuple)  # made by savepoint()
        count, overlay = token
        del self.log[count:]
        self.overlay = dict(overlay)
