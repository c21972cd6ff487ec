"""Reading a data source that may be non-blocking: :func:`read_chunk`.

A pipe, socket or terminal put in non-blocking mode answers a read with ``None`` (or
raises ``BlockingIOError``) while its writer has sent nothing new: "no data yet", not
its end, which is ``b""``. Every loop that reads a data source to its end reads through
:func:`read_chunk`, so such a source is read whole, never stored cut short.
"""

from __future__ import annotations

import select
from typing import Protocol, TypeVar

from storekeeper.errors import InvalidValueError

__all__ = ["read_chunk"]

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class _Reader(Protocol[_T_co]):
    def read(self, size: int, /) -> _T_co | None: ...


def read_chunk(source: _Reader[_T], size: int) -> _T:
    """What ``source.read(size)`` returns, waiting while *source* has no data yet.

    A read answering ``None`` or raising ``BlockingIOError`` means the source is
    non-blocking and nothing has arrived yet: this waits until its descriptor
    (``source.fileno()``) is readable, with ``poll`` (which, unlike ``select``, takes any
    descriptor number), and reads again, so the result is data or the end (``b""``),
    as a blocking read's is. A source with no descriptor to wait on raises
    :class:`InvalidValueError`: its data cannot be read to its end.
    """
    while True:
        try:
            chunk = source.read(size)
        except BlockingIOError:
            chunk = None
        if chunk is not None:
            return chunk
        _wait_readable(source)


def _wait_readable(source: object) -> None:
    """Wait until the descriptor of the non-blocking *source* has data, or its end."""
    try:
        fd = int(source.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, TypeError):  # no descriptor, closed
        fd = -1
    if fd < 0 or not hasattr(select, "poll"):
        raise InvalidValueError(
            f"the {type(source).__name__} data stream has no data yet (non-blocking) and "
            "no descriptor to wait on: give a blocking stream"
        )
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    # Any event ends the wait: data, the writer's end (POLLHUP) or an error, which the
    # next read reports. A descriptor that is not open would never become readable.
    if any(events & select.POLLNVAL for _, events in poller.poll()):
        raise InvalidValueError(f"the data stream's descriptor {fd} is not open")
