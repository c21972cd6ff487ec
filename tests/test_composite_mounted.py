"""MountedStore: conformance over memory, filesystem and SQLite children, and its own rules."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.composite import MountedStore
from storekeeper.composite._overlay import WHITEOUT
from storekeeper.errors import InvalidMetadataError, KeyNotFoundError, ReadOnlyStoreError
from storekeeper.events import EventManager
from storekeeper.store import (
    AbstractReadOnlyStore,
    AbstractStore,
    BytesValue,
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreProgressStepEvent,
    StoreSetEvent,
    StoreUpdateEvent,
    Value,
)
from storekeeper.testing.children import KINDS, child
from storekeeper.testing.crossprocess import Opener, same_store
from storekeeper.testing.store import StoreTests


class _MountedConformance(StoreTests):
    """Mounted over the whole key space (``mount_point=''``), an empty backing store below."""

    kind = "memory"

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> MountedStore:
        mount, backing = child(self.kind, tmp_path, "mount"), child(self.kind, tmp_path, "back")
        return MountedStore("", mount, backing, event_manager=event_manager)

    def reopen_store(self, tmp_path: Path, event_manager: EventManager) -> MountedStore:
        return self.create_store(tmp_path, event_manager)

    def process_opener(self, tmp_path: Path) -> Opener | None:
        return None if self.kind == "memory" else same_store(self, tmp_path)

    # Raw access through the children: written to the backing store below, read from
    # the mounted store that takes the writes.
    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, MountedStore)
        backing = store.backing_store
        assert isinstance(backing, AbstractStore)
        backing.set(key, (data, metadata))

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, MountedStore)
        mount = store.mount_store
        return mount.to_bytes(key), mount.get_metadata(key)


class TestMountedOverMemory(_MountedConformance):
    kind = "memory"


class TestMountedOverFiles(_MountedConformance):
    kind = "file"
    listing_streams = False


class TestMountedOverSqlite(_MountedConformance):
    kind = "sqlite"


# -- the mounted store's own rules ------------------------------------------------------------
@pytest.fixture(params=KINDS)
def parts(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[AbstractStore, AbstractStore]:
    mount, backing = child(request.param, tmp_path, "mount"), child(request.param, tmp_path, "back")
    mount.connect()
    backing.connect()
    backing.set("remote/a", (b"remote a", {"t": "yes", "side": "backing"}))
    backing.set("remote/b", (b"remote b", {"t": "yes"}))
    backing.set("elsewhere", (b"outside", {"t": "yes"}))
    return mount, backing


@pytest.fixture
def mounted(parts: tuple[AbstractStore, AbstractStore]) -> Any:
    store = MountedStore("remote/", *parts, event_manager=EventManager())
    store.connect()
    yield store
    store.disconnect()


def test_mount_store_appears_under_the_mount_point(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    mount, _ = parts
    mount.set("a", (b"local a", {"side": "mount"}))
    mount.set("c", (b"local c", {}))
    assert mounted.to_bytes("remote/a") == b"local a"
    assert mounted.to_bytes("remote/b") == b"remote b"
    assert mounted.to_bytes("remote/c") == b"local c"
    assert mounted.to_bytes("elsewhere") == b"outside"
    assert sorted(mounted.query_keys()) == ["elsewhere", "remote/a", "remote/b", "remote/c"]
    assert not mounted.exists("a")  # mount keys exist only under the mount point


def test_writes_outside_the_mount_point_are_refused(mounted: MountedStore) -> None:
    calls = [
        ("elsewhere", lambda: mounted.set("elsewhere", (b"x", {}))),
        ("new", lambda: mounted.set("new", (b"x", {}))),
        ("remote/", lambda: mounted.set("remote/", (b"x", {}))),
        ("elsewhere", lambda: mounted.set_data("elsewhere", b"x")),
        ("elsewhere", lambda: mounted.set_metadata("elsewhere", {})),
        ("elsewhere", lambda: mounted.update_metadata("elsewhere", {})),
        ("elsewhere", lambda: mounted.delete("elsewhere")),
    ]
    for key, call in calls:
        with pytest.raises(ReadOnlyStoreError, match=re.escape(repr(key))):
            call()
    assert mounted.to_bytes("elsewhere") == b"outside"


def test_progress_events_are_in_the_mounted_key_space(mounted: MountedStore) -> None:
    steps: list[Any] = []
    mounted.event_manager.connect(StoreProgressStepEvent, steps.append)
    mounted.set("remote/big", (io.BytesIO(b"x" * 100), {}), buffer_size=40)
    assert [event.step for event in steps] == [40, 80, 100]
    assert {(event.source, event.key) for event in steps} == {(mounted, "remote/big")}


def test_the_whiteout_name_is_refused_in_metadata(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    mounted.set("remote/mine", (b"mine", {"a": 1}))
    reserved = {WHITEOUT: True}
    for write in (
        lambda: mounted.set("remote/mine", (b"", reserved)),
        lambda: mounted.set("remote/new", [b"", reserved]),
        lambda: mounted.set("remote/new", BytesValue(b"", reserved)),
        lambda: mounted.set_metadata("remote/mine", reserved),
        lambda: mounted.update_metadata("remote/a", reserved),
        lambda: mounted.multiset(["remote/x", "remote/mine"], [(b"", {}), (b"", reserved)]),
    ):
        with pytest.raises(InvalidMetadataError, match="reserved"):
            write()
    assert (mounted.to_bytes("remote/mine"), mounted.get_metadata("remote/mine")) == (
        b"mine",
        {"a": 1},
    )
    assert not mounted.exists("remote/new")
    assert mounted.get_metadata("remote/a") == {"t": "yes", "side": "backing"}
    assert parts[0].query_keys() == ["mine"]  # the multiset rolled back as a whole


def test_writes_under_the_mount_point_go_to_the_mount_store(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    mount, backing = parts
    mounted.set("remote/new", (b"n", {}))
    mounted.set_data("remote/a", b"patched")
    assert mount.to_bytes("new") == b"n"
    assert mount.get_metadata("a") == {"t": "yes", "side": "backing"}  # copied on write
    assert backing.to_bytes("remote/a") == b"remote a"
    assert not backing.exists("remote/new")


def test_delete_of_a_backing_key_sticks(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    _, backing = parts
    mounted.set_data("remote/a", b"local")
    mounted.delete("remote/a")  # the overlay and the backing copy both disappear
    mounted.delete("remote/b")  # only in the backing store: no KeyError any more
    assert not mounted.exists("remote/a") and not mounted.exists("remote/b")
    assert sorted(mounted.query_keys()) == ["elsewhere"]
    assert backing.exists("remote/a") and backing.exists("remote/b")


def test_queries_never_leak_shadowed_backing_entries(mounted: MountedStore) -> None:
    mounted.update_metadata("remote/a", {"t": "no"})
    assert sorted(mounted.query_keys(t="yes")) == ["elsewhere", "remote/b"]
    assert mounted.query_keys(side="backing") == ["remote/a"]  # from the overlay copy
    assert dict(mounted.query(select=["t"]))["remote/a"] == {"t": "no"}


def test_push_moves_a_key_into_the_backing_store(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    mount, backing = parts
    mounted.set("remote/a", (b"edited", {"v": 2}))
    mounted.set("remote/new", (b"fresh", {"v": 1}))
    mounted.delete("remote/b")
    for key in ("remote/a", "remote/new", "remote/b"):
        mounted.push(key)
    assert mount.query_keys() == []
    assert (backing.to_bytes("remote/a"), backing.get_metadata("remote/a")) == (
        b"edited",
        {"v": 2},
    )
    assert backing.to_bytes("remote/new") == b"fresh"
    assert not backing.exists("remote/b")
    assert mounted.to_bytes("remote/a") == b"edited"
    assert sorted(mounted.query_keys()) == ["elsewhere", "remote/a", "remote/new"]
    with pytest.raises(KeyNotFoundError):
        mounted.push("remote/a")  # nothing left in the mount store
    with pytest.raises(KeyNotFoundError):
        mounted.push("elsewhere")


def test_failed_push_changes_nothing(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    mount, backing = parts
    mounted.set("remote/a", (b"edited", {}))
    with pytest.raises(RuntimeError), mounted.transaction("push then fail"):
        mounted.push("remote/a")
        raise RuntimeError("abort")
    assert mount.to_bytes("a") == b"edited"
    assert backing.to_bytes("remote/a") == b"remote a"


class _ReadOnlyView(AbstractReadOnlyStore):
    """A read-only store showing what *inner* holds."""

    def __init__(self, inner: DictMemoryStore) -> None:
        super().__init__()
        self.inner = inner

    def connect(self, credentials: Any = None) -> None:
        self.inner.connect()
        super().connect()

    def get(self, key: str) -> Value:
        return self.inner.get(key)

    def query(self, select: Any = None, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
        return self.inner.query(select, **kwargs)


def test_push_into_a_read_only_backing_store_is_refused() -> None:
    with MountedStore("m/", DictMemoryStore(), _ReadOnlyView(DictMemoryStore())) as mounted:
        mounted.set("m/k", (b"x", {}))
        with pytest.raises(ReadOnlyStoreError):
            mounted.push("m/k")
        assert mounted.to_bytes("m/k") == b"x"


def test_info_names_the_mount_point(mounted: MountedStore) -> None:
    info = mounted.info()
    assert info["mount_point"] == "remote/" and info["readonly"] is False
    assert [part["type"] for part in info["children"]] == [
        type(mounted.mount_store).__name__,
        type(mounted.backing_store).__name__,
    ]


def test_events_are_in_the_mounted_key_space(
    mounted: MountedStore, parts: tuple[AbstractStore, AbstractStore]
) -> None:
    mount, backing = parts
    seen: list[Any] = []
    mounted.event_manager.connect(StoreModificationEvent, seen.append)
    mounted.set("remote/a", (b"1", {}))  # existed in the backing store: a set all the same
    mount.set("direct", (b"2", {}))  # written around the composite
    backing.set("remote/a", (b"shadowed", {}))  # hidden by the overlay: no event
    backing.set("elsewhere", (b"3", {}))
    mounted.update_metadata("remote/direct", {"m": 1})
    mounted.delete("remote/a")
    assert [(type(e), e.key) for e in seen] == [
        (StoreSetEvent, "remote/a"),
        (StoreSetEvent, "remote/direct"),
        (StoreSetEvent, "elsewhere"),
        (StoreUpdateEvent, "remote/direct"),
        (StoreDeleteEvent, "remote/a"),
    ]
    assert all(event.source is mounted for event in seen)


def test_threads_write_and_push_concurrently(mounted: MountedStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                key = f"remote/t{n}-{i}"
                mounted.set(key, (key.encode(), {}))
                mounted.push(key)
                assert mounted.to_bytes(key) == key.encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert mounted.mount_store.query_keys() == []
    assert len(mounted.glob("remote/t*")) == 40


class _FailingCommit(DictMemoryStore):
    """A memory store whose next transaction commit fails (after rolling itself back)."""

    fail_next = False

    def _commit_transaction(self) -> None:
        if self.fail_next:
            self.fail_next = False
            self._rollback_transaction()
            raise OSError("commit failed")
        super()._commit_transaction()


def test_a_failed_commit_rolls_back_the_other_children() -> None:
    mount, backing = DictMemoryStore(), _FailingCommit()
    with MountedStore("m/", mount, backing) as mounted:
        mounted.set("m/k", (b"local", {}))
        backing.fail_next = True
        with pytest.raises(OSError, match="commit failed"):
            mounted.push("m/k")
        assert mount.to_bytes("k") == b"local"  # the mount store was rolled back too
        assert not backing.exists("m/k")
        mounted.push("m/k")
        assert backing.to_bytes("m/k") == b"local" and not mount.exists("k")
