"""Other clients' changes, heard from the server's ``/events`` stream.

A :class:`~storekeeper.backends.http.DynamicURLStore` made with ``remote_events=True``
runs one daemon thread that reads the stream and emits every change another client
made as the usual store event (``StoreSetEvent``, ``StoreUpdateEvent``,
``StoreDeleteEvent``) with ``remote=True``. Its own changes (the stream names their
origin) are not repeated: it emitted them when it made them. A dropped stream is opened
again from the last event's id, so nothing is missed while the server keeps it; when it
cannot (``event: reset``), ``gaps`` counts it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from storekeeper.backends._http_transport import Transport
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)

__all__ = ["EventFollower"]

_log = logging.getLogger(__name__)
_KINDS: dict[str, type[StoreModificationEvent]] = {
    "set": StoreSetEvent,
    "update": StoreUpdateEvent,
    "delete": StoreDeleteEvent,
}
#: Seconds between attempts to open the stream again after it failed.
RETRY_SECONDS = 1.0


class EventFollower:
    """The thread reading ``events_url`` for *source*, emitting through *emit*."""

    def __init__(
        self,
        source: object,
        transport: Transport,
        events_url: str,
        origin: str,
        emit: Callable[[Any], object],
    ) -> None:
        self.source = source
        self.transport = transport
        self.events_url = events_url
        self.origin = origin
        self.emit = emit
        self.cursor: str | None = None
        self.gaps = 0
        self._stop = threading.Event()
        self._response: Any = None
        self._opened = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="storekeeper-http-events", daemon=True
        )

    def start(self, wait: float = 10.0) -> None:
        """Start following; returns once the stream is open (or after *wait* seconds)."""
        self._thread.start()
        self._opened.wait(wait)

    def stop(self) -> None:
        """Stop following: close the stream and let the thread end."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                _log.debug("closing the event stream failed", exc_info=True)
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # noqa: BLE001 - logged; the stream is opened again
                if not self._stop.is_set():
                    _log.debug("the event stream broke off; reopening", exc_info=True)
            self._stop.wait(RETRY_SECONDS)

    def _follow(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.cursor is not None:
            headers["Last-Event-ID"] = self.cursor
        response = self.transport.request("GET", self.events_url, headers=headers, stream=True)
        self._response = response
        try:
            if response.status != 200:
                raise self.transport.fail(response, None)
            fields: dict[str, str] = {}
            for raw in _lines(response):
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("retry:"):
                    self._opened.set()
                elif not line:
                    if fields:
                        self._deliver(fields)
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                if self._stop.is_set():
                    return
        finally:
            self._response = None
            response.release_conn()

    def _deliver(self, fields: dict[str, str]) -> None:
        if fields.get("event") == "reset":
            self.gaps += 1
            _log.warning("missed changes of %s: the server could not resume", self.events_url)
            return
        if "id" in fields:
            self.cursor = fields["id"]
        try:
            change = json.loads(fields.get("data", ""))
        except ValueError:
            return
        kind = _KINDS.get(change.get("type"))
        if kind is None or change.get("origin") == self.origin:
            return
        event = kind(self.source, key=change.get("key"), metadata=change.get("metadata"))
        event.remote = True  # type: ignore[attr-defined]
        self.emit(event)


def _lines(response: Any) -> Any:
    """The lines of a streamed response, as they arrive."""
    pending = b""
    for chunk in response.stream(8192, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            yield line + b"\n"
