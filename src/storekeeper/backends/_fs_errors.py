"""OS errors of :mod:`storekeeper.backends.filesystem` as storekeeper errors.

The file system is the backend's engine: an ``OSError`` of the store's own file work (a
full disk, a file size limit, a quota, a read-only mount, an I/O error) is translated at
the store's edge into :class:`~storekeeper.errors.BackendError`, which wraps it, as
SqliteStore does for its engine. Every write leaves the stored data as it was when it
fails this way (new files are written aside and renamed into place last).

An error raised by the caller's data source is not the backend's: it propagates
unchanged, even when it is an ``OSError`` raised while a data file is being written
(:func:`from_source` marks it on its way through).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from types import TracebackType

from storekeeper.errors import BackendError, StorekeeperError

__all__ = ["from_source", "mark_from_source", "translated"]

# The attribute that marks an error of the caller's data source.
_FROM_SOURCE = "_storekeeper_from_source"

#: Errors that say the disk (or the process's share of it) has no room left.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class translated:  # noqa: N801 - used like a function: ``with translated("..."):``
    """``with translated(doing, key):`` raises :class:`BackendError` for an ``OSError``
    of the block that is not already a storekeeper error (those, such as
    :class:`~storekeeper.errors.LockTimeoutError`, pass unchanged). *doing* and *key*
    say what failed ("writing", key ``"k"``: "writing key 'k' failed")."""

    __slots__ = ("_doing", "_key")

    def __init__(self, doing: str, key: str | None = None) -> None:
        self._doing = doing
        self._key = key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, StorekeeperError)
            and not getattr(exc, _FROM_SOURCE, False)
        ):
            doing = self._doing if self._key is None else f"{self._doing} key {self._key!r}"
            raise backend_error(exc, doing) from exc


def backend_error(exc: OSError, doing: str) -> BackendError:
    """The :class:`BackendError` for *exc*, raised while *doing* something."""
    if exc.errno in _NO_ROOM:
        return BackendError(f"{doing} failed: no room on the disk (or a size limit): {exc}")
    return BackendError(f"{doing} failed: {exc}")


def from_source(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Pass the chunks of a caller's data source through, marking an ``OSError`` the
    source raises so that :class:`translated` lets it propagate unchanged."""
    try:
        yield from chunks
    except OSError as exc:
        mark_from_source(exc)
        raise


def mark_from_source(exc: OSError) -> None:
    """Mark *exc* as raised by the caller's data source (see :func:`from_source`)."""
    setattr(exc, _FROM_SOURCE, True)
