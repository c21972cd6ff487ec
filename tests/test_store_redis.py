"""RedisStore against the conformance suite, plus what only it promises.

Needs a Redis server (see ``redis_service``): each test works under a prefix of its own
and deletes it afterwards; the server is never flushed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_service import cleaned, prefix_for, raw_client, store_url
from storekeeper.backends import _redis_events
from storekeeper.backends.redis import RedisStore
from storekeeper.errors import (
    BackendError,
    BackendUnavailableError,
    ConflictError,
    InvalidURLError,
    MissingDependencyError,
)
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, StoreDeleteEvent, StoreModificationEvent, open_store
from storekeeper.store.urls import split_url
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


# -- what only the Redis store promises -------------------------------------------------------
@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    name = prefix_for(request.node.name)
    for _ in cleaned(name):
        yield name


def _store(prefix: str, **options: Any) -> RedisStore:
    return RedisStore(SERVER_URL, prefix=prefix, **options)


def test_open_store_urls(prefix: str) -> None:
    url = store_url(prefix, inline_limit=10, chunk_size=3, grace=5, stream_length=50, timeout=7)
    with open_store(url) as store:
        assert isinstance(store, RedisStore)
        assert (store.prefix, store.inline_limit, store.chunk_size) == (prefix, 10, 3)
        assert (store.grace, store.stream_length, store.timeout) == (5, 50, 7.0)
        store.set("k", (b"0123456789abc", {}))
        assert store.to_bytes("k") == b"0123456789abc"
    with open_store(store_url(prefix, events="false")) as quiet:
        assert isinstance(quiet, RedisStore) and quiet.stream_length == 0
        assert quiet.event_cursor is None
    tls = RedisStore.from_url(split_url("rediss://user:secret@cache.example:6380/3?prefix=p"))
    assert (tls.url, tls.prefix) == ("rediss://user:secret@cache.example:6380/3", "p")
    assert RedisStore.from_url(split_url("redis://h")).url == "redis://h/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?prefx=a", "valid options: chunk_size, events, grace"),
        ("redis://h/zero", "database number"),
        ("redis://h:port/0", "port"),
        ("redis:///0", "names a host"),
        ("redis://h/0?prefix=a{b", "without braces"),
        ("redis://h/0?chunk_size=0", "chunk_size"),
        ("redis://h/0?events=maybe", "true or false"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidURLError, match=message):
        open_store(url)


def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailableError, match="cannot be reached"):
        open_store("redis://127.0.0.1:1/0?timeout=2")


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
    monkeypatch.delitem(sys.modules, "storekeeper.backends.redis", raising=False)
    with pytest.raises(MissingDependencyError, match=r"storekeeper\[redis\]"):
        open_store("redis://127.0.0.1:6379/0")


def test_prefixes_isolate_stores_and_keys_cannot_leave_theirs(
    prefix: str, server: redis.Redis
) -> None:
    # Without the braces the second root would extend the first: "{p}" vs "{p}k:".
    hostile = ["}k:x", "{other}k:x", "../k:x", "x\n*", "K", "X", "c:abc", "k:" + "é" * 50]
    with _store(prefix) as first, _store(prefix + "k:") as second:
        for key in hostile:
            first.set(key, (b"first", {"kind": "hostile"}))
        second.set("x", (b"second", {"kind": "other"}))
        assert sorted(first.query_keys()) == sorted(hostile)
        assert first.query_keys(kind="other") == [] and second.query_keys() == ["x"]
        assert not first.exists("x") and second.to_bytes("x") == b"second"
        roots = {first.root, second.root}
    names = [name.decode() for name in server.scan_iter(match=f"*{prefix}*", count=1000)]
    assert names and all(any(name.startswith(root) for root in roots) for name in names)


def test_queries_read_the_index_kept_with_each_write(prefix: str, server: redis.Redis) -> None:
    with _store(prefix) as store:
        store.multiset([f"k{n}" for n in range(50)], [(b"", {"kind": n % 5}) for n in range(50)])
        store.set_metadata("k0", {"kind": "moved"})
        assert sorted(store.query_keys(kind=0)) == sorted(f"k{n}" for n in range(5, 50, 5))
        members = server.smembers(f'{store.root}v:4:kind:s"moved"')
        assert members == {b"k0"}
        assert b"k0" not in server.smembers(f"{store.root}v:4:kind:i0")
        # The answer comes from the index: emptied behind the store's back, the query
        # finds nothing although every record still says kind=1.
        server.delete(f"{store.root}v:4:kind:i1")
        assert store.query_keys(kind=1) == []
        assert store.get_metadata("k1") == {"kind": 1}
        store.delete("k5")
        assert b"k5" not in server.smembers(f"{store.root}v:4:kind:i0")


def test_info_reports_the_servers_persistence(prefix: str, server: redis.Redis) -> None:
    with _store(prefix) as store:
        info = store.info()
    save = server.config_get("save")["save"]
    appendonly = server.config_get("appendonly")["appendonly"]
    assert info["persistence"]["save"] == save
    assert info["persistence"]["appendonly"] == appendonly
    if appendonly == "no" and not save:
        assert info["durability"].startswith("none: the server keeps nothing on disk")
    assert info["prefix"] == prefix and "***" not in info["url"]


def test_a_replaced_chunked_value_expires_after_the_grace_period(
    prefix: str, server: redis.Redis
) -> None:
    with _store(prefix, inline_limit=4, chunk_size=8, grace=60) as store:
        store.set("k", (b"old value, chunked", {}))
        old = server.hget(f"{store.root}k:k", "b")
        value = store.get("k")
        store.set("k", (b"new value, chunked", {}))
        new = server.hget(f"{store.root}k:k", "b")
        assert server.ttl(f"{store.root}c:{new.decode()}") == -1  # kept
        assert 0 < server.ttl(f"{store.root}c:{old.decode()}") <= 60
        assert value.data.read() == b"old value, chunked"
        store.delete("k")
        assert 0 < server.ttl(f"{store.root}c:{new.decode()}") <= 60


def test_a_transaction_fails_whole_when_another_process_wrote_what_it_read(prefix: str) -> None:
    with _store(prefix) as store, _store(prefix) as other:
        store.set("a", (b"1", {}))
        with pytest.raises(ConflictError, match="changed by another writer"):
            with store.transaction():
                count = int(store.to_bytes("a"))
                other.set("a", (b"100", {}))  # another client, as another process would
                store.set("a", (str(count + 1).encode(), {}))
                store.set("b", (b"new", {}))
        assert store.to_bytes("a") == b"100" and not store.exists("b")


def test_remote_events_are_marked_and_survive_a_lost_listener_connection(
    prefix: str, server: redis.Redis
) -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreModificationEvent, seen.append)
    with _store(prefix, event_manager=manager) as listening, _store(prefix) as writer:
        listening.set("own", (b"", {"by": "me"}))
        writer.set("a", (b"", {"n": 0}))
        assert _wait_for(lambda: len(seen) == 2)
        assert [(e.key, e.remote) for e in seen] == [("own", False), ("a", True)]
        assert seen[1].metadata == {"n": 0} and seen[1].source is listening
        killed = _kill_clients(server, "storekeeper-events:" + prefix)
        assert killed >= 1
        for n in range(1, 6):
            writer.set("a", (b"", {"n": n}))
        writer.delete("a")
        assert _wait_for(lambda: len(seen) == 8)
        assert [e.metadata["n"] for e in seen[2:7]] == [1, 2, 3, 4, 5]
        assert isinstance(seen[7], StoreDeleteEvent) and seen[7].remote
        cursor = listening.event_cursor
    # A new store given the cursor resumes there: it hears what happened meanwhile.
    with _store(prefix) as writer:
        writer.set("later", (b"", {}))
    later: list[Any] = []
    again = EventManager()
    again.connect(StoreModificationEvent, later.append)
    with _store(prefix, event_manager=again, event_cursor=cursor):
        assert _wait_for(lambda: len(later) == 1)
        assert later[0].key == "later" and later[0].remote


def test_an_idle_listener_reports_no_lost_connection(
    prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Short blocking reads, so that a few seconds of idleness are many empty blocks:
    # each must read as "no events", never as a lost connection.
    monkeypatch.setattr(_redis_events, "BLOCK_SECONDS", 0.2)
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreModificationEvent, seen.append)
    caplog.set_level(logging.WARNING, logger="storekeeper.backends.redis")
    with _store(prefix, event_manager=manager, timeout=0.2), _store(prefix) as writer:
        writer.set("first", (b"", {}))
        assert _wait_for(lambda: len(seen) == 1)
        time.sleep(2.0)  # ten blocks with nothing to read
        writer.set("after", (b"", {}))
        assert _wait_for(lambda: len(seen) == 2)
    assert [e.key for e in seen] == ["first", "after"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_change_stream_is_trimmed(prefix: str, server: redis.Redis) -> None:
    with _store(prefix, stream_length=10) as store:
        for n in range(600):
            store.set("k", (b"", {"n": n}))
        assert server.xlen(f"{store.root}X") < 300
    with _store(prefix, events=False) as quiet:
        before = server.xlen(f"{quiet.root}X")
        quiet.set("k", (b"", {}))
        assert server.xlen(f"{quiet.root}X") == before


def _wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _kill_clients(client: redis.Redis, name: str) -> int:
    """CLIENT KILL every connection named *name* (only this test's: the name holds its
    prefix); how many were killed."""
    killed = 0
    for entry in client.client_list():
        if entry.get("name") == name:
            killed += client.client_kill_filter(_id=entry["id"])
    return killed


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = raw_client()
    yield client
    client.close()


def test_a_connection_killed_inside_a_transaction_applies_nothing(
    prefix: str, server: redis.Redis
) -> None:
    with _store(prefix, inline_limit=4, chunk_size=4) as store:
        store.multiset(["a", "b"], [(b"1", {"v": 1}), (b"2", {"v": 2})])
        for reads in (True, False):
            lost = r"nothing of it was applied|whether this one was applied"
            with pytest.raises(BackendUnavailableError, match=lost):
                with store.transaction():
                    if reads:
                        store.get_metadata("a")
                    store.set("a", (b"changed", {"v": 10}))
                    store.set("new", (b"large value, chunked", {}))
                    store.delete("b")
                    assert _kill_clients(server, store.client_name) >= 1
            assert store.multiget_metadata(["a", "b"]) == [{"v": 1}, {"v": 2}]
            assert store.to_bytes("a") == b"1" and not store.exists("new")
        store.set("a", (b"after", {}))  # the store reconnects by itself
        assert store.to_bytes("a") == b"after"


def test_a_reconnected_store_hears_what_it_missed_or_reports_the_gap(prefix: str) -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreModificationEvent, seen.append)
    listening = _store(prefix, event_manager=manager)
    with _store(prefix, stream_length=50) as writer:
        listening.connect()
        listening.disconnect()
        for n in range(20):
            writer.set("k", (b"", {"n": n}))
        listening.connect()
        assert _wait_for(lambda: len(seen) == 20)
        assert [e.metadata["n"] for e in seen] == list(range(20)) and listening.event_gaps == 0
        listening.disconnect()
        for n in range(20, 600):
            writer.set("k", (b"", {"n": n}))  # trims the stream far past the cursor
        listening.connect()
        assert _wait_for(lambda: listening.event_gaps == 1)
        listening.disconnect()


def test_large_inline_values_go_through_a_staging_hash_that_never_lingers(
    prefix: str, server: redis.Redis
) -> None:
    big, other = b"a" * 10_000, b"b" * 9_000
    with _store(prefix) as store:
        version = store.set("k", (big, {"m": 1}))
        store.set_data("k", other)
        assert (store.to_bytes("k"), store.get_metadata("k")) == (other, {"m": 1})
        assert store.query_keys(m=1) == ["k"]
        with pytest.raises(ConflictError):
            store.set("k", (big, {"m": 2}), if_version=version)
        with pytest.raises(ConflictError):
            store.set("k", (big, {}), if_exists=False)
        with store.transaction():
            store.set("t", (big, {"m": 3}))
            store.set_data("k", big)
        assert store.multiget_metadata(["k", "t"]) == [{"m": 1}, {"m": 3}]
        store.multiset(["x", "y"], [(big, {}), (other, {"m": 4})])
        assert [store.to_bytes(key) for key in "ktxy"] == [big, big, big, other]
        assert raw_read(server, store.root, "y") == (other, {"m": 4})
        staging = list(server.scan_iter(match=_glob(store.root) + "w:*", count=1000))
        assert staging == []


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def test_a_lost_write_script_is_loaded_again(prefix: str) -> None:
    unknown = "0" * 40  # what EVALSHA meets after SCRIPT FLUSH (never run here: shared server)
    big = b"z" * 5000
    with _store(prefix) as store:
        store.set("k", (b"v", {"n": 1}))
        store._apply_sha = unknown
        store.set("big", (big, {"n": 2}))  # through a staging hash and a pipeline
        store._apply_sha = unknown
        store.multiset(["a", "b"], [(big, {}), (b"small", {"n": 3})])
        store._apply_sha = unknown
        store.update_metadata("k", {"m": 1})
        assert store.to_bytes("big") == big and store.get_metadata("k") == {"n": 1, "m": 1}
        assert [store.to_bytes(key) for key in "ab"] == [big, b"small"]
        store._apply_sha = unknown
        with pytest.raises(BackendError, match="nothing of it was applied"):
            with store.transaction():
                store.set("t", (big, {}))
                store.delete("k")
        assert not store.exists("t") and store.exists("k")
        with store.transaction():  # loaded again by the failed commit
            store.set("t", (big, {}))
        assert store.to_bytes("t") == big
