"""CachedStore: conformance over memory, filesystem and SQLite, policies, bounds, processes."""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.synchronize
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import CachedStore
from storekeeper.composite.cached import BOOKKEEPING
from storekeeper.errors import (
    ConflictError,
    InvalidMetadataError,
    KeyNotFoundError,
    ReadOnlyStoreError,
)
from storekeeper.events import EventManager
from storekeeper.store import (
    AbstractReadOnlyStore,
    AbstractStore,
    StoreModificationEvent,
    StreamValue,
    Value,
)
from storekeeper.testing.children import child
from storekeeper.testing.crossprocess import Opener, same_store
from storekeeper.testing.model import ModelTests
from storekeeper.testing.store import StoreTests


class _CachedConformance(StoreTests):
    kind = "memory"
    policy = "always"

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> CachedStore:
        source, cache = child(self.kind, tmp_path, "source"), child(self.kind, tmp_path, "cache")
        return CachedStore(source, cache, policy=self.policy, event_manager=event_manager)  # type: ignore[arg-type]

    def reopen_store(self, tmp_path: Path, event_manager: EventManager) -> CachedStore:
        return self.create_store(tmp_path, event_manager)

    def process_opener(self, tmp_path: Path) -> Opener | None:
        # A reader process's fills write to the cache store, which a frozen writer
        # process may hold locked: readers must keep answering all the same.
        return None if self.kind == "memory" else same_store(self, tmp_path)

    # Raw access through the source, the store of record.
    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, CachedStore) and isinstance(store.source, AbstractStore)
        store.source.set(key, (data, metadata))

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, CachedStore)
        return store.source.to_bytes(key), store.source.get_metadata(key)


class TestCachedOverMemory(_CachedConformance):
    kind = "memory"


class TestCachedImmutableOverMemory(_CachedConformance):
    kind = "memory"
    policy = "immutable"


class TestCachedOverFiles(_CachedConformance):
    kind = "file"
    listing_streams = False


class TestCachedOverSqlite(_CachedConformance):
    kind = "sqlite"


class _ImmutableModel(ModelTests):
    """The dict-model test alone for ``policy="immutable"`` over file and SQLite children
    (over memory it runs with the whole suite, above)."""

    kind = "file"

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> CachedStore:
        source, cache = child(self.kind, tmp_path, "source"), child(self.kind, tmp_path, "cache")
        return CachedStore(source, cache, policy="immutable", event_manager=event_manager)


class TestCachedImmutableModelOverFiles(_ImmutableModel):
    kind = "file"


class TestCachedImmutableModelOverSqlite(_ImmutableModel):
    kind = "sqlite"


class Counting(AbstractStore):
    """A store wrapper that counts calls and data bytes read (a stand-in remote source)."""

    def __init__(self, inner: AbstractStore, *, versions: bool = True) -> None:
        super().__init__(inner.event_manager)
        self.inner = inner
        self.versions = versions
        self.calls = 0
        self.bytes_read = 0

    def connect(self, credentials: Any = None) -> None:
        self.inner.connect()
        super().connect()

    def get(self, key: str) -> Value:
        self.calls += 1
        value = self.inner.get(key)
        return StreamValue(
            lambda: self._counted(value.data),
            value.metadata,
            size=value.size,
            version=value.version if self.versions else None,
        )

    def _counted(self, stream: IO[bytes]) -> IO[bytes]:
        data = stream.read()
        self.bytes_read += len(data)
        return io.BytesIO(data)

    def query(self, select: Any = None, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
        self.calls += 1
        return self.inner.query(select, **kwargs)

    def set(self, key: str, value: Any, buffer_size: int = 1 << 20, **kw: Any) -> None:
        self.calls += 1
        self.inner.set(key, value, buffer_size, **kw)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        self.calls += 1
        self.inner.delete(key, if_version=if_version)

    def reset(self) -> None:
        self.calls = self.bytes_read = 0


@pytest.fixture
def source() -> Counting:
    inner = DictMemoryStore()
    inner.connect()
    for name in "abcde":
        inner.set(name, (name.encode() * 100, {"name": name}))
    return Counting(inner)


def cached(source: AbstractReadOnlyStore, **options: Any) -> CachedStore:
    store = CachedStore(source, DictMemoryStore(), event_manager=EventManager(), **options)
    store.connect()
    return store


def test_always_revalidates_with_one_call_and_no_data(source: Counting) -> None:
    store = cached(source)
    assert store.to_bytes("a") == b"a" * 100
    source.reset()
    value = store.get("a")
    assert (source.calls, source.bytes_read) == (1, 0)
    assert value.metadata == {"name": "a"} and value.version == source.inner.get("a").version
    assert store.to_bytes("a") == b"a" * 100
    assert source.bytes_read == 0


def test_always_sees_changes_made_at_the_source(source: Counting) -> None:
    store = cached(source)
    store.get("a")
    source.inner.set("a", (b"new", {"v": 2}))
    assert store.to_bytes("a") == b"new" and store.get_metadata("a") == {"v": 2}
    source.inner.delete("b")
    with pytest.raises(KeyNotFoundError):
        store.get("b")
    assert not store.cache.exists("b")


def test_immutable_hits_never_touch_the_source(source: Counting) -> None:
    store = cached(source, policy="immutable")
    store.get("a")
    source.reset()
    for _ in range(5):
        assert store.to_bytes("a") == b"a" * 100
        assert store.exists("a")
    assert source.calls == 0


def test_max_age_trusts_a_copy_for_a_while(source: Counting) -> None:
    store = cached(source, policy="max_age", max_age=0.2)
    store.get("a")
    source.reset()
    store.get("a")
    assert source.calls == 0
    time.sleep(0.25)
    store.get("a")
    assert (source.calls, source.bytes_read) == (1, 0)  # validated, not fetched
    store.get("a")
    assert source.calls == 1  # the validation restarted the clock


def test_policy_arguments_are_checked(source: Counting) -> None:
    with pytest.raises(ValueError, match="policy"):
        CachedStore(source, DictMemoryStore(), policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_age"):
        CachedStore(source, DictMemoryStore(), policy="max_age")
    with pytest.raises(ValueError, match="max_age"):
        CachedStore(source, DictMemoryStore(), max_age=3)


def test_version_of_is_used_when_the_source_has_it(source: Counting) -> None:
    asked: list[str] = []

    def version_of(key: str) -> str:
        asked.append(key)
        version = source.inner.get(key).version
        assert version is not None
        return version

    source.version_of = version_of  # type: ignore[attr-defined]
    store = cached(source)
    store.get("a")
    source.reset()
    assert store.to_bytes("a") == b"a" * 100
    assert asked == ["a"] and source.calls == 0


def test_sources_without_versions_are_read_through(source: Counting) -> None:
    source.versions = False
    store = cached(source)
    assert store.to_bytes("a") == b"a" * 100
    assert store.cache.query_keys() == []


def test_least_recently_used_copies_are_evicted(source: Counting) -> None:
    store = cached(source, max_size=350, touch_interval=0.0)
    for name in "abc":
        store.get(name)
        time.sleep(0.01)
    store.get("a")  # a is now more recent than b
    time.sleep(0.01)
    store.get("d")  # 400 bytes > 350: evict down to 315, least recently used first
    assert sorted(store.cache.query_keys()) == ["a", "c", "d"]
    by_count = cached(source, max_entries=2, touch_interval=0.0)
    for name in "abcde":
        by_count.get(name)
        time.sleep(0.01)
    assert len(by_count.cache.query_keys()) <= 2
    assert "e" in by_count.cache.query_keys()
    by_count.invalidate()
    assert by_count.cache.query_keys() == []


def test_bookkeeping_never_shows(source: Counting) -> None:
    store = cached(source)
    store.get("a")
    assert BOOKKEEPING in store.cache.get_metadata("a")
    assert store.get("a").metadata == {"name": "a"}
    assert store.get_metadata("a") == {"name": "a"}
    assert dict(store.query(name="a")) == {"a": {"name": "a"}}


_RESERVED = {BOOKKEEPING: {"v": "forged"}}
_RESERVED_WRITES: dict[str, Callable[[CachedStore], object]] = {
    "set": lambda store: store.set("a", (b"new", _RESERVED)),
    "set a Value": lambda store: store.set("a", StreamValue(lambda: io.BytesIO(b"new"), _RESERVED)),
    "set_metadata": lambda store: store.set_metadata("a", _RESERVED),
    "update_metadata": lambda store: store.update_metadata("a", _RESERVED),
    "multiset": lambda store: store.multiset(["b", "a"], [(b"new", {}), (b"new", _RESERVED)]),
    "multiset_metadata": lambda store: store.multiset_metadata(["b", "a"], [{}, _RESERVED]),
    "multiupdate_metadata": lambda store: store.multiupdate_metadata(["b", "a"], [{}, _RESERVED]),
}


@pytest.mark.parametrize("write", _RESERVED_WRITES.values(), ids=_RESERVED_WRITES.keys())
def test_writes_refuse_the_reserved_name_and_write_nothing(
    source: Counting, write: Callable[[CachedStore], object]
) -> None:
    store = cached(source, policy="immutable")
    for key in "ab":
        store.get(key)
    before = {key: (source.inner.to_bytes(key), source.inner.get_metadata(key)) for key in "ab"}
    copies = {key: store.cache.get(key).version for key in "ab"}
    with pytest.raises(InvalidMetadataError) as refused:
        write(store)
    assert repr(BOOKKEEPING) in str(refused.value)
    after = {key: (source.inner.to_bytes(key), source.inner.get_metadata(key)) for key in "ab"}
    assert after == before
    assert {key: store.cache.get(key).version for key in "ab"} == copies
    assert store.to_bytes("a") == b"a" * 100 and store.get_metadata("a") == {"name": "a"}


def test_a_source_value_holding_the_reserved_name_is_read_through(source: Counting) -> None:
    source.inner.set("a", (b"odd", {BOOKKEEPING: "the source's own", "name": "a"}))
    store = cached(source)
    value = store.get("a")
    assert value.metadata == {BOOKKEEPING: "the source's own", "name": "a"}
    assert store.to_bytes("a") == b"odd" and not store.cache.exists("a")


def test_writes_go_through_and_drop_the_copy(source: Counting) -> None:
    store = cached(source, policy="immutable")
    store.get("a")
    store.set("a", (b"written", {}))
    assert source.inner.to_bytes("a") == b"written"
    assert store.to_bytes("a") == b"written"
    store.update_metadata("a", {"u": 1})
    assert store.get_metadata("a") == {"u": 1}
    store.delete("a")
    with pytest.raises(KeyNotFoundError):
        store.get("a")


def test_transactions_read_their_own_writes_and_roll_back(source: Counting) -> None:
    store = cached(source.inner)
    store.get("a")
    with store.transaction("mine"):
        store.set("a", (b"inside", {}))
        assert store.to_bytes("a") == b"inside"
    assert store.to_bytes("a") == b"inside"
    with pytest.raises(RuntimeError), store.transaction("fails"):
        store.set("a", (b"never", {}))
        raise RuntimeError
    assert store.to_bytes("a") == b"inside" == source.inner.to_bytes("a")
    assert store.cache.exists("a")


def test_read_only_source(source: Counting) -> None:
    class ReadOnly(AbstractReadOnlyStore):
        def get(self, key: str) -> Value:
            return source.get(key)

        def query(self, select: Any = None, **kwargs: Any) -> Any:
            return source.query(select, **kwargs)

    store = cached(ReadOnly())
    assert store.info()["readonly"] is True and store.info()["policy"] == "always"
    assert store.to_bytes("b") == b"b" * 100
    with pytest.raises(ReadOnlyStoreError):
        store.set("b", (b"", {}))


def test_source_events_are_forwarded_and_drop_copies(source: Counting) -> None:
    store = cached(source.inner, policy="immutable")
    seen: list[Any] = []
    store.event_manager.connect(StoreModificationEvent, seen.append)
    store.get("a")
    source.inner.set("a", (b"changed behind its back", {}))
    assert store.to_bytes("a") == b"changed behind its back"
    assert [(type(e).__name__, e.key, e.source) for e in seen] == [("StoreSetEvent", "a", store)]


def test_source_changes_drop_copies_with_nobody_listening(source: Counting) -> None:
    store = cached(source.inner, policy="immutable")
    assert store.to_bytes("a") == b"a" * 100
    source.inner.set("a", (b"changed in this process", {}))
    assert store.to_bytes("a") == b"changed in this process"


def test_a_copy_evicted_before_it_is_read_falls_back_to_the_source(source: Counting) -> None:
    class LazyCache(DictMemoryStore):
        def get(self, key: str) -> Value:
            value = super().get(key)
            return StreamValue(
                lambda: io.BytesIO(DictMemoryStore.to_bytes(self, key)),
                value.metadata,
                size=value.size,
                version=value.version,
            )

    store = CachedStore(source, LazyCache())
    store.connect()
    value = store.get("a")
    store.invalidate("a")
    with value.data as stream:
        assert stream.read() == b"a" * 100
    value = store.get("a")
    store.invalidate("a")
    source.inner.set("a", (b"moved on", {}))
    with pytest.raises(ConflictError):
        value.data  # noqa: B018 - the property raises


def test_a_fill_racing_a_write_never_installs_the_old_value(source: Counting) -> None:
    store = cached(source, policy="immutable")
    read_old, write_done = threading.Event(), threading.Event()
    original_get = source.get

    def slow_get(key: str) -> Value:
        value = original_get(key)
        if threading.current_thread().name == "filler":
            read_old.set()  # the fill has the old value in hand ...
            assert write_done.wait(5)  # ... and installs it only after the write
        return value

    source.get = slow_get  # type: ignore[method-assign]
    filler = threading.Thread(target=lambda: store.get("a"), name="filler")
    filler.start()
    assert read_old.wait(5)
    store.set("a", (b"new", {"name": "new"}))
    write_done.set()
    filler.join(5)
    assert store.to_bytes("a") == b"new"
    assert store.get_metadata("a") == {"name": "new"}


def test_threads_share_a_cached_store(source: Counting) -> None:
    store = cached(source, max_entries=3, touch_interval=0.0)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                name = "abcde"[(n + i) % 5]
                if i % 7 == 0:
                    store.set(name, (name.encode() * 100, {"name": name}))
                value = store.get(name)
                assert value.metadata == {"name": name}
                with value.data as stream:
                    assert stream.read() == name.encode() * 100
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors


_WORKER = textwrap.dedent(
    """
    import hashlib, random, sys
    from storekeeper.backends.sqlite import SqliteStore
    from storekeeper.composite import CachedStore

    source_path, cache_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    source = SqliteStore(source_path, durable=False)
    cache = SqliteStore(cache_path, durable=False)
    with CachedStore(source, cache, max_entries=8, touch_interval=0.0) as store:
        for i in range(150):
            key = f"k{rng.randrange(12)}"
            if rng.random() < 0.2:
                data = f"{key}-{seed}-{i}".encode() * rng.randrange(1, 50)
                store.set(key, (data, {"sha": hashlib.sha256(data).hexdigest()}))
            try:
                value = store.get(key)
            except KeyError:
                continue
            with value.data as stream:
                data = stream.read()
            assert hashlib.sha256(data).hexdigest() == value.metadata["sha"], key
    """
)


def test_processes_share_one_cache_store(tmp_path: Path) -> None:
    source_path, cache_path = tmp_path / "source.db", tmp_path / "cache.db"
    with SqliteStore(source_path) as source, SqliteStore(cache_path):
        source.set("k0", (b"seed", {"sha": __import__("hashlib").sha256(b"seed").hexdigest()}))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(source_path), str(cache_path), str(seed)],
            stderr=subprocess.PIPE,
        )
        for seed in range(3)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr.decode()
    with CachedStore(SqliteStore(source_path), SqliteStore(cache_path)) as store:
        assert len(store.cache.query_keys()) <= 8
        for key in store.query_keys():
            assert store.to_bytes(key) == store.source.to_bytes(key)


_FILLERS, _FILLS, _VALUE = 4, 10, 100
_DEFAULT_SIZE = 256 * 1024 * 1024
# bound -> (max_size, max_entries): each bound is four fillers' ten keys halved.
_BOUNDS: dict[str, tuple[int, int | None]] = {"entries": (_DEFAULT_SIZE, 20), "bytes": (2000, None)}


def _fill_distinct_keys(
    source_path: str,
    cache_path: str,
    bound: str,
    n: int,
    looked: multiprocessing.synchronize.Barrier,
) -> None:
    source = SqliteStore(source_path, durable=False)
    cache = SqliteStore(cache_path, durable=False)
    max_size, max_entries = _BOUNDS[bound]
    with CachedStore(source, cache, max_size=max_size, max_entries=max_entries) as store:
        store.get(f"p{n}-0")
        # Every filler has looked at the cache before any fills more, so no look but the
        # periodic ones can see the other fillers' copies.
        looked.wait(60)
        for i in range(1, _FILLS):
            store.get(f"p{n}-{i}")


@pytest.mark.parametrize("bound", _BOUNDS)
def test_processes_filling_one_cache_keep_its_bound(tmp_path: Path, bound: str) -> None:
    source_path, cache_path = str(tmp_path / "source.db"), str(tmp_path / "cache.db")
    with SqliteStore(source_path) as source, SqliteStore(cache_path):
        keys = [f"p{n}-{i}" for n in range(_FILLERS) for i in range(_FILLS)]
        source.multiset(keys, [(b"x" * _VALUE, {}) for _ in keys])
    context = multiprocessing.get_context("spawn")
    looked = context.Barrier(_FILLERS)
    fillers = [
        context.Process(
            target=_fill_distinct_keys, args=(source_path, cache_path, bound, n, looked)
        )
        for n in range(_FILLERS)
    ]
    for filler in fillers:
        filler.start()
    for filler in fillers:
        filler.join(60)
        assert filler.exitcode == 0
    with SqliteStore(cache_path) as cache:
        copies = cache.query_keys()
        held = sum(cache.get(key).size or 0 for key in copies)
    # The documented bound: one step (1/20 of the bound, and at least one key, or plus one
    # value) past it per process.
    max_size, max_entries = _BOUNDS[bound]
    assert held <= max_size + _FILLERS * (max_size // 20 + _VALUE)
    if max_entries is not None:
        assert len(copies) <= max_entries + _FILLERS * max(1, max_entries // 20)


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
def test_reads_never_wait_for_a_writer_holding_the_cache(tmp_path: Path, kind: str) -> None:
    source, cache = child(kind, tmp_path, "source"), child(kind, tmp_path, "cache")
    store = CachedStore(source, cache, event_manager=EventManager())  # type: ignore[arg-type]
    store.connect()
    store.set("a", (b"one", {"n": 1}))
    store.set("b", (b"two", {"n": 2}))
    assert store.to_bytes("a") == b"one"  # a copy of "a" is cached
    holding, release = threading.Event(), threading.Event()

    def hold_the_cache() -> None:  # a writer stuck inside a cache write (a frozen process)
        with cache.transaction():
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_cache)
    holder.start()
    answers: list[object] = []

    def read() -> None:
        answers.append((store.get_metadata("b"), store.to_bytes("b"), store.to_bytes("a")))

    try:
        assert holding.wait(60)
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(60)
    finally:
        release.set()
        holder.join(60)
    assert answers == [({"n": 2}, b"two", b"one")]  # answered, from the source and the copy
    assert not cache.exists("b")  # nothing was filled while the cache was busy
    assert store.to_bytes("b") == b"two"
    assert cache.exists("b")  # filled once the cache is free
    store.disconnect()
