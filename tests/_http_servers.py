"""Stores served by storekeeper.server on loopback ports, shared by the HTTP tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storekeeper.backends.sqlite import SqliteStore
from storekeeper.server import ServerThread, create_app
from storekeeper.store import AbstractStore


class Served:
    """A backing store (opened here) and the URL of the server serving it."""

    def __init__(self, backing: AbstractStore, url: str) -> None:
        self.backing = backing
        self.url = url
        self.base = url + "/store"
        self.port = int(url.rsplit(":", 1)[1])

    def clear(self) -> None:
        """Delete every key of the backing store."""
        for key in self.backing.query_keys():
            self.backing.delete(key)


def free_port() -> int:
    """A loopback port nobody listens on (free when asked; the server takes it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on *port* (at most 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def served_in_process(directory: Path, *extra: str) -> Iterator[Served]:
    """A SQLite store in *directory* served by ``python -m storekeeper.server`` in a
    process of its own (so what it allocates is not this process's)."""
    path = directory / "served.db"
    backing = SqliteStore(str(path), durable=False)
    backing.connect()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "storekeeper.server",
        f"sqlite:///{path}?durable=false",
        "--port",
        str(port),
        *extra,
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for(port, process)
        yield Served(backing, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(30)
        backing.disconnect()


@contextlib.contextmanager
def served_in_thread(store: AbstractStore, **app_options: Any) -> Iterator[Served]:
    """*store* (connected) served in a thread of this process."""
    with ServerThread(create_app(store, **app_options)) as server:
        yield Served(store, server.url)
