"""``JoinedStore``: several stores seen as one, the first store that has a key winning."""

from __future__ import annotations

from collections.abc import Sequence

from storekeeper.composite._overlay import Layer, OverlayStore
from storekeeper.events import BaseEventManager
from storekeeper.store.abstract import AbstractReadOnlyStore

__all__ = ["JoinedStore"]


class JoinedStore(OverlayStore):
    """The union of the keys of *stores*; for a key several stores hold, the first wins.

    Every write goes to the first store, which must be writable; the others are only
    read (they may be read-only stores). Writing part of a key that only a later store
    holds copies the rest of it into the first store. ``delete(key)`` removes the key
    from the joined view even when a later store still holds it, by leaving a whiteout
    in the first store (see :mod:`storekeeper.composite._overlay`); the metadata name
    ``"\\x00storekeeper:whiteout"`` is reserved for that.

    Queries and globs list each key once, from the store that wins it. A transaction
    enters the first store's transaction when it begins, so it is as isolated and as
    atomic as that store's own: read-modify-write transactions through the joined store
    never lose an update. (Later stores are read outside any transaction.) ``connect`` passes
    *credentials* to every store that is not connected yet, and ``disconnect``
    disconnects those again; the joined store can be reconnected. ``info()`` lists the
    joined stores' own descriptions under ``children``.
    """

    def __init__(
        self,
        stores: Sequence[AbstractReadOnlyStore],
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__([Layer(store) for store in stores], event_manager)

    @property
    def stores(self) -> tuple[AbstractReadOnlyStore, ...]:
        """The joined stores, in priority order."""
        return self._children
