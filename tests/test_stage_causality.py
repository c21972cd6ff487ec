"""Causality promises of the stage under skewed clocks and compaction.

- Whatever reveals a document to the user (``in``, ``len``, iteration, ``[]``) moves the
  session's clock past it, so an edit made afterwards wins over what was seen.
- A new document assigned over a deleted one is seen by its own transaction and wins
  over every delete already in the store, however slow the assigning clock is.
- A compaction never puts its floor past what it saw written, so an edit that reaches
  the store after it is not superseded because the compacting clock runs ahead.
- A transaction that stays open across a compaction whose floor passes its edits fails
  loudly at commit and writes nothing, rather than committing edits the snapshot hides.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storekeeper import DictMemoryStore
from storekeeper.stage import (
    BaseStage,
    HybridClock,
    MergeableDocument,
    Route,
    Session,
    TransactionError,
)
from storekeeper.store.abstract import AbstractStore

T0 = datetime(2026, 5, 1, tzinfo=UTC)
_counter = iter(range(1_000_000))


class Doc(MergeableDocument):
    title: str = ""
    body: str = ""


class S(BaseStage):
    docs = Route(Doc, ["docs", "{0}", "{1}", "{session.identifier}.json"])
    one = Route(Doc, ["one", "{session.identifier}.json"])


class Wall:
    """A wall clock the test moves by hand, with a fixed skew."""

    def __init__(self, skew: timedelta = timedelta(0)) -> None:
        self.t = T0
        self.skew = skew

    def __call__(self) -> datetime:
        return self.t + self.skew


def stage(store: AbstractStore, name: str, wall: Callable[[], datetime]) -> S:
    session = Session(f"{name}-causality-{next(_counter)}")
    session.clock = HybridClock(wall=wall)
    return S(session, store)


def memory() -> DictMemoryStore:
    store = DictMemoryStore()
    store.connect()
    return store


def versions(store: AbstractStore) -> dict[str, Any]:
    return {key: info.version for key, info in store.list_info("")}


def deleted_by_fast_clock(store: AbstractStore) -> tuple[S, S]:
    """``slow`` (2 h behind) wrote docs/x/y, ``fast`` (2 h ahead) deleted it."""
    fast = stage(store, "fast", Wall(timedelta(hours=2)))
    slow = stage(store, "slow", Wall(-timedelta(hours=2)))
    with slow:
        slow.docs["x"]["y"] = Doc(title="orig")
        slow.docs["w"]["v"] = Doc(title="other")
    with fast:
        del fast.docs["x"]["y"]
    return fast, slow


def see_delete(slow: S, how: str) -> None:
    if how == "len":
        assert len(slow.docs["x"]) == 0
    elif how == "top-level in":
        assert "x" not in slow.docs
    else:
        assert list(slow.docs) == ["w"]


@pytest.mark.parametrize("how", ["len", "top-level in", "top-level iteration"])
def test_readd_after_seeing_the_delete_wins(how: str) -> None:
    store = memory()
    fast, slow = deleted_by_fast_clock(store)
    with slow:
        see_delete(slow, how)
        slow.docs["x"]["y"] = Doc(title="readded")
    other = S(Session(f"reader-causality-{next(_counter)}"), store)
    for st in (fast, slow, other):
        with st:
            assert list(st.docs["x"]) == ["y"]
            assert st.docs["x"]["y"].title == "readded"


def test_readd_without_reading_is_seen_by_its_transaction_and_wins() -> None:
    store = memory()
    fast, slow = deleted_by_fast_clock(store)
    with slow:  # no read before the assignment
        slow.docs["x"]["y"] = Doc(title="readded", body="b")
        assert list(slow.docs["x"]) == ["y"]
        assert len(slow.docs["x"]) == 1 and "y" in slow.docs["x"]
        assert list(slow.docs) == ["w", "x"]
        assert slow.docs["x"]["y"].title == "readded"
    with fast:
        assert list(fast.docs["x"]) == ["y"]
        assert fast.docs["x"]["y"].body == "b"


def test_attribute_route_readd_without_reading_wins() -> None:
    store = memory()
    fast = stage(store, "fast", Wall(timedelta(hours=3)))
    slow = stage(store, "slow", Wall(-timedelta(hours=3)))
    with fast:
        fast.one = Doc(title="fast")
    with slow:
        slow.one = Doc(title="slow, assigned after fast's")
        assert slow.one is not None and slow.one.title == "slow, assigned after fast's"
    with fast:
        assert fast.one is not None and fast.one.title == "slow, assigned after fast's"


def _copy_key(store: AbstractStore, source: AbstractStore, key: str) -> None:
    value = source.get(key)
    with value.data as stream:
        body = stream.read()
    store.set(key, (body, dict(value.metadata)))


def test_compactor_clock_ahead_does_not_supersede_a_copy_synced_later() -> None:
    """An offline device edits after the newest write the compaction saw; its copy
    arrives after the compaction, whose clock runs 40 days ahead: the edit survives."""
    wall = Wall()
    shared, offline = memory(), memory()
    a = stage(shared, "a", wall)
    with a:
        a.one = Doc(title="a", body="a body")
    device = stage(offline, "device", wall)
    _copy_key(offline, shared, f"one/{a.session.identifier}.json")
    wall.t += timedelta(hours=1)
    with device:
        d = device.one
        assert d is not None
        d.body = "edited offline"
        device.one = d
    compactor = stage(shared, "compactor", Wall(timedelta(days=40)))
    assert compactor.compact(retention=timedelta(days=30)) == 1
    wall.t += timedelta(hours=1)
    _copy_key(shared, offline, f"one/{device.session.identifier}.json")
    for st in (a, compactor):
        with st:
            got = st.one
            assert got is not None
            assert (got.title, got.body) == ("a", "edited offline")


def test_commit_past_a_newer_compaction_floor_fails_loudly_and_writes_nothing() -> None:
    wall = Wall()
    store = memory()
    a, b, x = (stage(store, name, wall) for name in ("a", "b", "x"))
    with a:
        a.one = Doc(title="a")
    with pytest.raises(TransactionError, match="compaction"):
        with x:
            d = x.one
            assert d is not None
            d.title = "x, assigned long before its commit"
            x.one = d
            wall.t += timedelta(minutes=1)  # the transaction stays open...
            with b:
                got = b.one
                assert got is not None
                got.body = "b"
                b.one = got
            # ...across a compaction with a retention shorter than that
            assert a.compact(retention=timedelta(seconds=10)) == 1
            before = versions(store)
    assert versions(store) == before  # nothing of x's commit was written
    with x:  # redone in a new transaction, the edit is kept
        d = x.one
        assert d is not None and d.title == "a"
        d.title = "x, redone"
        x.one = d
    with a:
        got = a.one
        assert got is not None and (got.title, got.body) == ("x, redone", "b")
