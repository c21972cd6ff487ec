"""psycopg's errors in storekeeper's tree, for :mod:`storekeeper.backends.postgres`.

Every call into psycopg runs inside :func:`translate`, which re-raises what psycopg (or
its pool) raised as the matching :class:`~storekeeper.errors.StorekeeperError` with the
original as ``__cause__``:

- the server cannot be reached, went away or shut the session down (class 08, 57P0x,
  a pool that had no connection to give in time): :class:`BackendUnavailableError`;
- a lock not granted within ``lock_timeout`` (55P03): :class:`LockTimeoutError`;
- a deadlock or serialization failure (class 40), a statement in an aborted
  transaction (25P02): :class:`TransactionError` (the transaction is rolled back);
- bad credentials (class 28): :class:`AuthenticationError`; missing privileges
  (42501): :class:`AuthorizationError`;
- anything else: :class:`BackendError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg import errors as pg

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    LockTimeoutError,
    StorekeeperError,
    TransactionError,
)

__all__ = ["convert", "translate"]


#: SQLSTATE prefixes and the errors they become, the first match winning.
_BY_STATE: tuple[tuple[str, type[StorekeeperError]], ...] = (
    ("55P03", LockTimeoutError),
    ("40", TransactionError),
    ("25P02", TransactionError),
    ("28", AuthenticationError),
    ("42501", AuthorizationError),
    ("08", BackendUnavailableError),
    ("57P", BackendUnavailableError),
)


def convert(exc: BaseException, doing: str) -> StorekeeperError:
    """The storekeeper error for *exc* (raised by psycopg while *doing* something)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return BackendUnavailableError(
            f"no PostgreSQL connection became available {doing}: {_first_line(exc)}"
        )
    message = f"PostgreSQL failed {doing}: {_first_line(exc)}"
    state = getattr(exc, "sqlstate", None) or ""
    cls: type[StorekeeperError] = BackendError
    for prefix, candidate in _BY_STATE:
        if state.startswith(prefix):
            cls = candidate
            break
    else:
        if _is_disconnect(exc):
            cls = BackendUnavailableError
    if cls is TransactionError:
        message += " (the transaction was rolled back)"
    return cls(message)


def _is_disconnect(exc: BaseException) -> bool:
    """Whether *exc* says the connection is gone (psycopg gives no SQLSTATE then)."""
    if isinstance(exc, pg.ConnectionException | pg.AdminShutdown):
        return True
    if isinstance(exc, psycopg.OperationalError) and not getattr(exc, "sqlstate", None):
        return True
    return isinstance(exc, psycopg.InterfaceError) and "closed" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def translate(doing: str) -> Iterator[None]:
    """Re-raise psycopg's errors inside the block as storekeeper's (see the module)."""
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise convert(exc, doing) from exc
