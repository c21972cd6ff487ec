"""PostgresStore against the conformance suite, plus what only it promises."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from _pg_harness import database_url, drop_database, raw_read, raw_write, table_for
from storekeeper.backends.postgres import PostgresStore
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore
from storekeeper.testing.model import SMALL_INLINE_LIMIT
from storekeeper.testing.store import StoreTests

pytestmark = [pytest.mark.service, pytest.mark.postgres]


@pytest.fixture(scope="module", autouse=True)
def _session_database() -> Iterator[None]:
    yield
    drop_database()


class _PostgresTests(StoreTests):
    """Raw access through a separate psycopg connection; one table per test."""

    options: dict[str, Any] = {}  # noqa: RUF012 - read only

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> PostgresStore:
        return PostgresStore(
            database_url(), table_for(str(tmp_path)), event_manager=event_manager, **self.options
        )

    reopen_store = create_store

    def store_url(self, tmp_path: Path) -> str:
        options = "".join(f"&{name}={value}" for name, value in self.options.items())
        return f"{database_url()}?table={table_for(str(tmp_path))}{options}"

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> PostgresStore:
        return PostgresStore(
            database_url(),
            table_for(str(tmp_path)),
            inline_limit=SMALL_INLINE_LIMIT,
            chunk_size=5,
            event_manager=event_manager,
        )

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, PostgresStore)
        return raw_read(database_url(), store.table, key)

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, PostgresStore)
        raw_write(database_url(), store.table, key, data, metadata)

    def settle_stopped_writer(self) -> None:
        """Freezing the writer process does not freeze (or kill) the server, which may
        be committing the writer's last COMMIT when the writer stops or dies: wait until
        it is done (atomic all the same: a reader sees all of it or none of it)."""
        _wait_for_commits_in_flight()


def _wait_for_commits_in_flight() -> None:
    """Return once no session of the test database is running a COMMIT."""
    deadline = time.monotonic() + 30
    with psycopg.connect(database_url(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND query = 'COMMIT' AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.001)


class TestPostgresStore(_PostgresTests):
    """Values over 64 bytes are chunked (64 KiB chunks): the suite's small values take
    the inline path and its large ones (and the model's) the chunked one."""

    options = {"inline_limit": 64, "chunk_size": 65536}  # noqa: RUF012
