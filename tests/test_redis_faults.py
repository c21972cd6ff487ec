"""RedisStore when its server dies and comes back, on private servers of the tests.

What survives is the server's to say: a server keeping nothing on disk (``--save ''
--appendonly no``, like the machine's shared one) comes back empty, change stream
included; one writing every command to its append-only file before answering
(``--appendonly yes --appendfsync always``) comes back with every acknowledged write.
In both cases calls while the server is away raise
:class:`~storekeeper.errors.BackendUnavailableError` (nothing else), the same store
objects work again once it is back, and the listener reconnects by itself: it delivers
every change the server still has after its cursor (with the append-only file, every
acknowledged one, once) and every change made after the restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from private_servers import PrivateRedis
from storekeeper.backends.redis import RedisStore
from storekeeper.errors import BackendUnavailableError
from storekeeper.events import EventManager
from storekeeper.store import StoreModificationEvent

pytestmark = [pytest.mark.service, pytest.mark.redis]

WRITERS = 3


@pytest.fixture(params=["ephemeral", "appendfsync-always"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    instance = PrivateRedis(tmp_path / "redis", persistent=request.param != "ephemeral")
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


def _store(server: PrivateRedis, **options: Any) -> RedisStore:
    store = RedisStore(
        server.url, prefix="faults", timeout=1.0, event_manager=EventManager(), **options
    )
    store.connect()
    return store


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class _Writer(threading.Thread):
    """Writes new keys until told to stop, recording what was acknowledged and every
    error."""

    def __init__(self, store: RedisStore, tag: str) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.tag = tag
        self.acknowledged: list[str] = []
        self.errors: list[BaseException] = []
        # How many writes were acknowledged when each error was raised.
        self.marks: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            key = f"{self.tag}/{i}"
            try:
                self.store.set(key, (key.encode(), {"i": i}))
            except Exception as exc:  # every kind is recorded, and checked by the test
                self.marks.append(len(self.acknowledged))
                self.errors.append(exc)
                time.sleep(0.05)
                continue
            self.acknowledged.append(key)


def _each_gets(writers: list[_Writer], what: str, more: int) -> None:
    before = [len(getattr(w, what)) for w in writers]
    _wait(
        lambda: all(
            len(getattr(w, what)) >= n + more for w, n in zip(writers, before, strict=True)
        ),
        f"{more} more {what} from each writer",
    )


def test_a_server_restart_keeps_what_its_persistence_keeps(server: PrivateRedis) -> None:
    writer = _store(server, events=True)
    listener = _store(server)
    events: list[Any] = []
    listener.event_manager.connect(StoreModificationEvent, events.append)
    writers = [_Writer(writer, f"w{n}") for n in range(WRITERS)]
    for thread in writers:
        thread.start()
    try:
        _each_gets(writers, "acknowledged", 10)
        failed = [len(thread.errors) for thread in writers]
        server.crash()
        _each_gets(writers, "errors", 1)
        server.start()
        _each_gets(writers, "acknowledged", 10)
    finally:
        for thread in writers:
            thread.stop.set()
        for thread in writers:
            thread.join(30)
    try:
        for thread in writers:
            for error in thread.errors:
                assert isinstance(error, BackendUnavailableError), repr(error)
                assert "Redis" in str(error)
        acknowledged = [key for thread in writers for key in thread.acknowledged]
        # A writer's first error after the crash splits its writes: those before it
        # went to the server that died, those after to the one that came back.
        before_crash = {
            key
            for thread, n in zip(writers, failed, strict=True)
            for key in thread.acknowledged[: thread.marks[n]]
        }
        fresh = _store(server, events=False)  # a second path: a new client
        try:
            present = {key for key in acknowledged if fresh.exists(key)}
            after_restart = {key for key in acknowledged if key not in before_crash}
            # Whatever the persistence, writes after the restart are there ...
            assert after_restart <= present
            # ... and those before it only if the server wrote them to disk.
            if server.persistent:
                assert present == set(acknowledged)
                for key in acknowledged:
                    assert fresh.to_bytes(key) == key.encode()
            else:
                assert not present & before_crash
            # info() says which of the two the server is.
            persistence = fresh.info()["persistence"]
            assert persistence["appendonly"] == ("yes" if server.persistent else "no")
        finally:
            fresh.disconnect()
        # The listener came back by itself: the changes after the restart arrive.
        _wait(lambda: after_restart <= {e.key for e in events}, "events after the restart")
        if server.persistent:  # the stream survived with the data: all of it, once
            _wait(lambda: set(acknowledged) <= {e.key for e in events}, "every event")
            keys = [e.key for e in events]
            assert len(keys) == len(set(keys))
        # The same store objects work again.
        writer.set("after", (b"after", {}))
        assert listener.to_bytes("after") == b"after"
    finally:
        writer.disconnect()
        listener.disconnect()


def test_calls_while_the_server_is_down_raise_the_clear_error(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        store = _store(server)
        store.set("k", (b"v", {}))
        server.crash()
        started = time.monotonic()
        for call in (
            lambda: store.set("k", (b"w", {})),
            lambda: store.get("k"),
            lambda: store.query(n=1),
            lambda: list(store.list_keys()),
        ):
            with pytest.raises(BackendUnavailableError, match="Redis"):
                call()
        assert time.monotonic() - started < 10  # refused at once, not after a long wait
        with pytest.raises(BackendUnavailableError), store.transaction():
            store.set("t", (b"t", {}))
        server.start()
        store.set("k", (b"back", {}))
        assert store.to_bytes("k") == b"back"
        store.disconnect()
    finally:
        server.close()
