"""``MountedStore``: one store mounted at a key prefix of another, like a file system."""

from __future__ import annotations

from typing import Any

from storekeeper.composite._overlay import Layer, OverlayStore, is_whiteout
from storekeeper.events import BaseEventManager
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore
from storekeeper.store.backend import (
    check_key,
    missing,
)

__all__ = ["MountedStore"]


class MountedStore(OverlayStore):
    """*mount_store* shown at the key prefix *mount_point* of *backing_store*'s key space.

    The key ``mount_point + k`` reads ``k`` from the mount store when it has it, else
    the full key from the backing store; keys outside the mount point always come from
    the backing store. Writes are accepted only under the mount point (with a non-empty
    rest) and go to the mount store; anything else raises
    :class:`~storekeeper.errors.ReadOnlyStoreError` naming the key. The backing store is
    only read, except by :meth:`push`. Deleting a key that the backing store holds
    leaves a whiteout in the mount store, so the key stays deleted in this view. An
    empty *mount_point* mounts over the whole key space.

    The typical use is a local, writable cache of part of a remote store: mount a local
    store over the remote one, change keys locally, and :meth:`push` them when ready.
    """

    def __init__(
        self,
        mount_point: str,
        mount_store: AbstractStore,
        backing_store: AbstractReadOnlyStore,
        event_manager: BaseEventManager | None = None,
    ) -> None:
        if not isinstance(mount_point, str) or "\x00" in mount_point:
            raise ValueError(f"mount_point must be a str without NUL, not {mount_point!r}")
        self.mount_point = mount_point
        super().__init__([Layer(mount_store, mount_point), Layer(backing_store)], event_manager)

    @property
    def mount_store(self) -> AbstractStore:
        """The store mounted at :attr:`mount_point`."""
        store = self._children[0]
        assert isinstance(store, AbstractStore)
        return store

    @property
    def backing_store(self) -> AbstractReadOnlyStore:
        """The store the mount store is mounted on."""
        return self._children[1]

    def info(self) -> dict[str, Any]:
        """The store description plus ``mount_point``."""
        return {**super().info(), "mount_point": self.mount_point}

    def push(self, key: str) -> None:
        """Move *key* from the mount store into the backing store, in one transaction.

        The backing store receives the mount store's data and metadata (a whiteout
        deletes the key there), then the mount store forgets the key; what this store
        shows for *key* does not change, so no modification event is emitted. Raises
        :class:`~storekeeper.errors.KeyNotFoundError` if the mount store does not hold
        *key*, :class:`~storekeeper.errors.ReadOnlyStoreError` if the backing store is
        read-only. With transactional children either both changes happen or neither;
        the backing store commits first, so a failure in between leaves the key in both
        stores rather than in neither.
        """
        check_key(key)
        self._require_connection()
        inner = self._layers[0].inner(key)
        if inner is None:
            raise missing(key)
        with self.transaction(f"Pushing {key!r}"):
            mount = self._writer(0)
            raw = mount.get(inner)
            backing = self._writer(1)
            if not is_whiteout(raw):
                self._quietly(backing.set, key, raw)
            elif backing.exists(key):
                self._quietly(backing.delete, key)
            self._quietly(mount.delete, inner, if_version=raw.version)
