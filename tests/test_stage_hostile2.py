"""Hostile tests of storekeeper.stage: deletes, compaction, read-only transactions, merge laws.

Written from the README, the issue text and the docstrings only.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storekeeper import DictMemoryStore, EventManager, FileSystemStore, SqliteStore, open_store
from storekeeper.stage import (
    BaseStage,
    Element,
    Entities,
    HybridClock,
    MergeableDocument,
    Route,
    Session,
    entities,
)
from storekeeper.store import StoreModificationEvent

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Note(Element):
    body: str = ""


class Sub(Element):
    id: str
    name: str = ""


class Item(Element):
    id: str
    text: str = ""
    subs: Entities[Sub] = entities(key="id")
    note: Note | None = None


class Doc(MergeableDocument):
    title: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    items: Entities[Item] = entities(key="id")
    meta: Note | None = None


class S(BaseStage):
    docs = Route(Doc, ["docs", "{0}", "{1}", "{session.identifier}.json"])
    one = Route(Doc, ["one", "{session.identifier}.json"])


class Wall:
    """An injectable wall clock."""

    def __init__(self, start: datetime = T0, skew: timedelta = timedelta(0)) -> None:
        self.t = start
        self.skew = skew

    def __call__(self) -> datetime:
        return self.t + self.skew


def session(name: str, wall: Callable[[], datetime] | None = None) -> Session:
    s = Session(f"{name}-{uuid.uuid4().hex[:10]}")
    if wall is not None:
        s.clock = HybridClock(wall=wall)  # type: ignore[misc]
    return s


def raw(store: Any, key: str) -> tuple[bytes, dict[str, Any]]:
    value = store.get(key)
    data = value.data
    if isinstance(data, bytes | bytearray):
        body = bytes(data)
    elif isinstance(data, io.IOBase):
        body = data.read()
    else:
        with data as stream:
            body = stream.read()
    return body, dict(value.metadata)


def sqlite(path: Path, **kw: Any) -> SqliteStore:
    store = SqliteStore(path, **kw)
    store.connect()
    return store


def memory() -> DictMemoryStore:
    store = DictMemoryStore()
    store.connect()
    return store


def base_doc() -> Doc:
    d = Doc(title="t")
    d.items["i1"] = Item(text="x")
    d.items["i2"] = Item(text="y")
    d.items["i1"].subs["s1"] = Sub(name="n1")
    d.items["i1"].subs["s2"] = Sub(name="n2")
    d.items["i1"].note = Note(body="inote")
    d.meta = Note(body="m")
    return d


def run_py(code: str, timeout: float = 30) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]))
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def dump_stage(url: str, ident: str) -> dict[str, Any]:
    """Every document of S at *url*, as reprs (used in fresh processes)."""
    st = S(Session(ident), url)
    out: dict[str, Any] = {}
    with st:
        one = st.one
        out["one"] = None if one is None else repr(one)
        for k0 in st.docs:
            for k1 in st.docs[k0]:
                out[f"docs/{k0}/{k1}"] = repr(st.docs[k0][k1])
        out["levels"] = list(st.docs)
    return out


def fresh_dump(url: str) -> dict[str, Any]:
    ident = f"reader-{uuid.uuid4().hex[:8]}"
    code = (
        "import json, test_stage_hostile2 as t\n"
        f"print(json.dumps(t.dump_stage({url!r}, {ident!r})))\n"
    )
    return json.loads(run_py(code).strip().splitlines()[-1])


# -- 1. deletes ----------------------------------------------------------------------------


def test_directory_delete_hidden_everywhere_two_sqlite_store_objects(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store_a, store_b = SqliteStore(path), SqliteStore(path)
    a, b = S(session("a"), store_a), S(session("b"), store_b)
    with a:
        a.docs["x"]["y"] = Doc(title="xy")
        a.docs["x"]["z"] = Doc(title="xz")
        a.docs["w"]["v"] = Doc(title="wv")
    with b:
        assert list(b.docs["x"]) == ["y", "z"]
        del b.docs["x"]["y"]
        # same transaction
        assert list(b.docs["x"]) == ["z"]
        assert len(b.docs["x"]) == 1
        assert "y" not in b.docs["x"]
        with pytest.raises(KeyError):
            b.docs["x"]["y"]
    with a:
        assert list(a.docs["x"]) == ["z"]
        assert "y" not in a.docs["x"]
        assert len(a.docs["x"]) == 1
        with pytest.raises(KeyError):
            a.docs["x"]["y"]
        del a.docs["x"]["z"]
        assert list(a.docs) == ["w"]
        assert "x" not in a.docs
        assert len(a.docs) == 1
        assert len(a.docs["x"]) == 0
    with b:
        assert list(b.docs) == ["w"]
        assert "x" not in b.docs
        assert list(b.docs["x"]) == []
    dumped = fresh_dump(f"sqlite:///{path}")
    assert dumped["levels"] == ["w"]
    assert set(dumped) == {"one", "levels", "docs/w/v"}


def test_delete_in_other_process_seen_through_folder(tmp_path: Path) -> None:
    url = (tmp_path / "f").as_uri() + "?create=true"
    a = S(session("a"), url)
    with a:
        a.docs["x"]["y"] = Doc(title="xy")
        a.docs["x"]["z"] = base_doc()
    code = (
        "import test_stage_hostile2 as t\n"
        f"st = t.S(t.Session('p-{uuid.uuid4().hex[:8]}'), {url!r})\n"
        "with st:\n"
        "    del st.docs['x']['y']\n"
        "    d = st.docs['x']['z']\n"
        "    del d.items['i1'].subs['s1']\n"
        "    d.items['i1'].note = None\n"
        "    del d.items['i2']\n"
        "    st.docs['x']['z'] = d\n"
    )
    run_py(code)
    with a:
        assert list(a.docs["x"]) == ["z"]
        d = a.docs["x"]["z"]
        assert list(d.items) == ["i1"]
        assert list(d.items["i1"].subs) == ["s2"]
        assert d.items["i1"].note is None
        assert "i2" not in d.items and len(d.items) == 1


def test_rolled_back_deletes_never_appear() -> None:
    store = memory()
    a, b = S(session("a"), store), S(session("b"), store)
    with a:
        a.docs["x"]["y"] = base_doc()
    before = {k: raw(store, k) for k in store.list_keys("")}
    with pytest.raises(RuntimeError), b:
        del b.docs["x"]["y"]
        assert "y" not in b.docs["x"]
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), b:
        d = b.docs["x"]["y"]
        del d.items["i1"].subs["s1"]
        d.meta = None
        b.docs["x"]["y"] = d
        raise RuntimeError("boom")
    assert {k: raw(store, k) for k in store.list_keys("")} == before
    with b:
        d = b.docs["x"]["y"]
        assert list(d.items["i1"].subs) == ["s1", "s2"]
        assert d.meta == Note(body="m")


def test_older_copy_cannot_resurrect_nested_entities_skewed_clocks() -> None:
    """The writer of the entities runs an hour ahead, the deleter an hour behind."""
    store = memory()
    a = S(session("a", Wall(skew=timedelta(hours=1))), store)
    b = S(session("b", Wall(skew=-timedelta(hours=1))), store)
    with a:
        a.one = base_doc()
    with b:
        d = b.one
        assert d is not None
        del d.items["i2"]
        del d.items["i1"].subs["s1"]
        d.meta = None
        d.items["i1"].note = None
        b.one = d
    for st in (a, b):
        with st:
            d = st.one
            assert d is not None
            assert list(d.items) == ["i1"]
            assert list(d.items["i1"].subs) == ["s2"]
            assert d.meta is None and d.items["i1"].note is None
    # a writes again (its copy still holds the old entities) without touching them
    with a:
        d = a.one
        assert d is not None
        d.title = "again"
        a.one = d
    with b:
        d = b.one
        assert d is not None
        assert d.title == "again"
        assert list(d.items) == ["i1"] and list(d.items["i1"].subs) == ["s2"]
        assert d.meta is None


def test_stale_in_place_edit_of_entity_deleted_concurrently_does_not_readd() -> None:
    """a read the document before b deleted i2, then edits i2's fields in place and saves.

    An in-place change is documented as an edit of those fields only, not a re-add.
    """
    store = memory()
    a, b = S(session("a"), store), S(session("b"), store)
    with a:
        a.one = base_doc()
    read = threading.Event()
    deleted = threading.Event()
    errors: list[BaseException] = []

    def stale_writer() -> None:
        try:
            with a:
                d = a.one
                assert d is not None
                read.set()
                assert deleted.wait(5)
                d.items["i2"].text = "stale edit"
                d.items["i1"].subs["s1"].name = "stale edit"
                a.one = d
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=stale_writer)
    t.start()
    assert read.wait(5)
    with b:
        d = b.one
        assert d is not None
        del d.items["i2"]
        del d.items["i1"].subs["s1"]
        b.one = d
    deleted.set()
    t.join(5)
    assert not errors
    with b:
        d = b.one
        assert d is not None
        assert list(d.items) == ["i1"]
        assert list(d.items["i1"].subs) == ["s2"]


def test_readd_after_delete_wins_from_slow_clock_after_reading_the_delete() -> None:
    store = memory()
    fast = S(session("fast", Wall(skew=timedelta(hours=2))), store)
    slow = S(session("slow", Wall(skew=-timedelta(hours=2))), store)
    with slow:
        slow.docs["x"]["y"] = base_doc()
    with fast:
        d = fast.docs["x"]["y"]
        del d.items["i2"]
        fast.docs["x"]["y"] = d
    with slow:
        d = slow.docs["x"]["y"]
        assert "i2" not in d.items
        d.items["i2"] = Item(text="back")
        slow.docs["x"]["y"] = d
    with fast:
        d = fast.docs["x"]["y"]
        assert d.items["i2"].text == "back"
        del fast.docs["x"]["y"]
    with slow:
        with pytest.raises(KeyError):
            slow.docs["x"]["y"]
        slow.docs["x"]["y"] = Doc(title="readded")
    with fast:
        assert list(fast.docs["x"]) == ["y"]
        d = fast.docs["x"]["y"]
        assert d.title == "readded"
        # a new document was assigned: the deleted one's contents stay deleted
        assert list(d.items) == [] and d.meta is None


@pytest.mark.parametrize("observe", ["in", "iterate"])
def test_readd_after_seeing_delete_through_in_or_listing(observe: str) -> None:
    store = memory()
    fast = S(session("fast", Wall(skew=timedelta(hours=2))), store)
    slow = S(session("slow", Wall(skew=-timedelta(hours=2))), store)
    with slow:
        slow.docs["x"]["y"] = Doc(title="orig")
    with fast:
        del fast.docs["x"]["y"]
    with slow:
        if observe == "in":
            assert "y" not in slow.docs["x"]
        else:
            assert list(slow.docs["x"]) == []
        slow.docs["x"]["y"] = Doc(title="readded")  # deliberate re-add after the delete
        assert list(slow.docs["x"]) == ["y"]
    with fast:
        assert list(fast.docs["x"]) == ["y"]
        assert fast.docs["x"]["y"].title == "readded"


# -- 3. read-only transactions ---------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: Any) -> None:
        self.events.append((str(event.action), str(event.key)))


def listing(store: Any) -> dict[str, Any]:
    return {key: info.version for key, info in store.list_info("")}


def populated_sqlite(path: Path, wall: Wall) -> tuple[SqliteStore, Recorder, S, S]:
    events = EventManager()
    rec = Recorder()
    events.connect(StoreModificationEvent, rec)
    store = SqliteStore(path, event_manager=events)
    a, b = S(session("a", wall), store), S(session("b", wall), store)
    with a:
        a.one = base_doc()
        a.docs["x"]["y"] = base_doc()
        a.docs["x"]["z"] = Doc(title="z")
        a.docs["w"]["v"] = Doc(title="v")
    with b:
        d = b.docs["x"]["y"]
        del d.items["i2"]
        del d.items["i1"].subs["s1"]
        d.meta = None
        b.docs["x"]["y"] = d
        del b.docs["w"]["v"]
    assert rec.events, "the listener must see the writes (control)"
    return store, rec, a, b


def read_everything(st: S) -> list[str]:
    seen = [repr(st.one), repr(list(st.docs)), str(len(st.docs))]
    for k0 in ["x", "w", "nope"]:
        level = st.docs[k0]
        seen.append(f"{k0}:{list(level)}:{len(level)}:{'y' in level}:{'v' in level}")
        for k1 in [*list(level), "v", "missing"]:
            try:
                seen.append(repr(level[k1]))
            except KeyError:
                seen.append(f"KeyError {k0}/{k1}")
    return seen


def test_read_only_transactions_write_nothing(tmp_path: Path) -> None:
    wall = Wall()
    store, rec, a, b = populated_sqlite(tmp_path / "s.db", wall)
    wall.t += timedelta(minutes=5)
    before = listing(store)
    rec.events.clear()
    c = S(session("c", wall), store)  # a session that never wrote
    for st in (a, b, c):
        with st:
            first = read_everything(st)
        with st:
            assert read_everything(st) == first
    assert rec.events == []
    assert listing(store) == before
    # the same reads, after a compaction (snapshot copies only)
    wall.t += timedelta(days=1)
    a.compact(retention=timedelta(days=30))
    before = listing(store)
    rec.events.clear()
    for st in (a, b, c):
        with st:
            read_everything(st)
    assert rec.events == []
    assert listing(store) == before


def test_touch_records_session_and_rolled_back_touch_does_not(tmp_path: Path) -> None:
    wall = Wall()
    store, rec, a, _ = populated_sqlite(tmp_path / "s.db", wall)
    c = S(session("c", wall), store)
    rec.events.clear()
    with c:
        c.one  # noqa: B018
    assert c.session not in c.sessions
    with pytest.raises(RuntimeError), c:
        c.touch()
        raise RuntimeError("boom")
    assert rec.events == []
    assert c.session not in S(session("other"), sqlite(tmp_path / "s.db")).sessions
    with c:
        c.touch()
    assert rec.events, "touch must write the session record"
    other = S(session("other"), sqlite(tmp_path / "s.db"))
    assert c.session in other.sessions
    assert a.session in other.sessions
    assert c.session in other.session_times()


# -- 2. compaction ---------------------------------------------------------------------------


def stage_keys(store: Any) -> list[str]:
    return sorted(k for k in store.list_keys("") if not k.startswith(".sessions/"))


def walk_tombstones(node: Any, found: list[Any], table: list[Any] | None = None) -> None:
    """A stored body names its stamps by position in its ``"#"`` table; an element slot
    carries ``"+"`` (added) and ``"-"`` (deleted) stamps: a tombstone is a slot whose
    delete is newer than its add."""
    if isinstance(node, dict):
        if table is None:
            table = node.get("#", [])
        if "-" in node:
            deleted = table[node["-"]]
            added = table[node["+"]] if "+" in node else None
            if added is None or deleted > added:
                found.append(node)
        for name, value in node.items():
            if name not in ("#", "@", "!", "+", "-"):
                walk_tombstones(value, found, table)
    elif isinstance(node, list):
        for value in node:
            walk_tombstones(value, found, table)


def deleting_history(store: Any, wall: Wall) -> tuple[S, S]:
    a, b = S(session("a", wall), store), S(session("b", wall), store)
    with a:
        a.one = base_doc()
        a.docs["x"]["y"] = base_doc()
        a.docs["w"]["v"] = Doc(title="gone-v")
    wall.t += timedelta(seconds=1)
    with b:
        for d, put in ((b.one, "one"), (b.docs["x"]["y"], "xy")):
            assert d is not None
            del d.items["i2"]
            del d.items["i1"].subs["s1"]
            d.items["i1"].note = None
            d.meta = None
            if put == "one":
                b.one = d
            else:
                b.docs["x"]["y"] = d
        del b.docs["w"]["v"]
    return a, b


def test_compaction_drops_collected_tombstones_from_raw_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = sqlite(path)
    wall = Wall()
    a, _ = deleting_history(store, wall)
    url = f"sqlite:///{path}"
    before = fresh_dump(url)
    assert before["levels"] == ["x"]
    wall.t += timedelta(days=40)
    assert a.compact(retention=timedelta(days=30)) == 3
    keys = stage_keys(sqlite(path))
    assert keys == ["docs/w/v/@snapshot.json", "docs/x/y/@snapshot.json", "one/@snapshot.json"]
    for key in keys:
        body, _meta = raw(sqlite(path), key)
        text = body.decode()
        found: list[Any] = []
        walk_tombstones(json.loads(body), found)
        assert found == [], (key, found)
        assert "i2" not in text and "s1" not in text and "inote" not in text
        assert '"m"' not in text and "gone-v" not in text
    assert fresh_dump(url) == before


def test_compaction_keeps_tombstones_a_live_session_has_not_seen(tmp_path: Path) -> None:
    store = memory()
    wall = Wall()
    c = S(session("c", wall), store)
    a, b = deleting_history(store, wall)
    # c wrote a copy before the deletes? No: write it now from a stale object is impossible
    # through the stage, so c only touches: live, with no copy.
    wall.t += timedelta(days=40)
    with c:
        c.touch()
    with a:
        before = read_everything(a)
    a.compact(retention=timedelta(days=30))
    with b:
        assert read_everything(b) == before


def test_compaction_twice_and_by_two_processes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = sqlite(path)
    wall = Wall()
    deleting_history(store, wall)
    url = f"sqlite:///{path}"
    before = fresh_dump(url)
    later = (T0 + timedelta(days=40)).isoformat()
    code = (
        "import sys, datetime, test_stage_hostile2 as t\n"
        f"w = t.Wall(datetime.datetime.fromisoformat({later!r}))\n"
        "st = t.S(t.session('compactor', w), sys.argv[1])\n"
        "print(st.compact(retention=datetime.timedelta(days=30)))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(int(o.strip()) for o in outs) >= 3
    keys = stage_keys(sqlite(path))
    assert keys == ["docs/w/v/@snapshot.json", "docs/x/y/@snapshot.json", "one/@snapshot.json"]
    after = fresh_dump(url)
    assert after == before
    snap = {k: raw(sqlite(path), k) for k in keys}
    versions = listing(sqlite(path))
    wall.t += timedelta(days=40)
    again = S(session("again", wall), sqlite(path))
    assert again.compact(retention=timedelta(days=30)) == 0
    assert listing(sqlite(path)) == versions
    assert {k: raw(sqlite(path), k) for k in keys} == snap
    assert fresh_dump(url) == before


def writer_edits(st: S) -> None:
    with st:
        d = st.one
        assert d is not None
        d.title = "written during compaction"
        d.items["i1"].subs["s3"] = Sub(name="new")
        del d.items["i1"].subs["s2"]
        d.items["i9"] = Item(text="nine")
        st.one = d
        st.docs["x"]["new"] = Doc(title="new doc")


class HookMixin:
    """Runs a hook once, before the store's ``at``-th transaction (the write lock is
    taken inside it, so another writer can commit while the hook runs)."""

    hook: Callable[[], None] | None = None
    at: int = 1
    calls: int = 0

    def transaction(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.hook is not None and self.calls == self.at:
            hook, self.hook = self.hook, None
            hook()
        return super().transaction(*args, **kw)  # type: ignore[misc]


class HookSqlite(HookMixin, SqliteStore):
    pass


class HookFS(HookMixin, FileSystemStore):
    pass


@pytest.mark.parametrize(
    ("kind", "at", "how"),
    [
        ("sqlite", 1, "thread"),
        ("sqlite", 2, "thread"),
        ("sqlite", 3, "thread"),
        ("folder", 2, "thread"),
        ("folder", 1, "process"),
        ("sqlite", 3, "process"),
    ],
)
def test_compaction_concurrent_with_writer_thread_loses_nothing(
    tmp_path: Path, at: int, kind: str, how: str
) -> None:
    if kind == "sqlite":
        path = tmp_path / "s.db"
        url = f"sqlite:///{path}"
        hooked: HookMixin = HookSqlite(path)
        other: Any = sqlite(path)
    else:
        path = tmp_path / "f"
        url = path.as_uri()
        other = open_store(url + "?create=true")
        hooked = HookFS(path)
    wall = Wall()
    a, b = deleting_history(other, wall)
    wall.t += timedelta(days=40)
    with a:
        a.touch()
    with b:
        b.touch()
    hooked.at = at
    compactor = S(session("compactor", wall), hooked)  # type: ignore[arg-type]
    writer_stage = S(a.session, url)  # same session as a, another store object
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            if how == "thread":
                writer_edits(writer_stage)
            else:
                run_py(
                    "import test_stage_hostile2 as t\n"
                    f"t.writer_edits(t.S(t.Session({a.session.identifier!r}), {url!r}))\n"
                )
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    interleaved: list[bool] = []

    def hook() -> None:
        thread.start()
        interleaved.append(done.wait(10))

    hooked.hook = hook
    compactor.compact(retention=timedelta(days=30))
    assert done.wait(10)
    thread.join(5)
    assert not errors
    assert interleaved == [True]  # the writer committed between two compaction steps
    dumped = fresh_dump(url)
    one = dumped["one"]
    assert "written during compaction" in one
    assert "'s3'" in one and "'s2'" not in one and "'i9'" in one
    assert "'i2'" not in one and "'s1'" not in one
    assert dumped["docs/x/new"] == repr(Doc(title="new doc"))
    assert dumped["levels"] == ["x"]
    # a second compaction afterwards changes nothing anyone reads
    compactor2 = S(session("compactor2", wall), url)
    compactor2.compact(retention=timedelta(days=30))
    assert dump_stage(url, dumped_reader := session("reader2").identifier) == dumped, dumped_reader


# -- 4. merge laws ---------------------------------------------------------------------------


def sync_own(src: Any, dst: Any, ident: str) -> None:
    """What a file-sync tool does: bring *ident*'s files from *src* to *dst*."""
    for key in list(src.list_keys("")):
        if key.endswith(f"/{ident}.json") or key == f".sessions/{ident}":
            dst.set(key, src.get(key))


def random_edit(rng: random.Random, d: Doc, tag: str) -> None:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        ids = list(d.items)
        if op == 0:
            d.title = f"title-{tag}-{rng.randrange(100)}"
        elif op == 1:
            d.tags.append(f"tag-{tag}-{rng.randrange(3)}")
        elif op == 2 and ids:
            del d.items[rng.choice(ids)]
        elif op == 3:
            d.items[f"i{rng.randrange(5)}"] = Item(text=f"added-{tag}")
        elif op == 4 and ids:
            d.items[rng.choice(ids)].text = f"text-{tag}"
        elif op == 5 and ids:
            item = d.items[rng.choice(ids)]
            subs = list(item.subs)
            if subs and rng.random() < 0.5:
                del item.subs[rng.choice(subs)]
            else:
                item.subs[f"s{rng.randrange(4)}"] = Sub(name=f"sub-{tag}")
        elif op == 6:
            d.meta = None if rng.random() < 0.5 else Note(body=f"meta-{tag}")
        elif op == 7 and d.meta is not None:
            d.meta.body = f"body-{tag}"
        elif op == 8 and ids:
            item = d.items[rng.choice(ids)]
            item.note = None if item.note is not None else Note(body=f"note-{tag}")


def build_histories(seed: int) -> tuple[Any, list[tuple[str, Any, Wall]], Wall]:
    rng = random.Random(seed)
    base_wall = Wall()
    origin = memory()
    with S(session("base", base_wall), origin) as st:
        st.one = base_doc()
    devices: list[tuple[str, Any, Wall]] = []
    for n in range(4):
        wall = Wall(skew=timedelta(minutes=rng.randint(-90, 90)))
        s = session(f"dev{n}", wall)
        store = memory()
        for key in origin.list_keys(""):
            store.set(key, origin.get(key))
        devices.append((s.identifier, store, wall))
    for rnd in range(3):
        for ident, store, wall in devices:
            wall.t += timedelta(minutes=7)
            for other, ostore, _ in devices:
                if other != ident and rng.random() < 0.4:
                    sync_own(ostore, store, other)
            st = S(Session(ident), store)
            with st:
                d = st.one
                assert d is not None
                random_edit(rng, d, f"{ident[:4]}-{rnd}")
                st.one = d
    return origin, devices, base_wall


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sync_order_and_compactions_never_change_the_result(seed: int) -> None:
    origin, devices, _ = build_histories(seed)
    rng = random.Random(seed * 7919)
    results = set()
    orders = [list(range(4)) for _ in range(5)]
    for order in orders[1:]:
        rng.shuffle(order)
    for k, order in enumerate(orders):
        main = memory()
        for key in origin.list_keys(""):
            main.set(key, origin.get(key))
        wall = Wall(T0 + timedelta(hours=6), skew=timedelta(minutes=rng.randint(-30, 30)))
        compactor = S(session(f"compactor{k}", wall), main)
        for n in order:
            ident, store, _ = devices[n]
            sync_own(store, main, ident)
            if rng.random() < 0.6:
                compactor.compact(retention=timedelta(days=30))
        reader = S(session("reader", wall), main)
        with reader:
            before = repr(reader.one)
        results.add(before)
        if k % 2 == 0:
            compactor.compact(retention=timedelta(days=30))
            with reader:
                assert repr(reader.one) == before
            wall.t += timedelta(days=40)  # nobody live: tombstones may be collected
            compactor.compact(retention=timedelta(days=30))
            with reader:
                assert repr(reader.one) == before
    assert len(results) == 1, results


@pytest.mark.parametrize("seed", [4, 5])
def test_session_merge_is_a_join_on_device_copies(seed: int) -> None:
    _, devices, _ = build_histories(seed)
    docs = []
    for ident, store, _ in devices:
        with S(Session(ident), store) as st:
            d = st.one
            assert d is not None
            docs.append(d)
    merger = session("merger")
    rng = random.Random(seed)
    reprs = set()
    for _ in range(6):
        order = docs[:]
        rng.shuffle(order)
        acc = order[0]
        for d in order[1:]:
            acc = merger.merge(acc, d) if rng.random() < 0.5 else merger.merge(d, acc)
        reprs.add(repr(acc))
        assert repr(merger.merge(acc, acc)) == repr(acc)
        for d in docs:
            assert repr(merger.merge(acc, d)) == repr(acc)  # absorbs every input
    # associativity, explicitly
    a, b, c = docs[:3]
    left = merger.merge(merger.merge(a, b), c)
    right = merger.merge(a, merger.merge(b, c))
    assert repr(left) == repr(right)
    assert len(reprs) == 1, reprs


# -- returning sessions, same session twice ------------------------------------------------


def test_returning_session_rebases_on_snapshot_and_keeps_later_edits(tmp_path: Path) -> None:
    wall = Wall()
    path = tmp_path / "s.db"
    store = sqlite(path)
    a, b = S(session("a", wall), store), S(session("b", wall), store)
    c = session("c", wall)
    with a:
        a.one = base_doc()
        a.docs["x"]["y"] = Doc(title="to be deleted")
    offline = memory()  # c's device: a copy of the folder, then no sync for 40 days
    for key in store.list_keys(""):
        offline.set(key, store.get(key))
    wall.t += timedelta(seconds=1)
    with b:
        d = b.one
        assert d is not None
        del d.items["i2"]
        del d.items["i1"].subs["s1"]
        d.meta = None
        b.one = d
        del b.docs["x"]["y"]
    wall.t += timedelta(days=35)
    with S(c, offline) as st:
        d = st.one
        assert d is not None
        d.title = "offline title"  # after the floor: kept
        d.items["i2"].text = "edited offline"  # element of a dropped tombstone
        d.items["i1"].subs["s1"].name = "edited offline"
        assert d.meta is not None
        d.meta.body = "edited offline"
        del d.items["i1"].subs["s2"]  # a delete after the floor: kept
        d.items["i7"] = Item(text="added offline")
        st.one = d
        y = st.docs["x"]["y"]
        y.title = "edited offline"
        st.docs["x"]["y"] = y
    wall.t += timedelta(days=5)
    assert a.compact(retention=timedelta(days=30)) >= 1
    sync_own(offline, store, c.identifier)
    url = f"sqlite:///{path}"
    dumped = fresh_dump(url)
    with a:
        mine = repr(a.one)
        assert list(a.docs) == []
    assert dumped["one"] == mine
    assert dumped["levels"] == []
    with a:
        d = a.one
        assert d is not None
        assert d.title == "offline title"
        assert list(d.items) == ["i1", "i7"]
        assert list(d.items["i1"].subs) == []
        assert d.meta is None
    # c, back online, reads and edits: its edits win over everything it read
    with S(c, store) as st:
        d = st.one
        assert d is not None
        d.items["i1"].text = "c is back"
        st.one = d
    with b:
        d = b.one
        assert d is not None
        assert d.items["i1"].text == "c is back"


def test_same_session_two_store_objects_interleaved_delete_and_edit(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = session("same")
    first, second = S(s, sqlite(path)), S(s, sqlite(path))
    with first:
        first.one = base_doc()
    read = threading.Event()
    go = threading.Event()
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            with first:
                d = first.one
                assert d is not None
                read.set()
                assert go.wait(5)
                d.items["i1"].text = "edited by the slow thread"
                first.one = d
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=slow)
    t.start()
    assert read.wait(5)
    with second:
        d = second.one
        assert d is not None
        del d.items["i2"]
        del d.items["i1"].subs["s1"]
        second.one = d
    go.set()
    t.join(5)
    assert not errors
    other = S(session("reader"), sqlite(path))
    with other:
        d = other.one
        assert d is not None
        assert list(d.items) == ["i1"]
        assert d.items["i1"].text == "edited by the slow thread"
        assert list(d.items["i1"].subs) == ["s2"]


def test_far_behind_clock_edits_after_reading_snapshot_survive() -> None:
    """touch(): every edit made after reading the document is stamped after the floor."""
    wall = Wall()
    store = memory()
    a, b = S(session("a", wall), store), S(session("b", wall), store)
    behind = S(session("behind", Wall(skew=-timedelta(days=60))), store)
    with a:
        a.one = base_doc()
        a.docs["x"]["y"] = base_doc()
    wall.t += timedelta(days=40)
    with b:
        d = b.one
        assert d is not None
        d.items["i2"].text = "b at day 40"
        b.one = d
    assert a.compact(retention=timedelta(days=30)) == 2
    with behind:
        d = behind.one
        assert d is not None
        d.items["i2"].text = "behind wins"
        del d.items["i1"]
        d.title = "behind title"
        behind.one = d
        y = behind.docs["x"]["y"]
        y.meta = None
        behind.docs["x"]["y"] = y
    a.compact(retention=timedelta(days=30))
    for st in (a, b, behind):
        with st:
            d = st.one
            assert d is not None
            assert d.title == "behind title"
            assert list(d.items) == ["i2"] and d.items["i2"].text == "behind wins"
            assert st.docs["x"]["y"].meta is None


def test_transaction_straddling_compaction_keeps_its_edits_and_deletes() -> None:
    wall = Wall()
    store = memory()
    a, b = S(session("a", wall), store), S(session("b", wall), store)
    x = S(session("x", wall), store)
    with a:
        a.one = base_doc()
    with x:
        d = x.one
        assert d is not None
        d.tags.append("x was here")
        x.one = d
    wall.t += timedelta(seconds=1)
    with b:
        d = b.one
        assert d is not None
        del d.items["i2"]
        b.one = d
    wall.t += timedelta(days=40)  # nobody is live any more
    read, compacted = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def straddle() -> None:
        try:
            with x:
                d = x.one
                assert d is not None
                read.set()
                assert compacted.wait(5)
                d.title = "x after the compaction"
                del d.items["i1"].subs["s2"]
                d.items["i1"].subs["s1"].name = "renamed by x"
                x.one = d
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=straddle)
    t.start()
    assert read.wait(5)
    assert a.compact(retention=timedelta(days=30)) == 1
    compacted.set()
    t.join(5)
    assert not errors
    for st in (a, b, x):
        with st:
            d = st.one
            assert d is not None
            assert d.title == "x after the compaction"
            assert list(d.items) == ["i1"]
            assert list(d.items["i1"].subs) == ["s1"]
            assert d.items["i1"].subs["s1"].name == "renamed by x"
            assert d.tags == ["x was here"]


def tombstones_in(store: Any) -> dict[str, int]:
    out = {}
    for key in stage_keys(store):
        found: list[Any] = []
        walk_tombstones(json.loads(raw(store, key)[0]), found)
        out[key] = len(found)
    return out


def test_tombstone_kept_until_every_live_session_has_seen_it() -> None:
    wall = Wall()
    store = memory()
    a, b, c = (S(session(n, wall), store) for n in "abc")
    with a:
        a.one = base_doc()
    with c:
        d = c.one
        assert d is not None
        d.tags.append("c")
        c.one = d  # c's copy predates the delete
    wall.t += timedelta(seconds=1)
    with b:
        d = b.one
        assert d is not None
        del d.items["i2"]
        b.one = d
    wall.t += timedelta(days=35)
    with c:
        c.touch()  # live, but its copy has not seen the delete
    wall.t += timedelta(days=5)
    assert a.compact(retention=timedelta(days=30)) == 1
    assert tombstones_in(store) == {"one/@snapshot.json": 1}
    with c:
        d = c.one
        assert d is not None
        assert "i2" not in d.items
        d.title = "c has seen it"
        c.one = d
    wall.t += timedelta(days=1)
    assert a.compact(retention=timedelta(days=30)) == 1
    assert tombstones_in(store) == {"one/@snapshot.json": 0}
    with b:
        d = b.one
        assert d is not None
        assert d.title == "c has seen it" and list(d.items) == ["i1"] and d.tags == ["c"]


def test_unstamped_copy_is_adopted_once_and_cannot_resurrect() -> None:
    events = EventManager()
    rec = Recorder()
    events.connect(StoreModificationEvent, rec)
    store = DictMemoryStore(event_manager=events)
    store.connect()
    store.set("docs/x/y/legacy.json", (b'{"title": "legacy"}', {}))
    store.set("one/legacy.json", (b'{"title": "legacy", "tags": ["t1"]}', {}))
    a = S(session("a"), store)
    with a:
        assert a.docs["x"]["y"].title == "legacy"
        del a.docs["x"]["y"]
        d = a.one
        assert d is not None and d.tags == ["t1"]
        d.title = "a's title"
        a.one = d
    rec.events.clear()
    for _ in range(2):
        with a:
            assert list(a.docs["x"]) == []
            assert a.one is not None and a.one.title == "a's title"
    assert rec.events == []  # a already adopted: reads write nothing
    b = S(session("b"), store)
    with b:  # adopting is allowed, bringing back or overwriting is not
        assert list(b.docs) == [] and "y" not in b.docs["x"]
        assert b.one is not None and b.one.title == "a's title"
    with a:
        assert list(a.docs["x"]) == []
        assert a.one is not None and a.one.title == "a's title"


def test_compactor_clock_far_ahead_does_not_drop_acknowledged_edit() -> None:
    wall = Wall()
    store = memory()
    a, x = S(session("a", wall), store), S(session("x", wall), store)
    compactor = S(session("compactor", Wall(skew=timedelta(days=40))), store)
    with a:
        a.one = base_doc()
    read, compacted = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def in_flight() -> None:
        try:
            with x:
                d = x.one
                assert d is not None
                read.set()
                assert compacted.wait(5)
                d.title = "x edit"
                d.items["i1"].text = "x text"
                x.one = d
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=in_flight)
    t.start()
    assert read.wait(5)
    compactor.compact(retention=timedelta(days=30))
    compacted.set()
    t.join(5)
    assert not errors  # the commit was acknowledged
    with a:
        d = a.one
        assert d is not None
        assert d.title == "x edit"
        assert d.items["i1"].text == "x text"


def test_tombstones_collected_by_a_later_compaction_without_new_copies() -> None:
    wall = Wall()
    store = memory()
    a, b = S(session("a", wall), store), S(session("b", wall), store)
    with a:
        a.one = base_doc()
    wall.t += timedelta(seconds=1)
    with b:
        d = b.one
        assert d is not None
        del d.items["i2"]
        del d.items["i1"].subs["s1"]
        d.meta = None
        b.one = d
    a.compact(retention=timedelta(days=30))  # too young to collect: kept
    assert tombstones_in(store) == {"one/@snapshot.json": 3}
    wall.t += timedelta(days=40)  # every session has seen them, nobody is live
    a.compact(retention=timedelta(days=30))
    assert tombstones_in(store) == {"one/@snapshot.json": 0}
    with b:
        d = b.one
        assert d is not None and list(d.items) == ["i1"] and d.meta is None
