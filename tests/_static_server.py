"""A plain ``http.server`` in a thread serving a directory, for the static store's tests.

:class:`StaticServer` serves the files under *root* (as any static host would: no Range
support, percent-decoded paths), optionally behind HTTP Basic authentication, and counts
the requests it answered so tests can see what a store fetched.
"""

from __future__ import annotations

import base64
import functools
import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.export import export_static


class _Handler(http.server.SimpleHTTPRequestHandler):
    credentials: str | None = None
    requests: list[str]
    #: While set, requests for index.json wait until it is cleared (a stuck host).
    hold_index: threading.Event
    index_waiting: threading.Event
    #: Called with each request's path before the request is answered (a test's hook).
    before: list[Callable[[str], None]]
    #: Paths answered 403 Forbidden.
    forbidden: set[str]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the tests read the request list instead."""

    def _allowed(self) -> bool:
        self.requests.append(f"{self.command} {self.path}")
        for hook in self.before:
            hook(self.path)
        if self.path in self.forbidden:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self) -> None:
        if self.path.endswith("index.json") and self.hold_index.is_set():
            self.index_waiting.set()
            while self.hold_index.is_set():
                time.sleep(0.01)
        if self._allowed():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._allowed():
            super().do_HEAD()


class StaticServer:
    """Serves *root* on an ephemeral loopback port until closed (a context manager)."""

    def __init__(self, root: Path, credentials: str | None = None) -> None:
        self.root = root
        self.requests: list[str] = []
        self.hold_index = threading.Event()
        self.index_waiting = threading.Event()
        self.before: list[Callable[[str], None]] = []
        self.forbidden: set[str] = set()
        handler = type(
            "Handler",
            (_Handler,),
            {
                "credentials": credentials,
                "requests": self.requests,
                "hold_index": self.hold_index,
                "index_waiting": self.index_waiting,
                "before": self.before,
                "forbidden": self.forbidden,
            },
        )
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The URL of *root*, ending in ``/``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def close(self) -> None:
        self.hold_index.clear()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> StaticServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def export_values(directory: Path, values: Any) -> None:
    """Export *values* (key -> (data, metadata)) to *directory* through a memory store."""
    with DictMemoryStore() as source:
        for key, value in values.items():
            source.set(key, value)
        export_static(source, directory, durable=False)
