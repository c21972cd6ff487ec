"""Change events between processes: a listener thread reading the store's change stream.

Every write script appends ``(origin, action, key, metadata, version)`` to the stream
``{prefix}X`` in the same atomic step as the write (``XADD ... MAXLEN ~ length``), so
the stream's order is the commit order and an entry exists only for a committed change.
Each connected store runs one :class:`Listener`: a daemon thread that reads the stream
with ``XREAD BLOCK`` from a cursor (the id of the last entry it delivered) and hands
the entries written by *other* store objects to a callback. Entries are read in order
and the cursor only moves past an entry once it was delivered, so each is delivered
once, in commit order; after a lost connection the thread reconnects and goes on from
its cursor, missing nothing the stream still holds. While nobody listens for the
store's change events (*wanted* says so) the thread reads nothing (it looks again every
``IDLE_SECONDS``) and, once someone does, starts from the newest entry: events nobody
listens for are dropped, as the store's own are, and a store nobody listens to costs
the server nothing.

The stream is trimmed to about ``length`` entries. A listener that falls further
behind than that (a long network outage, a stopped process) finds entries deleted
past its cursor. It tells by counting: it knows how many entries the stream had
received when it stood at its cursor (``entries-added`` of ``XINFO STREAM``, plus one
per entry read since), so after a reconnect it compares the entries added since with
those still there. It then logs a warning and counts the gap in
:attr:`Listener.gaps`, since those changes cannot be delivered any more. (Given only
a cursor, as after ``event_cursor=``, it warns when the entry at the cursor itself
was trimmed, which means it may have missed some; unless the stream still holds every
entry it ever received, as when the cursor is the ``0-0`` of an empty stream.)
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "BLOCK_SECONDS",
    "IDLE_SECONDS",
    "READ_MARGIN",
    "Entry",
    "Listener",
    "checked_cursor",
    "position",
]

_log = logging.getLogger("storekeeper.backends.redis")

#: One stream entry as delivered: (id, fields).
Entry = tuple[str, dict[bytes, bytes]]

#: How long one blocking read waits for new entries (seconds). An empty answer after
#: it is not an error: the thread simply reads again.
BLOCK_SECONDS = 5.0
#: How much longer than the block the listener's connection waits for an answer before
#: it counts as lost (the server's empty reply comes at the end of the block, never
#: before it, so a socket timeout equal to the block would race with it).
READ_MARGIN = 10.0
#: How often a listener nobody listens to looks whether someone does.
IDLE_SECONDS = 0.05
_BATCH = 500


def position(client: Any, stream: str) -> tuple[str, int | None]:
    """The id of the newest entry of *stream* (``0-0`` when it is empty or missing) and
    how many entries it has received in all (``entries-added``), read together."""
    try:
        info = client.xinfo_stream(stream)
    except Exception:  # noqa: BLE001 - no such stream yet: nothing received
        return "0-0", 0
    return _text(info["last-generated-id"]), int(info.get("entries-added", 0))


_CURSOR = re.compile(r"[0-9]+-[0-9]+", re.ASCII)


def checked_cursor(cursor: str) -> str:
    """*cursor* if it is a stream entry id ``<milliseconds>-<sequence>`` (two decimal
    integers below ``2**64``, as :attr:`Listener.cursor` holds); otherwise
    :class:`ValueError`, so a bad cursor fails where it is given, not in the thread."""
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        raise ValueError(f"an event cursor is a stream id '<milliseconds>-<sequence>': {cursor!r}")
    if any(int(part) >= 2**64 for part in cursor.split("-")):
        raise ValueError(f"an event cursor's numbers are below 2**64: {cursor!r}")
    return cursor


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


class Listener:
    """A thread delivering the entries of *stream* after *cursor* to *deliver*.

    *connect* makes the thread's own client (a blocking read holds its connection),
    given the socket timeout its reads need (longer than a block of
    :data:`BLOCK_SECONDS`, so an idle stream never looks like a lost connection); it
    is called again after a connection is lost. :meth:`stop` ends the thread
    promptly (``CLIENT UNBLOCK`` from *control*, the store's own client).
    """

    def __init__(
        self,
        connect: Callable[[float], Any],
        control: Any,
        stream: str,
        cursor: str,
        added: int | None,
        deliver: Callable[[Entry], None],
        wanted: Callable[[], bool],
    ) -> None:
        self._connect = connect
        # Read once: the block and the socket timeout must stay consistent.
        self._block = BLOCK_SECONDS
        self._control = control
        self._stream = stream
        self.cursor = cursor
        #: How many entries the stream had received when it stood at the cursor
        #: (``None``: unknown), for telling a trimmed gap.
        self.added = added
        self._deliver = deliver
        self._wanted = wanted
        self._idle = False
        self._stopping = threading.Event()
        self._client_id: int | None = None
        self._lock = threading.Lock()
        #: How many times entries were trimmed away before this listener read them.
        self.gaps = 0
        self._thread = threading.Thread(
            target=self._run, name=f"redis-events {stream}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (it delivers nothing afterwards)."""
        self._stopping.set()
        if threading.current_thread() is self._thread:
            return
        deadline = time.monotonic() + self._block + 5
        # An unblock sent just before the thread blocks again is lost: send until it ends.
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._unblock()
            self._thread.join(0.05)

    def _unblock(self) -> None:
        with self._lock:
            client_id = self._client_id
        if client_id is not None:
            try:
                self._control.client_unblock(client_id)
            except Exception:  # noqa: BLE001 - the thread also wakes up on its own
                _log.debug("could not unblock the event listener", exc_info=True)

    def _run(self) -> None:
        client: Any = None
        delay = 0.05
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._connect(self._block + READ_MARGIN)
                    with self._lock:
                        self._client_id = client.client_id()
                    self._check_gap(client)
                self._read(client)
                delay = 0.05
            except Exception:  # noqa: BLE001 - reconnect and go on from the cursor
                if self._stopping.is_set():
                    break
                _log.warning("change stream listener lost its connection; retrying", exc_info=True)
                self._close(client)
                client = None
                self._stopping.wait(delay)
                delay = min(delay * 2, 2.0)
        self._close(client)

    def _close(self, client: Any) -> None:
        with self._lock:
            self._client_id = None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                client.close()

    def _read(self, client: Any) -> None:
        if not self._wanted():
            self._idle = True
            self._stopping.wait(IDLE_SECONDS)
            return
        if self._idle:
            self.cursor, self.added = position(client, self._stream)
            self._idle = False
        answer = client.xread(
            {self._stream: self.cursor}, count=_BATCH, block=max(1, int(self._block * 1000))
        )
        for _, entries in answer or ():
            for entry_id, fields in entries:
                if self._stopping.is_set():
                    return
                self._deliver((_text(entry_id), fields))
                self.cursor = _text(entry_id)
                if self.added is not None:
                    self.added += 1

    def _check_gap(self, client: Any) -> None:
        """Warn when entries after the cursor were trimmed before they were read."""
        try:
            info = client.xinfo_stream(self._stream)
        except Exception:  # noqa: BLE001 - no stream yet: nothing was trimmed
            return
        first = info.get("first-entry")
        if first is None or _id_tuple(_text(first[0])) <= _id_tuple(self.cursor):
            return  # the cursor's entry is still there: nothing after it was trimmed
        if self.added is not None:
            since = int(info.get("entries-added", 0)) - self.added
            if since <= int(info["length"]):
                return  # every entry added after the cursor is still there
        elif info.get("entries-added") == info["length"]:
            return  # nothing was ever trimmed (as for the '0-0' of a store that began empty)
        self.gaps += 1
        _log.warning(
            "change stream %s was trimmed past this listener's cursor %s: changes made "
            "since then %s cannot be delivered",
            self._stream,
            self.cursor,
            "were lost and" if self.added is not None else "may have been lost and",
        )
