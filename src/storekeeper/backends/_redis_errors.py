"""redis-py's errors translated into storekeeper's tree, at the edge of the Redis backend.

=====================================  ==================================================
redis-py                               storekeeper
=====================================  ==================================================
``AuthenticationError``,               :class:`~storekeeper.errors.AuthenticationError`
``AuthenticationWrongNumberOfArgs``
``NoPermissionError`` (ACL)            :class:`~storekeeper.errors.AuthorizationError`
``ConnectionError``, ``TimeoutError``  :class:`~storekeeper.errors.BackendUnavailableError`
``WatchError``                         :class:`~storekeeper.errors.ConflictError` (a key the
                                       transaction read changed), or
                                       BackendUnavailableError when the connection holding
                                       the ``WATCH`` was lost
any other ``RedisError``               :class:`~storekeeper.errors.BackendError`
=====================================  ==================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as rx

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    StorekeeperError,
)

__all__ = ["lost_watch", "translate", "translated"]


def lost_watch(exc: rx.WatchError) -> bool:
    """Whether *exc* reports a lost connection (redis-py raises WatchError for one that
    dies while it watches keys) rather than a watched key that changed."""
    return isinstance(exc.__context__, rx.ConnectionError | rx.TimeoutError | OSError)


def translated(exc: rx.RedisError, what: str) -> StorekeeperError:
    """The storekeeper error for *exc*, raised while *what* (e.g. "reading 'k'")."""
    if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return AuthenticationError(f"Redis refused the credentials while {what}: {exc}")
    if isinstance(exc, rx.NoPermissionError):
        return AuthorizationError(f"Redis refused the command while {what}: {exc}")
    if isinstance(exc, rx.WatchError):
        if lost_watch(exc):
            return BackendUnavailableError(
                f"the connection to Redis was lost inside a transaction while {what}; "
                "the transaction was rolled back: nothing of it was applied"
            )
        return ConflictError(
            f"a key this transaction read was changed by another writer before it "
            f"committed (while {what}); nothing of the transaction was applied"
        )
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError):
        return BackendUnavailableError(f"Redis cannot be reached while {what}: {exc}")
    return BackendError(f"Redis failed while {what}: {type(exc).__name__}: {exc}")


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Raise redis-py errors in the block as storekeeper errors (``from`` the original)."""
    try:
        yield
    except rx.RedisError as exc:
        raise translated(exc, what) from exc
