"""Composite stores: stores built from other stores, each a store like any other.

- :class:`JoinedStore`: several stores seen as one; the first that has a key wins and
  every write goes to the first.
- :class:`MountedStore`: a store mounted at a key prefix of another (for example a local,
  writable cache of part of a remote store), with :meth:`MountedStore.push`.
- :class:`SimpleAuthStore`: password authentication and per-key permissions
  (:class:`~storekeeper.store.AbstractAuthorizingStore`) over any store.
- :class:`CachedStore`: a read-through cache validated by the source's versions.

Composites pass the conformance suite, forward their children's events with themselves
as the source, and make transactions span the children they write (each child
all-or-nothing; see :mod:`storekeeper.composite._wrapper` for the limits across children).
"""

from __future__ import annotations

from storekeeper.composite.auth import (
    EVERYONE,
    PasswordEncoder,
    SimpleAuthStore,
    make_encoder,
    sha1_hasher,
)
from storekeeper.composite.cached import CachedStore
from storekeeper.composite.joined import JoinedStore
from storekeeper.composite.mounted import MountedStore

__all__ = [
    "EVERYONE",
    "CachedStore",
    "JoinedStore",
    "MountedStore",
    "PasswordEncoder",
    "SimpleAuthStore",
    "make_encoder",
    "sha1_hasher",
]
