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
- a connection the server refuses for good: libpq reports no SQLSTATE for a failed
  connection, only the server's message, in the server's language. A database that
  does not exist (or takes no connections) is told by behaviour
  (:func:`database_refused`), in any language: :class:`BackendUnavailableError` at once.
  Bad credentials or an unknown role are recognised by the server's English message
  only (:func:`lasting_refusal`): :class:`AuthenticationError` at once; in another
  language, the pool's retries run to the timeout and the server's message is shown;
- a key too long for the key indexes (54000 with the index named, or refused by the
  function building any index entry, see :func:`key_too_long` and :data:`KEY_LIMIT`):
  :class:`InvalidKeyError`, nothing written;
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
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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

__all__ = [
    "KEY_LIMIT",
    "convert",
    "database_refused",
    "key_too_long",
    "lasting_refusal",
    "shown",
    "translate",
]

#: The UTF-8 size up to which every key fits the primary-key index (a btree entry holds
#: at most 2,704 bytes, after compression): longer keys are stored only when PostgreSQL
#: compresses them enough, and refused with InvalidKeyError otherwise.
KEY_LIMIT = 2600

# The indexes holding keys (the primary key, and the rows without ``meta``), by the end
# of their names, which PostgreSQL reports in the error's constraint field.
_KEY_INDEXES = ("_pkey", "__nul")
# Where PostgreSQL refuses any index entry over 8,191 bytes, naming no index: the key is
# the only value that long in any btree (the string indexes hold a bounded head, see
# ``_pg_query``; the GIN index hashes long strings).
_ENTRY_TOO_LARGE = "index_form_tuple"


def key_too_long(exc: BaseException) -> bool:
    """Whether *exc* is PostgreSQL refusing a key too long for the key indexes: its
    SQLSTATE (54000) and error fields (the index named, or the function refusing an
    entry of any index), never its message, which is in the server's language."""
    if getattr(exc, "sqlstate", None) != "54000":
        return False
    diag = exc.diag  # type: ignore[attr-defined]
    index = diag.constraint_name or ""
    if index.endswith(_KEY_INDEXES):
        return True
    function: str = diag.source_function or ""
    return function.startswith(_ENTRY_TOO_LARGE)


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


def database_refused(conninfo: str, timeout: int) -> bool:
    """Whether the server of *conninfo*, which refused a connection, runs and accepts
    connections but not to that database (it does not exist, or takes none): libpq's
    ping (which tells a server starting or stopping by the SQLSTATE libpq keeps to
    itself) says it accepts connections, and one to ``template1`` with the same
    credentials succeeds. Language-independent, where the refusal's message is in the
    server's language and libpq reports no SQLSTATE for it."""
    if psycopg.pq.PGconn.ping(conninfo.encode()) != psycopg.pq.Ping.OK:
        return False
    params = conninfo_to_dict(conninfo)
    if params.get("dbname") == "template1":
        return False
    params["dbname"] = "template1"
    try:
        psycopg.connect(make_conninfo("", **params), connect_timeout=timeout).close()
    except psycopg.Error:
        return False
    return True


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
    if key_too_long(exc):
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
