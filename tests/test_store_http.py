"""DynamicURLStore against the conformance suite, over a real server on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

import pytest

from _http_servers import Served, served_in_process, served_in_thread
from storekeeper.backends import http as http_backend
from storekeeper.backends.http import DynamicURLStore
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.errors import BackendError, ConflictError, InvalidURLError
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, StoreModificationEvent, open_store
from storekeeper.testing.store import StoreTests


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_in_process(tmp_path_factory.mktemp("http")) as found:
        yield found


class TestDynamicURLStore(StoreTests):
    model_examples = 5
    versions_before_commit = False  # the server gives the version at the commit

    @pytest.fixture(autouse=True)
    def _server(self, served: Served) -> None:
        served.clear()
        self.served = served

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> DynamicURLStore:
        return DynamicURLStore(self.served.base, event_manager=event_manager)

    def reopen_store(self, tmp_path: Path, event_manager: EventManager) -> DynamicURLStore:
        return DynamicURLStore(self.served.base, event_manager=event_manager)

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        self.served.backing.set(key, (data, metadata))

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        backing = self.served.backing
        return backing.to_bytes(key), backing.get_metadata(key)


def test_open_store_http_gives_a_connected_dynamic_store(served: Served) -> None:
    served.clear()
    with open_store(served.base) as store:
        assert isinstance(store, DynamicURLStore)
        assert store.is_connected()
        store.set("k", (b"v", {}))
    assert served.backing.to_bytes("k") == b"v"


def test_url_options_are_checked(served: Served) -> None:
    with open_store(served.base + "?timeout=5&query_url=" + served.url + "/query") as store:
        assert isinstance(store, DynamicURLStore) and store.timeout == 5
    with pytest.raises(InvalidURLError, match="valid options: query_url, remote_events, timeout"):
        open_store(served.base + "?timout=5")


def test_an_option_of_url_clients_hands_the_url_to_that_client(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(http_backend.URL_CLIENTS, ("flavour", "other"), f"{__name__}:OtherClient")
    with open_store(served.base + "?flavour=other") as store:
        assert isinstance(store, OtherClient)
        assert store.url.endswith("/store?flavour=other")


class OtherClient(DictMemoryStore):
    """Stands for another http(s):// client (the static one)."""

    url = ""

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> OtherClient:  # type: ignore[override]
        store = cls()
        store.url = parts.geturl()
        return store


def test_get_of_a_large_value_keeps_it_in_a_file_not_in_memory(served: Served) -> None:
    served.clear()
    size = 8 * 1024 * 1024
    served.backing.set("big", (b"b" * size, {"m": 1}))
    with DynamicURLStore(served.base) as store:
        tracemalloc.start()
        try:
            value = store.get("big")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * 1024 * 1024, peak
        assert value.size == size and value.metadata == {"m": 1}
        with value.range(size - 3) as stream:
            assert stream.read() == b"bbb"


def test_remote_events_deliver_other_clients_changes_once(served: Served) -> None:
    served.clear()
    manager = EventManager()
    heard: list[Any] = []
    manager.connect(StoreModificationEvent, heard.append)
    listener = DynamicURLStore(served.base, event_manager=manager, remote_events=True)
    with listener, DynamicURLStore(served.base) as writer:
        listener.set("mine", (b"1", {}))  # its own change: the local event only
        writer.set("theirs", (b"2", {"a": 1}))
        writer.update_metadata("theirs", {"b": 2})
        writer.delete("theirs")
        deadline = time.monotonic() + 30
        while len(heard) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # a repeat of "mine" would have arrived by now
    seen = [(type(e).__name__, e.key, getattr(e, "remote", False)) for e in heard]
    assert seen == [
        ("StoreSetEvent", "mine", False),
        ("StoreSetEvent", "theirs", True),
        ("StoreUpdateEvent", "theirs", True),
        ("StoreDeleteEvent", "theirs", True),
    ]
    assert heard[1].metadata == {"a": 1} and heard[2].metadata == {"a": 1, "b": 2}
    assert heard[1].source is listener


def test_a_commit_over_another_clients_change_fails_instead_of_losing_it(served: Served) -> None:
    served.clear()
    with DynamicURLStore(served.base) as mine, DynamicURLStore(served.base) as theirs:
        mine.set("n", (b"1", {}))
        with pytest.raises(ConflictError), mine.transaction("increment"):
            count = int(mine.to_bytes("n"))
            theirs.set("n", (b"10", {}))  # between my read and my commit
            mine.set("n", (str(count + 1).encode(), {}))
            mine.set("other", (b"x", {}))
        assert mine.to_bytes("n") == b"10"
        assert not mine.exists("other")  # the whole commit was refused
        with pytest.raises(ConflictError), mine.transaction("create"):
            assert not mine.exists("fresh")
            theirs.set("fresh", (b"theirs", {}))
            mine.set("fresh", (b"mine", {}))
        assert mine.to_bytes("fresh") == b"theirs"
        with mine.transaction("increment"):  # nobody interferes: it commits
            mine.set("n", (str(int(mine.to_bytes("n")) + 1).encode(), {}))
        assert theirs.to_bytes("n") == b"11"


@pytest.mark.parametrize(
    "read",
    [
        lambda store: store.get_metadata("a"),
        lambda store: store.get_metadata("a", ["m"]),
        lambda store: store.get("a"),
        lambda store: store.exists("a"),
        lambda store: store.version_of("a"),
    ],
    ids=["get_metadata", "get_metadata_select", "get", "exists", "version_of"],
)
def test_a_commit_based_on_a_key_it_only_read_fails_if_that_key_changed(
    served: Served, read: Any
) -> None:
    served.clear()
    with DynamicURLStore(served.base) as mine, DynamicURLStore(served.base) as theirs:
        theirs.set("a", (b"1", {"m": 1}))
        with pytest.raises(ConflictError), mine.transaction("derive b from a"):
            read(mine)
            theirs.update_metadata("a", {"m": 2})  # between my read and my commit
            mine.set("b", (b"derived", {"from": 1}))
        assert not theirs.exists("b") and not served.backing.exists("b")
        assert served.backing.get_metadata("a") == {"m": 2}
        with mine.transaction("nobody interferes"):
            read(mine)
            mine.set("b", (b"derived", {"from": 2}))
        assert served.backing.get_metadata("b") == {"from": 2}


def test_a_commit_based_on_a_key_read_as_missing_fails_if_it_appeared(served: Served) -> None:
    served.clear()
    with DynamicURLStore(served.base) as mine, DynamicURLStore(served.base) as theirs:
        with pytest.raises(ConflictError), mine.transaction("claim"):
            assert not mine.exists("lock")
            theirs.set("lock", (b"theirs", {}))
            mine.set("owner", (b"mine", {}))
        assert not served.backing.exists("owner")


def test_a_read_only_transaction_fails_if_what_it_read_changed(served: Served) -> None:
    # read skew: x read before and y after another client moved 50 from x to y
    served.clear()
    with DynamicURLStore(served.base) as mine, DynamicURLStore(served.base) as theirs:
        theirs.multiset(["x", "y"], [(b"100", {}), (b"0", {})])
        with pytest.raises(ConflictError), mine.transaction("total"):
            total = int(mine.to_bytes("x"))
            with theirs.transaction("move 50"):
                theirs.set("x", (b"50", {}))
                theirs.set("y", (b"50", {}))
            total += int(mine.to_bytes("y"))
        assert total == 150  # an inconsistent state was read, and the commit said so
        with mine.transaction("total again"):
            assert int(mine.to_bytes("x")) + int(mine.to_bytes("y")) == 100


def test_a_read_only_transaction_is_checked_by_a_read_only_server() -> None:
    backing = DictMemoryStore()
    backing.connect()
    backing.set("k", (b"1", {}))
    with (
        served_in_thread(backing, read_only=True) as limited,
        DynamicURLStore(limited.base) as mine,
    ):
        with mine.transaction():
            assert mine.to_bytes("k") == b"1"
        with pytest.raises(ConflictError), mine.transaction():
            assert mine.to_bytes("k") == b"1"
            backing.set("k", (b"2", {}))  # a change the server's store makes itself


def test_capabilities_follow_the_served_store(served: Served) -> None:
    with DynamicURLStore(served.base) as store:
        served_capabilities = served.backing.capabilities
        capabilities = store.capabilities
    assert capabilities.atomic_transactions is served_capabilities.atomic_transactions
    assert capabilities.isolated_transactions is served_capabilities.isolated_transactions
    assert capabilities.isolated_transactions  # a SQLite store's are
    assert not capabilities.cross_process


def _cut_off_server(declared: int, sent: bytes) -> tuple[socket.socket, threading.Thread]:
    """A server answering ``/info`` with 404 and any other request with a value body
    of *declared* bytes (7 of metadata) of which it sends only *sent* before closing
    the connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                if b"/info " in connection.recv(65536):
                    connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n"
                    f'X-Storekeeper-Metadata-Length: 7\r\nETag: "v"\r\n\r\n'
                )
                connection.sendall(head.encode() + sent)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("sent", [b'{"a":1}' + b"x" * 43, b'{"a":1', b""])
def test_get_of_a_cut_off_answer_is_an_error_not_a_shorter_value(sent: bytes) -> None:
    listener, thread = _cut_off_server(107, sent)
    try:
        port = listener.getsockname()[1]
        with DynamicURLStore(f"http://127.0.0.1:{port}/store", timeout=10) as store:
            with pytest.raises(BackendError):
                store.get("k")
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the server thread
        listener.close()
        thread.join(5)
    assert not thread.is_alive()
