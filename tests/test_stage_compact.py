"""Compaction: copies folded into a snapshot, old tombstones dropped, stale copies harmless."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storekeeper import DictMemoryStore, FileSystemStore, init_shared_store
from storekeeper.stage import Entry, Feed, Session, Stage
from storekeeper.stage.codec import decode_document
from storekeeper.stage.session import HybridClock
from storekeeper.store.abstract import AbstractStore

_BASE = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    made: AbstractStore
    if request.param == "memory":
        made = DictMemoryStore()
    else:
        init_shared_store(tmp_path / "fs")
        made = FileSystemStore(tmp_path / "fs", durable=False)
    with made:
        yield made


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = _BASE

    def __call__(self) -> datetime:
        return self.now


def _stage(store: AbstractStore, name: str, clock: Clock) -> Stage:
    session = Session(name)
    session.clock = HybridClock(clock)
    return Stage(session, store)


def _feed_keys(store: AbstractStore) -> list[str]:
    return sorted(store.list_keys("feeds/f/"))


def _setup(store: AbstractStore, clock: Clock, prefix: str) -> tuple[Stage, Stage]:
    a, b = _stage(store, f"{prefix}-a", clock), _stage(store, f"{prefix}-b", clock)
    with a:
        feed = Feed(id="f", title="t")
        feed.entries["e1"] = Entry(title="one")
        feed.entries["e2"] = Entry(title="two")
        a.feeds["f"] = feed
    clock.now += timedelta(seconds=1)
    with b:
        feed = b.feeds["f"]
        feed.entries["e2"].read = True
        b.feeds["f"] = feed
    return a, b


def test_compaction_folds_every_copy_into_one_snapshot(store: AbstractStore) -> None:
    clock = Clock()
    a, b = _setup(store, clock, "fold")
    with a:
        before = a.feeds["f"]
    assert _feed_keys(store) == ["feeds/f/fold-a.json", "feeds/f/fold-b.json"]
    assert a.compact() == 1
    assert _feed_keys(store) == ["feeds/f/@snapshot.json"]
    for stage in (a, b):
        with stage:
            assert stage.feeds["f"] == before
            assert list(stage.feeds) == ["f"]
    assert a.compact() == 0  # nothing left to fold
    clock.now += timedelta(seconds=1)
    with b:
        feed = b.feeds["f"]
        feed.title = "after"
        b.feeds["f"] = feed
    assert _feed_keys(store) == ["feeds/f/@snapshot.json", "feeds/f/fold-b.json"]
    with a:
        assert a.feeds["f"].title == "after"
        assert a.feeds["f"].entries["e2"].read


def _delete_e1(b: Stage, clock: Clock) -> None:
    clock.now += timedelta(seconds=1)
    with b:
        feed = b.feeds["f"]
        del feed.entries["e1"]
        b.feeds["f"] = feed


def test_old_tombstones_are_dropped_and_stale_copies_cannot_resurrect(
    store: AbstractStore,
) -> None:
    clock = Clock()
    a, b = _setup(store, clock, "gc")
    stale = store.get("feeds/f/gc-a.json")  # a device's copy from before the delete
    stale_body, stale_meta = stale.data.read(), stale.metadata
    _delete_e1(b, clock)
    clock.now += timedelta(days=40)  # nobody touched the stage within the retention
    assert a.compact(retention=timedelta(days=30)) == 1
    snapshot = store.get("feeds/f/@snapshot.json")
    state = decode_document(Feed, snapshot.data.read(), snapshot.metadata)
    assert sorted(state.state["entries"]) == ["e2"]  # the tombstone of e1 is gone
    assert state.floor is not None
    # The device comes back and syncs its old file into the shared folder.
    store.set("feeds/f/gc-a.json", (stale_body, stale_meta))
    for stage in (a, b):
        with stage:
            assert list(stage.feeds["f"].entries) == ["e2"]
    # ...and its next edit, stamped after what it reads, is kept.
    with a:
        feed = a.feeds["f"]
        feed.entries["e3"] = Entry(title="three")
        feed.entries["e2"].starred = True
        a.feeds["f"] = feed
    with b:
        entries = b.feeds["f"].entries
        assert list(entries) == ["e2", "e3"]
        assert entries["e2"].starred and entries["e2"].read


def test_a_live_session_that_has_not_seen_a_delete_keeps_its_tombstone(
    store: AbstractStore,
) -> None:
    clock = Clock()
    a, b = _setup(store, clock, "live")
    _delete_e1(b, clock)
    clock.now += timedelta(days=40)
    with a:
        a.touch()  # a is live, and its copy is older than the delete
    assert a.compact(retention=timedelta(days=30)) == 1
    snapshot = store.get("feeds/f/@snapshot.json")
    state = decode_document(Feed, snapshot.data.read(), snapshot.metadata)
    assert sorted(state.state["entries"]) == ["e1", "e2"]  # e1 still as a tombstone
    with a:
        assert list(a.feeds["f"].entries) == ["e2"]


def test_recent_tombstones_are_kept(store: AbstractStore) -> None:
    clock = Clock()
    a, b = _setup(store, clock, "recent")
    _delete_e1(b, clock)
    assert a.compact(retention=timedelta(days=30)) == 1
    snapshot = store.get("feeds/f/@snapshot.json")
    state = decode_document(Feed, snapshot.data.read(), snapshot.metadata)
    assert "e1" in state.state["entries"]


def test_compaction_covers_flat_routes_and_deleted_documents(store: AbstractStore) -> None:
    clock = Clock()
    a, b = _setup(store, clock, "flat")
    from storekeeper.stage import Subscription, SubscriptionList

    with a:
        subs = SubscriptionList()
        subs.subscriptions["f"] = Subscription(title="F")
        a.subscriptions = subs
    with b:
        del b.feeds["f"]
    assert a.compact() == 2
    assert sorted(store.list_keys("subscriptions.")) == ["subscriptions.@snapshot.json"]
    with b:
        assert list(b.feeds) == []
        assert b.subscriptions is not None
        assert b.subscriptions.subscriptions["f"].title == "F"
