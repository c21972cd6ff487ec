"""DynamicURLStore against the conformance suite, over a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _http_servers import Served, served_in_process
from storekeeper.backends.http import DynamicURLStore
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
