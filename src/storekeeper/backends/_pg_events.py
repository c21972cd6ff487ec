"""Change events across processes for :class:`~storekeeper.backends.postgres.PostgresStore`.

Every change to the store's table is written to the change log ``T__changes`` and
announced with ``NOTIFY`` on the table's channel, in the transaction that makes it: a
store's write statements do it themselves, and a row-level trigger does it for writes
by any other program (plain SQL); see ``_pg_schema``. A change is announced with its
origin, id, action, key and metadata when that fits well under the 8,000-byte limit of
``NOTIFY``; otherwise (a larger change, or a store statement of many rows) with the
origin and the ids, 500 per notification, and the listener reads the rest from the log.
PostgreSQL delivers notifications when the transaction commits, in commit order.

Each connected store runs a :class:`Listener`: a thread with a connection of its own.
While someone listens to the store's events (:meth:`Listener.activate`), it ``LISTEN``s
on the channel and hands each change made by *another* store object (another origin) to
the store, which emits it on its event manager as the usual
``StoreSetEvent``/``StoreUpdateEvent``/``StoreDeleteEvent`` with ``remote=True`` (local
changes are emitted by the writing call itself, so each change reaches each store object
once). While nobody listens it does not ``LISTEN`` (:meth:`Listener.deactivate`): a
listening session is woken by every write of every process, its own included, which
costs a writer about a sixth of its time. Activation starts from the log's
:class:`Position` read when the first event listener connected (its newest id, and the
ids then committed just before it, since an earlier id may commit later), so every
change committed after that reaches it, even before the thread listens. After a
(re)connection the listener first reads the log from
its cursor, the last change id it delivered, so a listener that lost its connection
misses nothing that the log still holds; ids it has delivered are remembered so nothing
is delivered twice.

The log is bounded: the listener thread (listening or not) deletes all but the newest
``change_log_size`` changes every ``maintenance_interval`` seconds (and deletes chunk
sets that have been in the trash longer than ``reclaim_after``); a listener disconnected
for longer than it takes to make that many changes, or that far behind (a slow event
handler), misses the older ones, logs a warning saying so and counts it
(:attr:`Listener.gaps`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from storekeeper.backends._pg_schema import Schema
from storekeeper.errors import NotConnectedError
from storekeeper.store.backend import decode_metadata
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)

__all__ = ["Change", "Listener", "Position", "maintain", "newest", "position", "read_position"]

_log = logging.getLogger(__name__)
_ACTIONS: dict[str, type[StoreModificationEvent]] = {
    "set": StoreSetEvent,
    "update": StoreUpdateEvent,
    "delete": StoreDeleteEvent,
}
#: Changes before the cursor read again after a reconnection: ids are taken when a
#: change is written, so one written earlier may commit after a later one.
_SLACK = 1000


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change from the log."""

    id: int
    action: str
    key: str
    metadata: str | None
    origin: str | None
    #: The version the change gave the key (``None`` for a delete, and for changes
    #: logged before versions were).
    version: int | None = None

    @property
    def event_class(self) -> type[StoreModificationEvent]:
        """The event class of the change's action (a set for an unknown one)."""
        return _ACTIONS.get(self.action, StoreSetEvent)

    def event(self, source: object) -> StoreModificationEvent:
        """The remote event announcing this change, as *source* emits it."""
        return self.event_class(
            source,
            key=self.key,
            metadata=None if self.metadata is None else decode_metadata(self.metadata),
            remote=True,
            origin=self.origin,
            version=None if self.version is None else str(self.version),
            change_id=self.id,
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Where the change log stood at one moment, for a listener to start from: the id
    of its newest change and the ids then committed among the ``_SLACK`` before it.
    Ids are taken when a change is written, so a change written earlier than the newest
    may commit later: it is delivered, being absent from *committed*.
    ``committed=None``: every change after *newest* is delivered."""

    newest: int
    committed: frozenset[int] | None = None


def position(conn: psycopg.Connection[Any], schema: Schema) -> Position:
    """The change log's position now (one statement: one snapshot)."""
    rows = conn.execute(
        schema.compose("SELECT id FROM {changes} WHERE id > (SELECT max(id) FROM {changes}) - %s"),
        [_SLACK],
    ).fetchall()
    committed = frozenset(int(row[0]) for row in rows)
    return Position(max(committed, default=0), committed)


def read_position(
    pool: Callable[[], psycopg_pool.ConnectionPool[Any]],
    schema: Schema,
    timeout: float,
    what: object,
) -> Position | None:
    """The change log's position, read on a connection of ``pool()`` (waiting at most
    *timeout* seconds for one), or ``None`` with a logged warning naming *what* if the
    server cannot say now or the store is no longer connected (see
    :meth:`Listener.activate`)."""
    try:
        with pool().connection(timeout=timeout) as conn:
            return position(conn, schema)
    except (psycopg.Error, NotConnectedError) as exc:
        _log.warning("%r could not read its change log position: %s", what, exc)
        return None


def maintain(
    conn: psycopg.Connection[Any], schema: Schema, keep_changes: int, reclaim_after: float
) -> None:
    """Bound the change log to its newest *keep_changes* changes and delete chunk sets
    trashed more than *reclaim_after* seconds ago."""
    conn.execute(
        schema.compose("DELETE FROM {changes} WHERE id <= (SELECT max(id) FROM {changes}) - %s"),
        [keep_changes],
    )
    with conn.transaction():
        rows = conn.execute(
            schema.compose(
                "DELETE FROM {trash} WHERE since < now() - make_interval(secs => %s) RETURNING blob"
            ),
            [reclaim_after],
        ).fetchall()
        if rows:
            conn.execute(
                schema.compose("DELETE FROM {chunks} WHERE blob = ANY(%s)"), [[b for (b,) in rows]]
            )


def newest(conn: psycopg.Connection[Any], schema: Schema) -> int:
    """The id of the newest change in the log (0 if it is empty)."""
    found = conn.execute(schema.compose("SELECT max(id) FROM {changes}"), []).fetchone()
    return 0 if found is None or found[0] is None else int(found[0])


def _last_id(payload: str, start: int) -> int:
    """The highest change id of a payload whose origin ends at *start*: the ``i`` that
    follows (one change) or the last of the ``ids`` list."""
    if payload.startswith('"i" : ', start):
        begin = start + len('"i" : ')
        end = payload.find(",", begin)
        return int(payload[begin:end])
    listed = payload[payload.rindex("[") + 1 : payload.rindex("]")]
    return int(listed.rsplit(",", 1)[-1])


class Listener:
    """The thread delivering the changes of other origins to *deliver*."""

    def __init__(
        self,
        conninfo: str,
        schema: Schema,
        origin: str,
        deliver: Callable[[Change], None],
        *,
        cursor: int,
        track: Callable[[psycopg.Connection[Any]], None],
        maintenance: Callable[[psycopg.Connection[Any]], None],
        interval: float,
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.origin = origin
        self.deliver = deliver
        self.cursor = cursor
        self.floor = cursor
        self.track = track
        self.maintenance = maintenance
        self.interval = interval
        self.connected = threading.Event()
        #: How many times changes left the log before this listener read them.
        self.gaps = 0
        #: Whether the thread is asked to listen (someone listens to the store's events).
        self.active = False
        # Set by activate(): the next LISTEN starts afresh, from _start (None: after the
        # cursor, kept current while inactive); unset, it goes on from the cursor (a
        # reconnection).
        self._fresh = False
        self._start: Position | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        # The ids delivered lately (as many as a catch-up may read again).
        self._seen: set[int] = set()
        self._order: deque[int] = deque()
        # How PostgreSQL's json_build_object starts a payload of this origin.
        self._own = '{"o" : ' + json.dumps(origin) + ", "
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"storekeeper-listen-{schema.table}", daemon=True
        )

    def start(self) -> None:
        """Start the thread (returns at once). It tidies the log and listens only once
        :meth:`activate` asks it to."""
        self._thread.start()

    def activate(self, start: Position | None) -> None:
        """Listen, delivering every change committed after the log was at *start*
        (``None``, when it could not be read: every change after the newest one the
        thread knew of, which it reads every ``interval`` seconds while inactive, so a
        few changes from shortly before may come too). Returns at once; :attr:`connected`
        is set once the thread listens. Nothing happens if it is active already (it then
        goes on from where it is)."""
        if not self.active:
            self._start, self._fresh = start, True
            self.active = True
            self._wake.set()

    def deactivate(self) -> None:
        """Stop listening (nobody listens to the store's events any more)."""
        if self.active:
            self.active = False
            self._wake.set()

    def listening(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until the thread listens if it is active; whether
        every change committed from now on will be delivered while it stays active
        (true at once when inactive: a later activation starts from then). Also true at
        once in the thread itself (a handler asking): it is delivering."""
        if not self.active or threading.current_thread() is self._thread:
            return True
        return self.connected.wait(timeout)

    def stop(self, wake: Callable[[], None] | None = None) -> None:
        """Stop the thread and close its connection; *wake*, when given, sends the
        thread a notification so that it stops without waiting for its timeout."""
        self._stop.set()
        self._wake.set()
        if wake is not None and self.connected.is_set() and self._thread.is_alive():
            try:
                wake()
            except Exception:  # noqa: BLE001 - the thread then stops after its timeout
                _log.debug("could not wake the change listener of %s", self.schema.table)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._session()
                delay = 0.1
            except psycopg.Error as exc:
                self.connected.clear()
                _log.warning("change listener of %s lost its connection: %s", self.schema, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # noqa: BLE001 - a listener's bug must not end delivery for good
                _log.exception("change listener of %s failed", self.schema.table)
                self._stop.wait(delay)

    def _session(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            self._conn = conn
            self.track(conn)
            listening = False
            last_maintenance = time.monotonic()  # connect() has just tidied up
            while not self._stop.is_set():
                if self.active != listening:
                    listening = self._switch(conn, not listening)
                if listening:
                    for payload in self._receive(conn):
                        self._notified(conn, payload)
                else:
                    self._wake.wait(max(0.0, last_maintenance + self.interval - time.monotonic()))
                    self._wake.clear()
                now = time.monotonic()
                if now - last_maintenance >= self.interval:
                    last_maintenance = now
                    self.maintenance(conn)
                    if not listening:  # where a listener that cannot read it starts
                        self.cursor = max(self.cursor, newest(conn, self.schema))

    def _switch(self, conn: psycopg.Connection[Any], on: bool) -> bool:
        """Begin (*on*) or stop listening on *conn*; whether it now listens."""
        channel = sql.Identifier(self.schema.channel)
        if not on:
            self.connected.clear()
            conn.execute(sql.SQL("UNLISTEN {}").format(channel))
            return False
        conn.execute(sql.SQL("LISTEN {}").format(channel))
        if self._fresh:  # nothing from before the activation is wanted
            self._fresh = False
            self._begin(self._start or Position(self.cursor))
        # From here every commit is announced to this session: the catch-up reads
        # the rest, so waiting for it is not needed (a handler may be asking).
        self.connected.set()
        self._catch_up(conn)
        return True

    def _begin(self, start: Position) -> None:
        """Start delivering after *start*."""
        self.cursor = start.newest
        if start.committed is None:
            self.floor = start.newest
            self._seen, self._order = set(), deque()
        else:
            self.floor = start.newest - _SLACK
            self._seen, self._order = set(start.committed), deque(sorted(start.committed))

    def _catch_up(self, conn: psycopg.Connection[Any]) -> None:
        low = max(self.floor, self.cursor - _SLACK)
        rows = conn.execute(
            self.schema.compose(
                "SELECT id, action, key, metadata, origin, version FROM {changes} "
                "WHERE id > %s ORDER BY id"
            ),
            [low],
        ).fetchall()
        if rows and rows[0][0] > low + 1 and low > self.floor:
            self.gaps += 1
            _log.warning(
                "change listener of %s: changes %d to %d left the log before they were read",
                self.schema.table,
                low + 1,
                rows[0][0] - 1,
            )
        for row in rows:
            self._handle(Change(*row))

    def _receive(self, conn: psycopg.Connection[Any]) -> list[str]:
        """Wait up to half a second for a packet of notifications; those of them that
        need the log read.

        The others (this store's own changes, wake-up calls) are dealt with as they
        come. The generator holds the connection's lock, and reading the log needs the
        connection, so it is run to its end: it stops after the first packet (closing
        it earlier would drop the rest of that packet).
        """
        later: list[str] = []
        for notify in conn.notifies(timeout=0.5, stop_after=1):
            if not self._settled(notify.payload):
                later.append(notify.payload)
        return later

    def _settled(self, payload: str) -> bool:
        """Deal with a notification that needs no statement; whether it was one."""
        if not payload:
            return True  # a disconnecting store's wake-up call (see stop)
        if payload.startswith(self._own):
            # This store's own change: its writer emitted it. Only the cursor moves,
            # read from the id that follows the origin without parsing the rest.
            self.cursor = max(self.cursor, _last_id(payload, len(self._own)))
            return True
        return False

    def _notified(self, conn: psycopg.Connection[Any], payload: str) -> None:
        if self._settled(payload):
            return
        fields = json.loads(payload)
        if "ids" not in fields:
            self._handle(
                Change(
                    fields["i"], fields["a"], fields["k"], fields["m"], fields["o"], fields.get("v")
                )
            )
            return
        ids = fields["ids"]
        rows = conn.execute(
            self.schema.compose(
                "SELECT id, action, key, metadata, origin, version FROM {changes} "
                "WHERE id = ANY(%s) ORDER BY id"
            ),
            [ids],
        ).fetchall()
        if len(rows) < len(ids):
            self.gaps += 1
            _log.warning("changes of %s left the log unread", self.schema.table)
        for row in rows:
            self._handle(Change(*row))

    def _handle(self, change: Change) -> None:
        if change.id <= self.floor or change.id in self._seen:
            return
        self._seen.add(change.id)
        self._order.append(change.id)
        if len(self._order) > _SLACK:
            self._seen.discard(self._order.popleft())
        self.cursor = max(self.cursor, change.id)
        if change.origin != self.origin:
            self.deliver(change)
