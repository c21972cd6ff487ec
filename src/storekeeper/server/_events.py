"""``GET /events``: the store's changes as server-sent events, with a resumable cursor.

Each change is one SSE message (the default ``message`` event)::

    id: 3f9a01c2.17
    data: {"type": "set", "key": "a/b", "metadata": {"x": 1}}

``type`` is ``set``, ``update`` or ``delete``; ``metadata`` is the key's metadata after
the change (before it, for a delete), or ``null`` where the user may not read it;
``origin`` (present when the writing request sent ``X-Storekeeper-Origin``) names the
client object that made the change. A
client that reconnects with ``Last-Event-ID`` (browsers' ``EventSource`` do it by
themselves; ``?last_event_id=`` works too) receives the changes it missed, from a log
of the last :data:`LOG_SIZE`. When they cannot be told (the cursor is older than the
log, or from another server run) it receives ``event: reset`` instead, meaning "read
the keys again". A comment line (``: ping``) is sent every :data:`PING_SECONDS`.

Each user's changes come from their own session store, which passes on only the keys
they may see, so the stream never names a key hidden from them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from storekeeper.events import BaseEvent
from storekeeper.server._context import ORIGIN, ServerContext
from storekeeper.store.abstract import AbstractReadOnlyStore
from storekeeper.store.events import StoreDeleteEvent, StoreModificationEvent, StoreUpdateEvent

__all__ = ["EventHub", "EventLog", "events_endpoint"]

LOG_SIZE = 4096
PING_SECONDS = 15.0
#: Messages one slow client may have waiting before it is told to reset.
QUEUE_SIZE = 1024
_RESET = "event: reset\ndata: {}\n\n"
_CLOSED = ""


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def offer(self, message: str) -> None:
        """Queue *message* (on the loop); a full queue ends the stream with a reset."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True


class EventLog:
    """The recent changes of one store object, numbered, and their live subscribers."""

    def __init__(self, store: AbstractReadOnlyStore) -> None:
        self.store = store
        self.token = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=LOG_SIZE)
        self._count = 0
        self._subscribers: set[_Subscriber] = set()
        store.event_manager.connect(StoreModificationEvent, self._on_change)

    def close(self) -> None:
        """Stop listening; end every open stream."""
        with contextlib.suppress(KeyError):
            self.store.event_manager.disconnect(StoreModificationEvent, self._on_change)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.loop.call_soon_threadsafe(subscriber.offer, _CLOSED)

    def _on_change(self, event: BaseEvent) -> None:
        if getattr(event, "source", None) is not self.store:
            return
        kind = (
            "delete"
            if isinstance(event, StoreDeleteEvent)
            else "update"
            if isinstance(event, StoreUpdateEvent)
            else "set"
        )
        payload: dict[str, Any] = {
            "type": kind,
            "key": getattr(event, "key", None),
            "metadata": getattr(event, "metadata", None),
        }
        origin = ORIGIN.get()
        if origin is not None:
            payload["origin"] = origin
        data = json.dumps(payload, separators=(",", ":"))
        with self._lock:
            self._count += 1
            message = f"id: {self.token}.{self._count}\ndata: {data}\n\n"
            self._recent.append((self._count, message))
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber.loop.call_soon_threadsafe(subscriber.offer, message)
            except RuntimeError:  # its loop has closed
                self.unsubscribe(subscriber)

    def subscribe(
        self, loop: asyncio.AbstractEventLoop, cursor: str | None
    ) -> tuple[_Subscriber, list[str], bool]:
        """A new subscriber, the messages after *cursor* it missed, and whether it must
        reset instead (its cursor cannot be resumed)."""
        subscriber = _Subscriber(loop)
        with self._lock:
            self._subscribers.add(subscriber)
            if cursor is None:
                return subscriber, [], False
            token, _, number = cursor.partition(".")
            if token != self.token or not number.isdigit() or int(number) > self._count:
                return subscriber, [], True
            after = int(number)
            oldest = self._recent[0][0] if self._recent else self._count + 1
            if after + 1 < oldest:
                return subscriber, [], True
            return subscriber, [message for n, message in self._recent if n > after], False

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        """Stop delivering to *subscriber*."""
        with self._lock:
            self._subscribers.discard(subscriber)


class EventHub:
    """One :class:`EventLog` per store object that serves requests (the served store, or
    each user's session store)."""

    def __init__(self) -> None:
        self._logs: dict[int, EventLog] = {}
        self._lock = threading.Lock()

    def log_for(self, store: AbstractReadOnlyStore) -> EventLog:
        """The log of *store*, started on first use."""
        with self._lock:
            log = self._logs.get(id(store))
            if log is None or log.store is not store:
                log = self._logs[id(store)] = EventLog(store)
            return log

    def close(self) -> None:
        """Stop every log and end every stream."""
        with self._lock:
            logs = list(self._logs.values())
            self._logs.clear()
        for log in logs:
            log.close()


def events_endpoint(hub: EventHub) -> Callable[[ServerContext, Request], Awaitable[Response]]:
    """The ``/events`` handler over *hub*."""

    async def events(context: ServerContext, request: Request) -> Response:
        store = await context.store_for(request)
        log = hub.log_for(store)
        cursor = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        subscriber, missed, reset = log.subscribe(asyncio.get_running_loop(), cursor)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _stream(log, subscriber, missed, reset), media_type="text/event-stream", headers=headers
        )

    return events


async def _stream(
    log: EventLog, subscriber: _Subscriber, missed: list[str], reset: bool
) -> AsyncIterator[str]:
    try:
        yield "retry: 2000\n\n"
        if reset:
            yield _RESET
        for message in missed:
            yield message
        while True:
            if subscriber.overflowed and subscriber.queue.empty():
                yield _RESET  # it missed messages: it must read the keys again
                return
            try:
                message = await asyncio.wait_for(subscriber.queue.get(), PING_SECONDS)
            except TimeoutError:
                yield ": ping\n\n"
                continue
            if message == _CLOSED:
                return
            yield message
    finally:
        log.unsubscribe(subscriber)
