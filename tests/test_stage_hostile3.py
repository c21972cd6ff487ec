"""Hostile tests of storekeeper.stage: clock-advancing reads, compaction floors, commits
refused across a compaction, read-only transactions (written from the docs only)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storekeeper import (
    DictMemoryStore,
    EventManager,
    FileSystemStore,
    SqliteStore,
    init_shared_store,
)
from storekeeper.stage import (
    BaseStage,
    Element,
    Entities,
    Entry,
    Feed,
    HybridClock,
    MergeableDocument,
    Route,
    Session,
    Stage,
    TransactionError,
    entities,
)
from storekeeper.store import StoreModificationEvent

BASE = datetime(2026, 1, 1, tzinfo=UTC)
_counter = [0]


class Wall:
    """An injectable wall clock: ``t`` plus a fixed skew."""

    def __init__(self, skew: timedelta) -> None:
        self.t = BASE
        self.skew = skew

    def __call__(self) -> datetime:
        return self.t + self.skew


def fresh(name: str, skew: timedelta = timedelta(0)) -> tuple[Session, Wall]:
    _counter[0] += 1
    session = Session(f"h3-{name}-{os.getpid()}-{_counter[0]}")
    wall = Wall(skew)
    session.clock = HybridClock(wall=wall)  # type: ignore[misc]
    return session, wall


class Item(Element):
    id: str
    text: str = ""


class Doc(MergeableDocument):
    title: str = ""
    items: Entities[Item] = entities(key="id")


class DeepStage(BaseStage):
    docs = Route(Doc, ["docs", "{0}", "{1}", "{session.identifier}.json"])


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.manager = EventManager()
        self.manager.connect(StoreModificationEvent, self._on, priority=10)

    def _on(self, event: Any) -> None:
        self.events.append((event.action, event.key))


def raw(store: Any) -> dict[str, tuple[bytes, str]]:
    """Every key's bytes and version, through the store API."""
    out: dict[str, tuple[bytes, str]] = {}
    for key, info in store.list_info(""):
        value = store.get(key)
        with value.data as stream:
            out[key] = (stream.read(), repr(info.version))
    return out


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture(params=["memory", "sqlite", "folder"])
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[Recorder | None], Any]]:
    opened: list[Any] = []

    def make(rec: Recorder | None = None) -> Any:
        em = rec.manager if rec else None
        if request.param == "memory":
            assert not opened, "memory stores cannot be reopened"
            s: Any = DictMemoryStore(event_manager=em)
        elif request.param == "sqlite":
            s = SqliteStore(tmp_path / "s.db", durable=False, event_manager=em)
        else:
            init_shared_store(tmp_path / "f")
            s = FileSystemStore(tmp_path / "f", durable=False, event_manager=em)
        s.connect()
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.disconnect()


# --- (a) reads advance the clock; re-add after a seen delete wins ------------------


def test_entity_readd_after_seen_delete_wins_writer_far_behind(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    store = store_factory(None)
    sa, _ = fresh("a", -timedelta(days=3))
    sb, _ = fresh("b", timedelta(days=3))
    a, b = Stage(sa, store), Stage(sb, store)
    with a:
        f = Feed(id="k", title="t")
        f.entries["e1"] = Entry(title="one")
        a.feeds["k"] = f
    with b:
        f = b.feeds["k"]
        del f.entries["e1"]
        b.feeds["k"] = f
    with a:
        f = a.feeds["k"]
        assert "e1" not in f.entries
        f.entries["e1"] = Entry(title="again")
        a.feeds["k"] = f
        assert a.feeds["k"].entries["e1"].title == "again"
    with b:
        assert b.feeds["k"].entries["e1"].title == "again"


def test_new_document_readd_after_unseen_delete_wins_and_is_visible(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    store = store_factory(None)
    sa, _ = fresh("a", -timedelta(days=3))
    sb, _ = fresh("b", timedelta(days=3))
    a, b = Stage(sa, store), Stage(sb, store)
    with a:
        a.feeds["k"] = Feed(id="k", title="first")
    with b:
        del b.feeds["k"]
    with a:
        a.feeds["k"] = Feed(id="k", title="readd")
        assert "k" in a.feeds and a.feeds["k"].title == "readd"
    with b:
        assert list(b.feeds) == ["k"]
        assert b.feeds["k"].title == "readd"


@pytest.mark.parametrize("probe", ["none", "in", "len", "iter", "top-in", "top-len", "top-iter"])
def test_nested_directory_probe_advances_clock(probe: str) -> None:
    # B (clock ahead) edits doc y then deletes doc x. A (clock far behind), holding an
    # older read of y, only probes the directory level where x was deleted, then edits
    # y: causally after B's edit of y, so A's title must win. Without the probe
    # ("none") A's edit is concurrent and B's later clock wins: the probe matters.
    store = DictMemoryStore()
    store.connect()
    sa, _ = fresh("a", -timedelta(days=3))
    sb, _ = fresh("b", timedelta(days=3))
    a, b = DeepStage(sa, store), DeepStage(sb, store)
    with b:
        b.docs["p"]["x"] = Doc(title="x")
    with a:
        y = Doc(title="a0")
        a.docs["q"]["y"] = y
    with a:
        held = a.docs["q"]["y"]
    with b:
        yb = b.docs["q"]["y"]
        yb.title = "b"
        b.docs["q"]["y"] = yb
        del b.docs["p"]["x"]
    with a:
        if probe == "in":
            assert "x" not in a.docs["p"]
        elif probe == "len":
            assert len(a.docs["p"]) == 0
        elif probe == "iter":
            assert list(a.docs["p"]) == []
        elif probe == "none":
            pass
        elif probe == "top-in":
            assert "p" not in a.docs
        elif probe == "top-len":
            assert len(a.docs) == 1
        else:
            assert list(a.docs) == ["q"]
        held.title = "a-after-seeing-delete"
        a.docs["q"]["y"] = held
    expected = "b" if probe == "none" else "a-after-seeing-delete"
    for st in (a, b):
        with st:
            assert st.docs["q"]["y"].title == expected


def test_clock_jumping_backwards_keeps_later_edit(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    store = store_factory(None)
    sa, wa = fresh("a")
    a = Stage(sa, store)
    with a:
        a.feeds["k"] = Feed(id="k", title="one")
    wa.t = BASE - timedelta(days=365)
    with a:
        f = a.feeds["k"]
        f.title = "two"
        a.feeds["k"] = f
    sb, _ = fresh("b")
    b = Stage(sb, store)
    with b:
        assert b.feeds["k"].title == "two"


# --- (b) compaction floor with skewed compactor ----------------------------------


@pytest.mark.parametrize("compactor_skew", [timedelta(days=40), -timedelta(days=40)])
def test_compaction_with_skewed_compactor_keeps_acknowledged_edits(
    store_factory: Callable[[Recorder | None], Any], compactor_skew: timedelta
) -> None:
    store = store_factory(None)
    sa, _ = fresh("a", -timedelta(hours=6))
    sb, _ = fresh("b", timedelta(hours=6))
    sc, _ = fresh("c", compactor_skew)
    a, b, c = Stage(sa, store), Stage(sb, store), Stage(sc, store)
    with a:
        f = Feed(id="k", title="t")
        f.entries["keep"] = Entry(title="keep")
        f.entries["gone"] = Entry(title="gone")
        a.feeds["k"] = f
    with b:
        f = b.feeds["k"]
        del f.entries["gone"]
        f.entries["keep"].read = True
        b.feeds["k"] = f
    c.compact(retention=timedelta(days=1))
    # A (behind) edits after compaction, without a fresh re-read of its own clock
    with a:
        f = a.feeds["k"]
        f.title = "a-after"
        f.entries["new"] = Entry(title="new")
        a.feeds["k"] = f
    c.compact(retention=timedelta(days=1))
    sd, _ = fresh("d")
    d = Stage(sd, store)
    with d:
        f = d.feeds["k"]
        assert f.title == "a-after"
        assert sorted(f.entries) == ["keep", "new"]
        assert f.entries["keep"].read is True


def test_compacting_twice_writes_nothing_second_time(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    rec = Recorder()
    store = store_factory(rec)
    sa, _ = fresh("a", timedelta(days=2))
    sb, _ = fresh("b", -timedelta(days=2))
    sc, _ = fresh("c", timedelta(days=40))
    a, b, c = Stage(sa, store), Stage(sb, store), Stage(sc, store)
    with a:
        f = Feed(id="k", title="t")
        f.entries["x"] = Entry(title="x")
        a.feeds["k"] = f
        a.feeds["k2"] = Feed(id="k2")
    with b:
        f = b.feeds["k"]
        del f.entries["x"]
        b.feeds["k"] = f
        del b.feeds["k2"]
    assert c.compact(retention=timedelta(days=1)) >= 1
    before = raw(store)
    rec.events.clear()
    assert c.compact(retention=timedelta(days=1)) == 0
    assert rec.events == []
    assert raw(store) == before


# --- (c) snapshot-only documents are compacted again --------------------------------


def test_snapshot_only_document_recompacted_when_tombstones_old(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    rec = Recorder()
    store = store_factory(rec)
    sa, wa = fresh("a")
    sc, wc = fresh("c")
    a, c = Stage(sa, store), Stage(sc, store)
    with a:
        f = Feed(id="k", title="t")
        f.entries["zz-tombstoned-entry"] = Entry(title="x")
        a.feeds["k"] = f
    wa.t = BASE + timedelta(minutes=1)
    with a:
        f = a.feeds["k"]
        del f.entries["zz-tombstoned-entry"]
        a.feeds["k"] = f
    wc.t = BASE + timedelta(minutes=2)
    assert c.compact(retention=timedelta(hours=1)) == 1
    snap = raw(store)
    assert [k for k in snap if k.startswith("feeds/")] == ["feeds/k/@snapshot.json"] or all(
        "@snapshot" in k for k in snap if k.startswith("feeds/")
    )
    assert any(b"zz-tombstoned-entry" in v[0] for v in snap.values())
    rec.events.clear()
    assert c.compact(retention=timedelta(hours=1)) == 0
    assert rec.events == []
    wc.t = BASE + timedelta(days=3)
    assert c.compact(retention=timedelta(hours=1)) == 1
    assert rec.events
    after = raw(store)
    assert not any(b"zz-tombstoned-entry" in v[0] for v in after.values())
    rec.events.clear()
    assert c.compact(retention=timedelta(hours=1)) == 0
    assert rec.events == []
    # a stale device cannot bring the entity back
    with a:
        f = a.feeds["k"]
        assert "zz-tombstoned-entry" not in f.entries


# --- (d) commit refused when a compaction floor passed its edits --------------------


def _open_across_compaction(store: Any) -> tuple[Stage, Stage, Stage, Wall, Wall, Wall]:
    sa, wa = fresh("a")
    sb, wb = fresh("b")
    sc, wc = fresh("c")
    return Stage(sa, store), Stage(sb, store), Stage(sc, store), wa, wb, wc


def test_commit_across_compaction_floor_raises_and_writes_nothing(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    rec = Recorder()
    store = store_factory(rec)
    a, b, c, _wa, wb, wc = _open_across_compaction(store)
    with b:
        f = Feed(id="k", title="b0")
        f.entries["e"] = Entry(title="e")
        b.feeds["k"] = f
    opened = threading.Event()
    go = threading.Event()
    outcome: list[BaseException | None] = []

    def worker() -> None:
        try:
            with a:
                f = a.feeds["k"]
                f.title = "a-stale"
                f.entries["e"].starred = True
                a.feeds["k"] = f
                opened.set()
                assert go.wait(5)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    t = threading.Thread(target=worker)
    t.start()
    assert opened.wait(5)
    wb.t = BASE + timedelta(hours=2)
    with b:
        f = b.feeds["k"]
        f.entries["e"].read = True
        b.feeds["k"] = f
    wc.t = BASE + timedelta(hours=3)
    c.compact(retention=timedelta(hours=1))
    before = raw(store)
    rec.events.clear()
    go.set()
    t.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], TransactionError)
    assert rec.events == []
    assert raw(store) == before
    # a retry succeeds and its edits are kept
    with a:
        f = a.feeds["k"]
        f.title = "a-retry"
        f.entries["e"].starred = True
        a.feeds["k"] = f
    sd, _ = fresh("d")
    with Stage(sd, store) as d:
        f = d.feeds["k"]
        assert f.title == "a-retry"
        assert f.entries["e"].starred is True and f.entries["e"].read is True


# --- (e) read-only transactions write nothing --------------------------------------


def test_read_only_transactions_write_nothing(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    rec = Recorder()
    store = store_factory(rec)
    sa, _ = fresh("a", timedelta(days=5))
    sb, _ = fresh("b", -timedelta(days=5))
    a, b = Stage(sa, store), Stage(sb, store)
    with a:
        f = Feed(id="k", title="t")
        f.entries["e"] = Entry(title="e")
        a.feeds["k"] = f
        a.feeds["gone"] = Feed(id="gone")
    with a:
        del a.feeds["gone"]
    before = raw(store)
    rec.events.clear()
    with b:
        assert len(b.feeds) == 1 and "gone" not in b.feeds and list(b.feeds) == ["k"]
        f = b.feeds["k"]
        f.entries["e"].title  # noqa: B018
        assert b.subscriptions is None
    assert rec.events == []
    assert raw(store) == before


def test_read_only_transaction_over_unstamped_document_writes_only_own_copy() -> None:
    # A read-only transaction writes nothing, except that reading an unstamped document
    # (put in the store by hand) adopts it into the reader's own copy, as read()
    # documents: exactly one write, of the reader's copy of that document, and the
    # outsider's file is left as it was.
    rec = Recorder()
    store = DictMemoryStore(event_manager=rec.manager)
    store.connect()
    raw_body = json.dumps({"id": "k", "title": "raw"}).encode()
    store.set("feeds/k/outsider.json", (raw_body, {}))
    sa, _ = fresh("a")
    a = Stage(sa, store)
    rec.events.clear()
    with a:
        assert a.feeds["k"].title == "raw"
    assert [key for _, key in rec.events] == [f"feeds/k/{sa.identifier}.json"]
    assert raw(store)["feeds/k/outsider.json"][0] == raw_body
    assert sorted(raw(store)) == sorted(["feeds/k/outsider.json", f"feeds/k/{sa.identifier}.json"])
    rec.events.clear()
    with a:
        assert a.feeds["k"].title == "raw"
    assert rec.events == []


# --- convergence across processes ---------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import logging, sys
    from datetime import datetime, timedelta, timezone
    from storekeeper import FileSystemStore, SqliteStore
    from storekeeper.stage import Entry, Feed, HybridClock, Session, Stage
    logging.disable(logging.WARNING)
    kind, path, name, skew_h, role = sys.argv[1:6]
    base = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(hours=float(skew_h))
    s = Session(name)
    s.clock = HybridClock(wall=lambda: base)
    if kind == "sqlite":
        store = SqliteStore(path, durable=False)
    else:
        store = FileSystemStore(path, durable=False)
    store.connect()
    st = Stage(s, store)
    if role == "edit":
        with st:
            f = st.feeds["k"] if "k" in st.feeds else Feed(id="k")
            f.entries[name] = Entry(title=name)
            if "seed" in f.entries:
                del f.entries["seed"]
            f.title = name
            st.feeds["k"] = f
    elif role == "compact":
        st.compact(retention=timedelta(hours=1))
    else:
        with st:
            f = st.feeds["k"]
            print(sorted((k, e.title) for k, e in f.entries.items()), f.title)
    store.disconnect()
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "folder"])
def test_processes_converge_with_skewed_clocks(kind: str, tmp_path: Path) -> None:
    path = tmp_path / ("s.db" if kind == "sqlite" else "f")
    if kind == "folder":
        init_shared_store(path)
    store: Any = SqliteStore(path, durable=False) if kind == "sqlite" else FileSystemStore(path)
    store.connect()
    s0, _ = fresh("seed")
    with Stage(s0, store) as st:
        f = Feed(id="k", title="seed")
        f.entries["seed"] = Entry(title="seed")
        st.feeds["k"] = f
    store.disconnect()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))

    def run(name: str, skew: float, role: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, kind, str(path), name, str(skew), role],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    procs = [run("p-ahead", 30, "edit"), run("p-behind", -30, "edit"), run("p-c", 999, "compact")]
    for p in procs:
        p.communicate(timeout=15)
        assert p.returncode == 0
    outs = []
    for name in ("p-ahead", "p-behind", "p-fresh"):
        p = run(name, 0, "read")
        out, _ = p.communicate(timeout=15)
        assert p.returncode == 0
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]
    assert "'seed'" not in outs[0]
    assert "p-ahead" in outs[0] and "p-behind" in outs[0]


def test_brief_transaction_of_writer_far_behind_refused_not_lost() -> None:
    # A's wall clock is 10 days behind, retention 1 day: a 2-second transaction is
    # refused at commit (docs say this takes "a transaction kept open that long"), but
    # nothing is lost or half-written, and the retry succeeds.
    rec = Recorder()
    store = DictMemoryStore(event_manager=rec.manager)
    store.connect()
    sa, _ = fresh("a", -timedelta(days=10))
    sb, wb = fresh("b")
    sc, wc = fresh("c")
    a, b, c = Stage(sa, store), Stage(sb, store), Stage(sc, store)
    with a:
        a.feeds["k"] = Feed(id="k", title="a0")
    opened, go = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def worker() -> None:
        try:
            with a:
                f = a.feeds["k"]
                f.title = "a1"
                a.feeds["k"] = f
                a.feeds["other"] = Feed(id="other", title="o")
                opened.set()
                assert go.wait(5)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    t = threading.Thread(target=worker)
    t.start()
    assert opened.wait(5)
    wb.t = BASE + timedelta(seconds=1)
    with b:
        f = b.feeds["k"]
        f.entries["x"] = Entry(title="x")
        b.feeds["k"] = f
    wc.t = BASE + timedelta(seconds=2)
    assert c.compact(retention=timedelta(days=1)) == 1
    before = raw(store)
    rec.events.clear()
    go.set()
    t.join(5)
    assert isinstance(outcome[0], TransactionError)
    assert rec.events == [] and raw(store) == before
    with a:
        f = a.feeds["k"]
        f.title = "a1"
        a.feeds["k"] = f
        a.feeds["other"] = Feed(id="other", title="o")
    with b:
        assert b.feeds["k"].title == "a1" and "x" in b.feeds["k"].entries
        assert b.feeds["other"].title == "o"


def test_same_session_two_threads_interleaved_both_kept(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    store = store_factory(None)
    sa, _ = fresh("a")
    one, two = Stage(sa, store), Stage(sa, store)
    with one:
        f = Feed(id="k", title="t")
        f.entries["e"] = Entry(title="e")
        one.feeds["k"] = f
    read1, done2 = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with one:
                f = one.feeds["k"]
                read1.set()
                assert done2.wait(5)
                f.title = "from-one"
                one.feeds["k"] = f
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert read1.wait(5)
    with two:
        f = two.feeds["k"]
        f.entries["e"].starred = True
        f.entries["n"] = Entry(title="n")
        two.feeds["k"] = f
    done2.set()
    t.join(5)
    assert errors == []
    sb, _ = fresh("b")
    with Stage(sb, store) as b:
        f = b.feeds["k"]
        assert f.title == "from-one"
        assert f.entries["e"].starred is True and "n" in f.entries


def test_read_only_after_compaction_by_returning_session_writes_nothing(
    store_factory: Callable[[Recorder | None], Any],
) -> None:
    rec = Recorder()
    store = store_factory(rec)
    sa, _wa = fresh("a", -timedelta(days=2))
    sb, _wb = fresh("b")
    sc, _wc = fresh("c", timedelta(days=40))
    a, b, c = Stage(sa, store), Stage(sb, store), Stage(sc, store)
    with a:
        f = Feed(id="k", title="t")
        f.entries["e"] = Entry(title="e")
        a.feeds["k"] = f
    with b:
        f = b.feeds["k"]
        del f.entries["e"]
        b.feeds["k"] = f
    c.compact(retention=timedelta(hours=1))
    before = raw(store)
    rec.events.clear()
    for st in (a, b, c):
        with st:
            assert list(st.feeds) == ["k"] and "e" not in st.feeds["k"].entries
            assert len(st.feeds) == 1
    assert rec.events == [] and raw(store) == before


@pytest.mark.parametrize("compactor_skew", [timedelta(days=40), -timedelta(days=40)])
def test_deep_routes_compact_twice_and_readd_after_compaction(
    store_factory: Callable[[Recorder | None], Any], compactor_skew: timedelta
) -> None:
    rec = Recorder()
    store = store_factory(rec)
    sa, _ = fresh("a", -timedelta(days=3))
    sb, wb = fresh("b", timedelta(days=3))
    sc, wc = fresh("c", compactor_skew)
    a, b, c = DeepStage(sa, store), DeepStage(sb, store), DeepStage(sc, store)
    with a:
        d = Doc(title="x")
        d.items["i"] = Item(id="i", text="i")
        a.docs["p"]["x"] = d
        a.docs["q"]["y"] = Doc(title="y")
    with b:
        del b.docs["p"]["x"]
        y = b.docs["q"]["y"]
        y.items["j"] = Item(id="j", text="j")
        b.docs["q"]["y"] = y
    wb.t = wc.t = BASE + timedelta(days=10)
    assert c.compact(retention=timedelta(hours=1)) >= 1
    before = raw(store)
    rec.events.clear()
    assert c.compact(retention=timedelta(hours=1)) == 0
    assert rec.events == [] and raw(store) == before
    with a:
        assert list(a.docs) == ["q"] and "p" not in a.docs and len(a.docs["p"]) == 0
        a.docs["p"]["x"] = Doc(title="readd")
        assert a.docs["p"]["x"].title == "readd" and list(a.docs["p"]["x"].items) == []
    for st in (a, b, c):
        with st:
            assert list(st.docs) == ["p", "q"]
            assert st.docs["p"]["x"].title == "readd"
            assert list(st.docs["p"]["x"].items) == []
            assert sorted(st.docs["q"]["y"].items) == ["j"]


def _copy_keys(src: Any, dst: Any, prefix: str = "") -> None:
    for key in list(src.list_keys(prefix)):
        value = src.get(key)
        with value.data as stream:
            data = stream.read()
        dst.set(key, (data, dict(value.metadata)))


@pytest.mark.parametrize("second", [timedelta(days=61), timedelta(days=200)])
def test_offline_copy_after_newest_write_survives_repeated_compaction_ahead(
    second: timedelta,
) -> None:
    # An offline device edits after the newest write the compactions saw; a compactor
    # 40 days ahead compacts twice (the second time collecting old tombstones of a
    # snapshot-only document). The device's synced copy must keep its edits, and the
    # deleted entity must stay deleted.
    shared = DictMemoryStore()
    shared.connect()
    sa, _ = fresh("a")
    sb, wb = fresh("b")
    sc, wc = fresh("c", timedelta(days=40))
    so, wo = fresh("o")
    a, b, c = Stage(sa, shared), Stage(sb, shared), Stage(sc, shared)
    with a:
        f = Feed(id="k", title="t")
        f.entries["e"] = Entry(title="e")
        a.feeds["k"] = f
    wb.t = BASE + timedelta(minutes=1)
    with b:
        f = b.feeds["k"]
        del f.entries["e"]
        b.feeds["k"] = f
    local = DictMemoryStore()
    local.connect()
    _copy_keys(shared, local)
    wo.t = BASE + timedelta(minutes=2)
    with Stage(so, local) as o:
        f = o.feeds["k"]
        f.title = "offline-edit"
        f.entries["new"] = Entry(title="n")
        o.feeds["k"] = f
    wc.t = BASE + timedelta(minutes=3)
    assert c.compact(retention=timedelta(days=100)) == 1
    wc.t = BASE + second
    assert c.compact(retention=timedelta(days=100)) == 1
    assert c.compact(retention=timedelta(days=100)) == 0
    _copy_keys(local, shared, f"feeds/k/{so.identifier}")
    sd, _ = fresh("d")
    with Stage(sd, shared) as d:
        f = d.feeds["k"]
        assert f.title == "offline-edit"
        assert sorted(f.entries) == ["new"]


_SAME_SESSION_CHILD = textwrap.dedent(
    """
    import logging, sys
    from datetime import datetime, timedelta, timezone
    from storekeeper import FileSystemStore, SqliteStore
    from storekeeper.stage import Entry, Feed, HybridClock, Session, Stage
    logging.disable(logging.WARNING)
    kind, path, name, tag, skew_h = sys.argv[1:6]
    base = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(hours=float(skew_h))
    s = Session(name)
    s.clock = HybridClock(wall=lambda: base)
    store = SqliteStore(path, durable=False) if kind == "sqlite" else FileSystemStore(path)
    store.connect()
    st = Stage(s, store)
    for i in range(8):
        with st:
            f = st.feeds["k"]
            f.entries[f"{tag}-{i}"] = Entry(title=tag)
            st.feeds["k"] = f
        if tag == "x" and i == 4:
            st.compact(retention=timedelta(hours=1))
    store.disconnect()
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "folder"])
def test_two_processes_of_one_session_lose_nothing(kind: str, tmp_path: Path) -> None:
    path = tmp_path / ("s.db" if kind == "sqlite" else "f")
    if kind == "folder":
        init_shared_store(path)
    store: Any = SqliteStore(path, durable=False) if kind == "sqlite" else FileSystemStore(path)
    store.connect()
    s0, _ = fresh("seed")
    with Stage(s0, store) as st:
        st.feeds["k"] = Feed(id="k", title="seed")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    name = f"h3-shared-{os.getpid()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAME_SESSION_CHILD, kind, str(path), name, tag, skew],
            env=env,
        )
        for tag, skew in (("x", "-20"), ("y", "20"))
    ]
    for p in procs:
        p.wait(20)
        assert p.returncode == 0
    s1, _ = fresh("reader")
    with Stage(s1, store) as st:
        got = sorted(st.feeds["k"].entries)
    store.disconnect()
    assert got == sorted([f"x-{i}" for i in range(8)] + [f"y-{i}" for i in range(8)])


@pytest.mark.parametrize("source", ["held", "other-key"])
def test_readd_of_read_document_after_seen_delete_wins(
    store_factory: Callable[[Recorder | None], Any], source: str
) -> None:
    # No clock skew at all. A holds a feed it read earlier (or reads another feed),
    # B deletes k, A sees the delete (`in` is False, which advances A's clock past it)
    # and assigns the document back at k: a deliberate re-add after a seen delete.
    store = store_factory(None)
    sa, _ = fresh("a")
    sb, _ = fresh("b")
    a, b = Stage(sa, store), Stage(sb, store)
    with a:
        a.feeds["k"] = Feed(id="k", title="one")
        a.feeds["other"] = Feed(id="other", title="other")
    with a:
        held = a.feeds["k"]
    with b:
        del b.feeds["k"]
    with a:
        assert "k" not in a.feeds
        doc = held if source == "held" else a.feeds["other"]
        doc.title = "back"
        a.feeds["k"] = doc
        assert "k" in a.feeds and a.feeds["k"].title == "back"
    with b:
        assert "k" in b.feeds and b.feeds["k"].title == "back"


def test_delete_then_assign_read_document_back_same_transaction() -> None:
    store = DictMemoryStore()
    store.connect()
    sa, _ = fresh("a")
    a = Stage(sa, store)
    with a:
        a.feeds["k"] = Feed(id="k", title="one")
    with a:
        f = a.feeds["k"]
        del a.feeds["k"]
        f.title = "back"
        a.feeds["k"] = f
        assert "k" in a.feeds
    with a:
        assert a.feeds["k"].title == "back"
