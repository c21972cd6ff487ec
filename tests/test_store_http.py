"""DynamicURLStore against the conformance suite, over a real server on a loopback port."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

import pytest

from _http_servers import Served, served_in_process
from storekeeper.backends import http as http_backend
from storekeeper.backends.http import DynamicURLStore
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.errors import InvalidURLError
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, open_store
from storekeeper.testing.store import StoreTests


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_in_process(tmp_path_factory.mktemp("http")) as found:
        yield found


class TestDynamicURLStore(StoreTests):
    model_examples = 5

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
    with pytest.raises(InvalidURLError, match="valid options: query_url, timeout"):
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
