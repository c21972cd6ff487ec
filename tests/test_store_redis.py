"""RedisStore against the conformance suite, plus what only it promises.

Needs a Redis server (see ``redis_service``): each test works under a prefix of its own
and deletes it afterwards; the server is never flushed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_service import cleaned, prefix_for, raw_client, store_url
from storekeeper.backends.redis import RedisStore
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore
from storekeeper.testing.model import SMALL_INLINE_LIMIT
from storekeeper.testing.store import StoreTests

SERVER_URL = store_url("x").partition("?")[0]


def raw_read(client: redis.Redis, root: str, key: str) -> tuple[bytes, dict[str, Any]]:
    """A record read with plain redis-py commands, as the store's layout documents it."""
    record = client.hgetall(f"{root}k:{key}")
    if not record:
        raise KeyError(key)
    if b"b" in record:
        chunks = client.hgetall(f"{root}c:{record[b'b'].decode()}")
        data = b"".join(chunks[str(n).encode()] for n in range(len(chunks)))
    else:
        data = record[b"d"]
    assert len(data) == int(record[b"z"])
    return data, json.loads(record[b"m"])


def raw_write(
    client: redis.Redis, root: str, key: str, data: bytes, metadata: dict[str, Any]
) -> None:
    """A record written with plain redis-py commands (inline data, no metadata index)."""
    now = repr(time.time())
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(
            f"{root}k:{key}",
            mapping={
                "d": data,
                "z": len(data),
                "m": json.dumps(metadata),
                "v": "raw-1",
                "c": now,
                "t": now,
                "x": "[]",
            },
        )
        pipe.zadd(f"{root}K", {key: 0})
        pipe.execute()


class TestRedisStore(StoreTests):
    """The default layout: values over 1 MiB in chunks of 1 MiB."""

    @pytest.fixture(autouse=True)
    def _server(self, tmp_path: Path) -> Iterator[redis.Redis]:
        yield from cleaned(prefix_for(str(tmp_path)))

    def options(self) -> dict[str, Any]:
        return {}

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> RedisStore:
        return RedisStore(
            SERVER_URL,
            prefix=prefix_for(str(tmp_path)),
            event_manager=event_manager,
            **self.options(),
        )

    reopen_store = create_store

    def store_url(self, tmp_path: Path) -> str:
        return store_url(prefix_for(str(tmp_path)), **self.options())

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> RedisStore:
        return RedisStore(
            SERVER_URL,
            prefix=prefix_for(str(tmp_path)),
            inline_limit=SMALL_INLINE_LIMIT,
            chunk_size=5,
            event_manager=event_manager,
        )

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, RedisStore)
        return raw_read(raw_client(), store.root, key)

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, RedisStore)
        raw_write(raw_client(), store.root, key, data, metadata)


class TestRedisChunkedStore(TestRedisStore):
    """Tiny inline limit and chunks, so every code path of large values runs."""

    large_value_size = 100_003
    kept_value_size = 20_011

    def options(self) -> dict[str, Any]:
        return {"inline_limit": 4, "chunk_size": 4099}
