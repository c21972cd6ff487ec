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
- a connection the server refuses for good (:func:`lasting_refusal`): a database that
  does not exist (3D000) is a :class:`BackendUnavailableError`, an unknown role or bad
  credentials (28000, 28P01) an :class:`AuthenticationError`. libpq gives no SQLSTATE
  for a failed connection, only the server's message: these are recognised by its
  English text (a server whose ``lc_messages`` is another language gets the generic
  error, after the pool's retries);
- a key too long for the primary-key index (54000 "index row size ... exceeds" or
  "index row requires", see :data:`KEY_LIMIT`): :class:`InvalidKeyError`, nothing
  written;
- anything else: :class:`BackendError`.

Messages show keys through :func:`shown`, cut short: a key may be long.
"""

from __future__ import annotations

import re
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
    InvalidKeyError,
    LockTimeoutError,
    StorekeeperError,
    TransactionError,
)

__all__ = ["KEY_LIMIT", "convert", "lasting_refusal", "shown", "translate"]

#: The UTF-8 size up to which every key fits the primary-key index (a btree entry holds
#: at most 2,704 bytes, after compression): longer keys are stored only when PostgreSQL
#: compresses them enough, and refused with InvalidKeyError otherwise.
KEY_LIMIT = 2600

# A key too long for the indexes holding it (the primary key, and the rows without
# ``meta``). Beyond 8,191 bytes PostgreSQL names no index; the key is the only value
# that long in any btree (the string indexes hold a bounded head, see ``_pg_query``;
# the GIN index hashes long strings).
_KEY_INDEX = re.compile(
    r'index row size \d+ exceeds .* for index ".*(_pkey|__nul)"|index row requires \d+ bytes'
)


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


#: The server's messages refusing a connection in a way retrying cannot cure.
_REFUSALS: tuple[tuple[re.Pattern[str], type[StorekeeperError]], ...] = (
    (re.compile(r'FATAL:\s+database ".*" does not exist'), BackendUnavailableError),
    (
        re.compile(
            r'FATAL:\s+role ".*" does not exist|password authentication failed'
            r"|no pg_hba\.conf entry|is not permitted to log in|no password supplied"
        ),
        AuthenticationError,
    ),
)


def lasting_refusal(exc: BaseException) -> type[StorekeeperError] | None:
    """The error class of a failed connection attempt *exc* that retrying cannot cure
    (no such database, unknown role, bad credentials); ``None`` for any other."""
    if not isinstance(exc, psycopg.OperationalError) or getattr(exc, "sqlstate", None):
        return None
    text = str(exc)
    for pattern, cls in _REFUSALS:
        if pattern.search(text):
            return cls
    return None


def shown(key: str, size: int = 60) -> str:
    """*key* for a message: its ``repr``, cut after *size* characters."""
    if len(key) <= size:
        return repr(key)
    return f"{key[:size]!r}... ({len(key)} characters)"


def convert(exc: BaseException, doing: str) -> StorekeeperError:
    """The storekeeper error for *exc* (raised by psycopg while *doing* something)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return BackendUnavailableError(
            f"no PostgreSQL connection became available {doing}: {_first_line(exc)}"
        )
    message = f"PostgreSQL failed {doing}: {_first_line(exc)}"
    state = getattr(exc, "sqlstate", None) or ""
    if state == "54000" and _KEY_INDEX.search(str(exc)):
        return InvalidKeyError(
            f"PostgreSQL refused {doing}: a key too long for its key index (keys of up to "
            f"{KEY_LIMIT:,} UTF-8 bytes always fit; longer ones only if they compress)"
        )
    cls: type[StorekeeperError] = BackendError
    for prefix, candidate in _BY_STATE:
        if state.startswith(prefix):
            cls = candidate
            break
    else:
        refusal = lasting_refusal(exc)
        if refusal is not None:
            cls = refusal
        elif _is_disconnect(exc):
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
