"""Hostile probes of storekeeper.stage, written from its docs and issue 17 only.

Passing tests document kept promises; ``xfail(strict=True)`` tests assert the correct
behaviour of a promise found broken.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storekeeper import DictMemoryStore, FileSystemStore, SqliteStore, errors, init_shared_store
from storekeeper.stage import (
    BaseStage,
    Element,
    Entities,
    Entry,
    Feed,
    MergeableDocument,
    RevisionSet,
    Route,
    Session,
    Stage,
    TransactionError,
    compile_format_to_pattern,
    entities,
)
from storekeeper.stage.session import HybridClock

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Note(Element):
    id: str
    text: str = ""
    done: bool = False


class Inner(Element):
    a: str = ""
    b: int = 0


class Doc(MergeableDocument):
    title: str = ""
    body: str = ""
    count: Any = None
    tags: list[str]
    inner: Inner | None = None
    notes: Entities[Note] = entities(key="id")


class DocStage(BaseStage):
    doc = Route(Doc, ["doc.{session.identifier}.json"])
    docs = Route(Doc, ["docs", "{0}", "{session.identifier}.json"])
    deep = Route(Doc, ["deep", "{0}", "{1}", "{session.identifier}.json"])


class Wall:
    """A wall clock moved by hand."""

    def __init__(self, at: datetime = EPOCH) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


_counter = iter(range(10**9))


def fresh(prefix: str, wall: Wall | None = None) -> Session:
    """A new, never-used session (sessions are interned process-wide)."""
    session = Session(f"{prefix}-{next(_counter)}")
    if wall is not None:
        session.clock = HybridClock(wall)
    return session


@pytest.fixture
def memory() -> Iterator[DictMemoryStore]:
    with DictMemoryStore() as made:
        yield made


@pytest.fixture(params=["filesystem", "sqlite"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "filesystem":
        init_shared_store(tmp_path / "fs")
        made: Any = FileSystemStore(tmp_path / "fs", durable=False)
    else:
        made = SqliteStore(tmp_path / "db.sqlite", durable=False)
    with made:
        yield made


def raw(store: Any) -> dict[str, bytes]:
    return {key: store.get_data(key).read() for key in store.list_keys()}


# -- sessions -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", " ", "a b", "a/b", "a\n", "\na", "é", "a:b", "a\x00"])
def test_invalid_identifiers_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        Session(bad)


@pytest.mark.parametrize("bad", [1, 1.5, b"a", bytearray(b"a"), ["a"], object()])
def test_non_str_identifier_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        Session(bad)  # type: ignore[arg-type]


def test_identifiers_case_insensitive_and_interned() -> None:
    upper = Session("MiXeD-Case_1.x")
    assert upper is Session("MiXeD-Case_1.x")
    assert upper.identifier == "MiXeD-Case_1.x"


@pytest.mark.parametrize("sneaky", ["\u212a", "\u017f", "\u0131"])
def test_non_ascii_case_folding_letters_rejected(sneaky: str) -> None:
    with pytest.raises(ValueError):
        Session(sneaky)


def test_str_subclass_identifier_is_interned_as_plain_str() -> None:
    class Weird(str):
        pass

    name = f"weird-{next(_counter)}"
    assert Session(Weird(name)) is Session(name)


# -- the hybrid logical clock ------------------------------------------------------------


def test_clock_never_goes_backwards_when_wall_jumps_back() -> None:
    wall = Wall()
    clock = HybridClock(wall)
    seen = [clock.now()]
    for step in [
        timedelta(hours=-5),
        timedelta(0),
        timedelta(days=-400),
        timedelta(microseconds=1),
    ]:
        wall.at = wall.at + step
        seen.append(clock.now())
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))
    assert all(moment.tzinfo is not None and moment.utcoffset() == timedelta(0) for moment in seen)


def test_clock_is_never_behind_what_it_observed_far_ahead() -> None:
    wall = Wall()
    clock = HybridClock(wall)
    far = EPOCH + timedelta(days=365 * 50)
    clock.observe(far)
    assert clock.now() > far
    wall.at = EPOCH + timedelta(days=1)
    assert clock.now() > far


def test_clock_non_utc_wall_is_converted() -> None:
    tz = timezone(timedelta(hours=9))
    clock = HybridClock(lambda: datetime(2026, 1, 1, 9, 0, tzinfo=tz))
    assert clock.now() == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert clock.now().utcoffset() == timedelta(0)


def test_clock_threads_strictly_unique() -> None:
    clock = HybridClock(Wall())
    out: list[datetime] = []
    lock = threading.Lock()

    def run() -> None:
        mine = [clock.now() for _ in range(500)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(out)) == len(out)


def test_edit_after_reading_far_ahead_copy_wins_through_stage(memory: DictMemoryStore) -> None:
    ahead = DocStage(fresh("ahead", Wall(EPOCH + timedelta(days=3650))), memory)
    behind = DocStage(fresh("behind", Wall(EPOCH)), memory)
    with ahead:
        ahead.doc = Doc(title="from the future")
    with behind:
        doc = behind.doc
        assert doc.title == "from the future"
        doc.title = "causally later"
        behind.doc = doc
    for stage in (ahead, behind):
        with stage:
            assert stage.doc.title == "causally later"


def test_edit_after_pull_of_far_ahead_doc_wins_without_stage() -> None:
    ahead = fresh("ahead", Wall(EPOCH + timedelta(days=3650)))
    behind = fresh("behind", Wall(EPOCH))
    doc = Doc(title="future")
    ahead.revise(doc)
    mine = behind.pull(doc)
    mine.title = "later"
    behind.revise(mine)
    assert mine.__revision__.updated_at > doc.__revision__.updated_at
    assert behind.merge(doc, mine).title == "later"
    assert behind.merge(mine, doc).title == "later"


def test_delete_after_reading_far_ahead_entity_sticks(memory: DictMemoryStore) -> None:
    ahead = DocStage(fresh("ahead", Wall(EPOCH + timedelta(days=3650))), memory)
    behind = DocStage(fresh("behind", Wall(EPOCH)), memory)
    with ahead:
        doc = Doc()
        doc.notes["n"] = Note(text="x")
        ahead.doc = doc
    with behind:
        doc = behind.doc
        del doc.notes["n"]
        behind.doc = doc
    for stage in (ahead, behind):
        with stage:
            assert "n" not in stage.doc.notes


# -- revision sets ----------------------------------------------------------------------


def test_revision_set_rules() -> None:
    a, b = fresh("rs"), fresh("rs")
    t0, t1 = EPOCH, EPOCH + timedelta(seconds=1)
    one = RevisionSet([(a, t1), (b, t0)])
    two = RevisionSet([(a, t0), (b, t1)])
    merged = one.merge(two)
    assert dict(merged) == {a: t1, b: t1}
    assert merged == two.merge(one)
    assert one.merge(one) == one
    assert dict(one) == {a: t1, b: t0}  # merge changed nothing
    assert one.contains((a, t0)) and one.contains((a, t1))
    assert not one.contains((a, t1 + timedelta(microseconds=1)))
    assert not one.contains((fresh("rs"), t0))
    assert one.copy() == one and one.copy() is not one
    assert RevisionSet([(a, t0), (a, t1)])[a] == t1
    with pytest.raises(TypeError):
        one.merge()
    with pytest.raises(TypeError):
        one.merge({a: t1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RevisionSet([("not-a-session", t0)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        RevisionSet([(a, "2026-01-01")])  # type: ignore[list-item]


# -- the merge is a join -------------------------------------------------------------------

SESSIONS = [f"join-{name}" for name in ("a", "b", "c")]

op = st.one_of(
    st.tuples(st.just("title"), st.sampled_from(["", "x", "y", "z"])),
    st.tuples(st.just("body"), st.sampled_from(["p", "q"])),
    st.tuples(st.just("tag"), st.sampled_from(["t1", "t2", "t3"])),
    st.tuples(st.just("note"), st.sampled_from(["n1", "n2"]), st.sampled_from(["", "u", "v"])),
    st.tuples(st.just("del"), st.sampled_from(["n1", "n2"])),
    st.tuples(st.just("inner"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("noinner")),
)
step = st.tuples(
    st.sampled_from(range(3)),  # session
    st.lists(st.integers(0, 30), max_size=2),  # earlier versions merged in as a base
    st.lists(op, max_size=4),
    st.integers(-5, 5),  # wall clock skew, seconds
)


def _apply(doc: Doc, operation: tuple[Any, ...]) -> None:
    kind = operation[0]
    if kind == "title":
        doc.title = operation[1]
    elif kind == "body":
        doc.body = operation[1]
    elif kind == "tag":
        doc.tags.append(operation[1])
    elif kind == "note":
        if operation[1] in doc.notes:
            doc.notes[operation[1]].text = operation[2]
        else:
            doc.notes[operation[1]] = Note(text=operation[2])
    elif kind == "del":
        if operation[1] in doc.notes:
            del doc.notes[operation[1]]
    elif kind == "inner":
        doc.inner = Inner(a=operation[1])
    else:
        doc.inner = None


def _build(history: list[Any]) -> list[Doc]:
    walls = [Wall(EPOCH) for _ in SESSIONS]
    sessions = []
    for name, wall in zip(SESSIONS, walls, strict=True):
        session = Session(name)
        session.clock = HybridClock(wall)
        sessions.append(session)
    versions: list[Doc] = []
    for index, (who, bases, ops, skew) in enumerate(history):
        session = sessions[who]
        walls[who].at = EPOCH + timedelta(seconds=index + skew)
        doc = Doc()
        for base in bases:
            if versions:
                doc = session.merge(doc, versions[base % len(versions)])
        doc = session.pull(doc)
        for operation in ops:
            _apply(doc, operation)
        session.revise(doc)
        versions.append(doc)
    return versions


def _view(doc: Doc) -> Any:
    inner = None if doc.inner is None else (doc.inner.a, doc.inner.b)
    notes = {key: (note.text, note.done) for key, note in doc.notes.items()}
    return (doc.title, doc.body, list(doc.tags), inner, notes)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(step, min_size=3, max_size=8), st.data())
def test_merge_is_a_join_on_random_histories(history: list[Any], data: st.DataObject) -> None:
    versions = _build(history)
    x, y, z = (versions[data.draw(st.integers(0, len(versions) - 1))] for _ in range(3))
    merger = Session("join-m")
    merge = merger.merge
    assert _view(merge(x, y)) == _view(merge(y, x))
    assert _view(merge(x, x)) == _view(x)
    assert _view(merge(merge(x, y), z)) == _view(merge(x, merge(y, z)))
    # a merge result keeps merging like its value: it absorbs its inputs
    xy = merge(x, y)
    assert _view(merge(xy, x)) == _view(xy)
    assert _view(merge(xy, y)) == _view(xy)


def test_same_stamp_different_sessions_tie_breaks_by_session() -> None:
    wall = Wall()
    a = Session("tie-a")
    b = Session("tie-b")
    a.clock, b.clock = HybridClock(wall), HybridClock(wall)
    da, db = Doc(title="A"), Doc(title="B")
    a.revise(da)
    b.revise(db)
    assert da.__revision__.updated_at == db.__revision__.updated_at
    assert a.merge(da, db).title == b.merge(db, da).title == "B"


def test_same_session_same_stamp_merge_is_commutative() -> None:
    name = f"twin-{next(_counter)}"
    wall = Wall()
    session = Session(name)
    session.clock = HybridClock(wall)
    one = Doc(title="one")
    session.revise(one)
    session.clock = HybridClock(wall)  # the second process: its own clock, same wall time
    two = Doc(title="two")
    session.revise(two)
    assert one.__revision__ == two.__revision__
    assert session.merge(one, two).title == session.merge(two, one).title


def test_fresh_object_does_not_erase_other_sessions_data(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("fa"), memory)
    b = DocStage(fresh("fb"), memory)
    with a:
        doc = Doc(title="kept", body="kept too", tags=["x"])
        doc.notes["n"] = Note(text="t")
        doc.inner = Inner(a="in")
        a.doc = doc
    with b:
        b.doc = Doc()  # nothing assigned, defaults only
    with b:
        doc = b.doc
        assert (doc.title, doc.body, doc.tags) == ("kept", "kept too", ["x"])
        assert doc.notes["n"].text == "t" and doc.inner is not None and doc.inner.a == "in"


def test_stale_read_copy_only_writes_assigned_fields(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("sa"), memory)
    b = DocStage(fresh("sb"), memory)
    with a:
        a.doc = Doc(title="v1", body="b1")
    with b:
        stale = b.doc
    with a:
        doc = a.doc
        doc.title = "v2"
        a.doc = doc
    with b:
        stale.body = "b2"
        b.doc = stale
    with a:
        doc = a.doc
        assert (doc.title, doc.body) == ("v2", "b2")


def test_nested_document_merges_field_by_field() -> None:
    a, b = fresh("na", Wall()), fresh("nb", Wall())
    base = Doc(inner=Inner(a="0", b=0))
    a.revise(base)
    left = b.pull(base)
    right = a.pull(base)
    assert left.inner is not None and right.inner is not None
    left.inner.a = "left"
    right.inner.b = 7
    b.revise(left)
    a.clock.observe(left.__revision__.updated_at)
    a.revise(right)
    merged = a.merge(left, right)
    assert merged.inner is not None and (merged.inner.a, merged.inner.b) == ("left", 7)


def test_entity_tombstone_and_readd(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("ea"), memory)
    b = DocStage(fresh("eb"), memory)
    with a:
        doc = Doc()
        doc.notes["n"] = Note(text="old")
        a.doc = doc
    with b:
        doc = b.doc
        del doc.notes["n"]
        b.doc = doc
    with a:  # a's own older copy must not resurrect it
        assert "n" not in a.doc.notes
        a.doc = a.doc
    with b:
        assert "n" not in b.doc.notes
    with a:
        doc = a.doc
        doc.notes["n"] = Note(text="again")
        a.doc = doc
    for stage in (a, b):
        with stage:
            assert stage.doc.notes["n"].text == "again"


def test_entity_key_mismatch_is_value_error() -> None:
    doc = Doc()
    with pytest.raises(ValueError):
        doc.notes["x"] = Note(id="y")


def test_scalar_list_union_grow_only_ordered() -> None:
    a, b = fresh("la", Wall()), fresh("lb", Wall(EPOCH + timedelta(seconds=1)))
    base = Doc(tags=["x"])
    a.revise(base)
    left, right = a.pull(base), b.pull(base)
    left.tags.append("l")
    right.tags.append("r")
    right.tags.remove("x")  # removal is not a write
    a.revise(left)
    b.revise(right)
    one, two = a.merge(left, right), a.merge(right, left)
    assert list(one.tags) == list(two.tags)
    assert set(one.tags) == {"x", "l", "r"}
    assert next(iter(one.tags)) == "x"


# -- transactions -----------------------------------------------------------------------


def test_doubly_begun_transaction(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("tx"), memory)
    with stage:
        stage.doc = Doc(title="outer")
        with pytest.raises(TransactionError) as info:
            stage.__enter__()
        assert isinstance(info.value, RuntimeError)
        assert isinstance(info.value, errors.TransactionError)
        assert "test_stage_hostile" in str(info.value)  # says where the first began
        doc = stage.doc
        doc.body = "still open"
        stage.doc = doc
    with stage:
        assert (stage.doc.title, stage.doc.body) == ("outer", "still open")


def test_operations_outside_transaction_raise(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("out"), memory)
    for action in (
        lambda: stage.doc,
        lambda: setattr(stage, "doc", Doc()),
        lambda: list(stage.docs),
        stage.get_current_transaction,
    ):
        with pytest.raises(TransactionError):
            action()


def test_touch_outside_transaction_raises(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("out"), memory)
    try:
        with pytest.raises(TransactionError):
            stage.touch()
    finally:
        assert raw(memory) == {}


def test_rolled_back_transaction_writes_nothing_at_all(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("rb"), memory)
    with pytest.raises(ValueError), stage:
        stage.doc = Doc(title="rolled back")
        raise ValueError("boom")
    assert raw(memory) == {}


def _data(store: Any) -> dict[str, bytes]:
    return {key: value for key, value in raw(store).items() if not key.startswith(".sessions/")}


def test_exception_discards_everything(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("rb"), memory)
    before = _data(memory)
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), stage:
            stage.doc = Doc(title="rolled back")
            stage.docs["k"] = Doc(title="rolled back")
            raise exc
    assert _data(memory) == before
    with stage:
        assert stage.doc is None
        assert list(stage.docs) == []


def test_transactions_per_thread_are_isolated(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("thr"), memory)
    inside = threading.Event()
    release = threading.Event()
    seen: list[Any] = []

    def other() -> None:
        with stage:
            stage.docs["other"] = Doc(title="o")
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with stage:
        thread.start()
        assert inside.wait(10)
        seen.append(list(stage.docs))  # the other thread's buffer is not visible
        stage.docs["mine"] = Doc(title="m")
        release.set()
        thread.join()
    assert seen == [[]]
    with stage:
        assert list(stage.docs) == ["mine", "other"]


def test_transactions_per_asyncio_task(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("task"), memory)

    async def task(name: str, barrier: list[asyncio.Event], mine: int) -> list[str]:
        with stage:
            stage.docs[name] = Doc(title=name)
            barrier[mine].set()
            await barrier[1 - mine].wait()
            listed = list(stage.docs)  # neither task has committed yet
            barrier[2 + mine].set()
            await barrier[3 - mine].wait()
            return listed

    async def main() -> list[list[str]]:
        barrier = [asyncio.Event() for _ in range(4)]
        return list(await asyncio.gather(task("a", barrier, 0), task("b", barrier, 1)))

    assert asyncio.run(main()) == [["a"], ["b"]]
    with stage:
        assert list(stage.docs) == ["a", "b"]


def test_read_your_writes_and_reads_write_nothing(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("ryw"), memory)
    b = DocStage(fresh("ryw"), memory)
    with a:
        a.doc = Doc(title="a")
        a.docs["x"] = Doc(title="x")
        assert a.doc.title == "a" and a.docs["x"].title == "x"
    with b:
        b.touch()
    before = raw(memory)
    with b:
        assert b.doc.title == "a"
        assert [doc.title for doc in b.docs.values()] == ["x"]
        assert list(b.deep) == []
    assert raw(memory) == before


# -- same session, several processes ----------------------------------------------------


def _same_session_worker(kind: str, location: str, name: str, worker: int, count: int) -> None:
    store: Any
    if kind == "filesystem":
        store = FileSystemStore(location, durable=False)
    else:
        store = SqliteStore(location, durable=False)
    with store:
        stage = Stage(Session(name), store)
        for index in range(count):
            with stage:
                feed = stage.feeds.get("f") or Feed(id="f")
                feed.entries[f"w{worker}-{index}"] = Entry(title=str(index))
                feed.title = f"w{worker}-{index}"
                stage.feeds["f"] = feed


@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_two_processes_same_session_lose_nothing(kind: str, tmp_path: Path) -> None:
    if kind == "filesystem":
        location = str(tmp_path / "fs")
        init_shared_store(location)
    else:
        location = str(tmp_path / "db.sqlite")
        SqliteStore(location, durable=False).connect()
    context = multiprocessing.get_context("spawn")
    name = "same-session"
    count = 12
    workers = [
        context.Process(target=_same_session_worker, args=(kind, location, name, worker, count))
        for worker in range(2)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    store: Any = FileSystemStore(location) if kind == "filesystem" else SqliteStore(location)
    with store:
        stage = Stage(Session("reader-x"), store)
        with stage:
            feed = stage.feeds["f"]
            expected = {f"w{w}-{i}" for w in range(2) for i in range(count)}
            assert set(feed.entries) == expected
            assert feed.title in {f"w{w}-{count - 1}" for w in range(2)}


# -- directories and keys ---------------------------------------------------------------

HOSTILE_KEYS = [
    "https://example.org/feed.xml?a=1&b=%2F#frag",
    "a/b",
    "%",
    "%2F",
    "..",
    ".",
    "ünïcødé ✓",
    "{0}",
    "{session.identifier}",
    "back\\slash",
    " lead",
    "&",
    "/",
    "z",
    "A",
]


def test_directory_hostile_keys_round_trip(disk: Any, tmp_path: Path) -> None:
    stage = DocStage(fresh("keys"), disk)
    with stage:
        for key in HOSTILE_KEYS:
            stage.docs[key] = Doc(title=key)
        assert list(stage.docs) == sorted(HOSTILE_KEYS)
    with stage:
        assert list(stage.docs) == sorted(HOSTILE_KEYS)
        assert len(stage.docs) == len(HOSTILE_KEYS)
        for key in HOSTILE_KEYS:
            assert key in stage.docs
            assert stage.docs[key].title == key
    if (tmp_path / "fs").exists():
        assert all(str(p).startswith(str(tmp_path / "fs")) for p in tmp_path.rglob("*"))


def test_long_url_feed_id_round_trips(disk: Any) -> None:
    key = "https://example.org/" + "very-long-path/" * 20 + "feed.xml"
    stage = Stage(fresh("long"), disk)
    with stage:
        stage.feeds[key] = Feed(id=key, title="long")
    with stage:
        assert list(stage.feeds) == [key]
        assert stage.feeds[key].title == "long"


def test_empty_key_component_is_rejected_or_round_trips(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("empty"), memory)
    try:
        with stage:
            stage.docs[""] = Doc(title="empty")
    except (ValueError, KeyError):
        return
    with stage:
        assert list(stage.docs) == [""]
        assert stage.docs[""].title == "empty"


def test_directory_semantics_deep(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("dir"), memory)
    b = DocStage(fresh("dir"), memory)
    with a:
        assert len(a.deep) == 0 and list(a.deep) == []
        missing = a.deep["nope"]
        assert len(missing) == 0 and list(missing) == []
        assert "x" not in a.docs
        with pytest.raises(KeyError):
            a.docs["x"]
        a.deep["c2"]["r1"] = Doc(title="c2r1")
        a.deep["c1"]["r2"] = Doc(title="c1r2")
        a.deep["c1"]["r1"] = Doc(title="c1r1")
        assert list(a.deep) == ["c1", "c2"]
        assert list(a.deep["c1"]) == ["r1", "r2"]
    with b:
        del b.deep["c1"]["r1"]
        assert list(b.deep["c1"]) == ["r2"]
        with pytest.raises(KeyError):
            b.deep["c1"]["r1"]
    with a:  # a's older copy does not bring it back
        assert list(a.deep["c1"]) == ["r2"]
        assert len(a.deep["c1"]) == 1
        a.deep["c1"]["r1"] = Doc(title="back")
    with b:
        assert b.deep["c1"]["r1"].title == "back"


def test_attribute_route_missing_is_none(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("attr"), memory)
    with stage:
        assert stage.doc is None


def test_compile_format_to_pattern() -> None:
    assert compile_format_to_pattern("string{0}like{1}this{{2}}").pattern == (
        "^string(.*?)like(.*?)this\\{2\\}$"
    )
    pattern = compile_format_to_pattern("{session.identifier}.json")
    assert pattern.match("laptop.json").group(1) == "laptop"
    assert not pattern.match("laptopxjson")
    assert compile_format_to_pattern("a.b{0}").match("a.bX")
    assert not compile_format_to_pattern("a.b{0}").match("aXbX")


# -- session identifiers that look like paths -------------------------------------------


@pytest.mark.parametrize("name", ["..", "."])
def test_dot_identifiers_stay_inside_the_store(name: str, tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    with FileSystemStore(tmp_path / "fs", durable=False) as store:
        stage = DocStage(Session(name), store)
        with stage:
            stage.touch()
            stage.doc = Doc(title=name)
            stage.docs["k"] = Doc(title=name)
        with stage:
            assert stage.doc.title == name
            assert stage.docs["k"].title == name
            assert Session(name) in stage.sessions
    assert all(str(p).startswith(str(tmp_path / "fs")) for p in tmp_path.rglob("*"))


# -- compaction -------------------------------------------------------------------------


def _open(kind: str, location: str) -> Any:
    if kind == "filesystem":
        return FileSystemStore(location, durable=False)
    return SqliteStore(location, durable=False)


def _writer_during_compaction(kind: str, location: str, name: str, count: int) -> None:
    with _open(kind, location) as store:
        stage = Stage(Session(name), store)
        for index in range(count):
            with stage:
                feed = stage.feeds.get("f") or Feed(id="f")
                feed.entries[f"{name}-{index}"] = Entry(title=str(index))
                if index % 3 == 2:
                    del feed.entries[f"{name}-{index - 1}"]
                stage.feeds["f"] = feed


@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_compact_while_other_processes_write(kind: str, tmp_path: Path) -> None:
    if kind == "filesystem":
        location = str(tmp_path / "fs")
        init_shared_store(location)
    else:
        location = str(tmp_path / "db.sqlite")
        SqliteStore(location, durable=False).connect()
    context = multiprocessing.get_context("spawn")
    count = 12
    names = ["cw-a", "cw-b"]
    workers = [
        context.Process(target=_writer_during_compaction, args=(kind, location, name, count))
        for name in names
    ]
    for process in workers:
        process.start()
    with _open(kind, location) as store:
        compactor = Stage(Session("compactor"), store)
        while any(process.is_alive() for process in workers):
            compactor.compact(retention=timedelta(days=1))
        for process in workers:
            process.join(120)
            assert process.exitcode == 0
        compactor.compact(retention=timedelta(days=1))
        with compactor:
            entries = set(compactor.feeds["f"].entries)
    expected = {
        f"{name}-{index}"
        for name in names
        for index in range(count)
        if index % 3 != 1 or index == count - 1
    }
    assert entries == expected


def test_returning_session_after_compaction_never_resurrects(memory: DictMemoryStore) -> None:
    wall = Wall()
    a = DocStage(fresh("ret", wall), memory)
    b = DocStage(fresh("ret", wall), memory)
    with a:
        a.touch()
        doc = Doc(title="t")
        doc.notes["gone"] = Note(text="x")
        doc.notes["kept"] = Note(text="y")
        a.doc = doc
    wall.at += timedelta(seconds=1)
    with b:
        b.touch()
        doc = b.doc
        del doc.notes["gone"]
        b.doc = doc
    wall.at += timedelta(days=60)  # a is away longer than the retention
    b.session.clock = HybridClock(wall)
    with b:
        b.touch()
    b.compact(retention=timedelta(days=30))
    with b:
        assert set(b.doc.notes) == {"kept"}
    with a:  # a returns with its stale copy and edits
        doc = a.doc
        assert set(doc.notes) == {"kept"}
        doc.notes["kept"].text = "edited"
        a.doc = doc
    for stage in (a, b):
        with stage:
            assert set(stage.doc.notes) == {"kept"}
            assert stage.doc.notes["kept"].text == "edited"


# -- damaged and foreign copies ---------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe garbage", b"{not json", b"[]", b'{"title": 5}', b"null"]
)
def test_damaged_copy_of_another_session(memory: DictMemoryStore, payload: bytes) -> None:
    a = DocStage(fresh("dmg"), memory)
    with a:
        a.docs["k"] = Doc(title="good")
    memory.set_data("docs/k/evil.json", payload)
    try:
        with a:
            title = a.docs["k"].title
    except errors.CorruptFileError:
        return  # a clear error naming the copy (a StorekeeperError and a ValueError)
    assert title == "good"  # or the damaged copy is ignored


def test_foreign_file_in_synced_folder_does_not_break_reads(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("sync"), memory)
    with a:
        a.docs["k"] = Doc(title="good")
    # what Dropbox leaves after a conflict: not a valid session identifier
    memory.set_data("docs/k/laptop (conflicted copy 2026-01-01).json", b"{}")
    with a:
        assert list(a.docs) == ["k"]
        assert a.docs["k"].title == "good"


# -- hostile values and wrong types -----------------------------------------------------


def _round_trip(store: Any, value: Any) -> Any:
    stage = DocStage(fresh("val"), store)
    with stage:
        stage.doc = Doc(count=value)
    other = DocStage(fresh("val"), store)
    with other:
        return other.doc.count


@pytest.mark.parametrize("value", [10**400, -(10**400), 2**64, {"a": [1, 2.5, None, True]}])
def test_json_values_round_trip(memory: DictMemoryStore, value: Any) -> None:
    assert _round_trip(memory, value) == value


def test_nan_is_rejected_or_round_trips(memory: DictMemoryStore) -> None:
    try:
        value = _round_trip(memory, float("nan"))
    except (ValueError, TypeError):
        return
    assert isinstance(value, float) and math.isnan(value)


def test_gigantic_int_is_rejected_or_round_trips(memory: DictMemoryStore) -> None:
    value = 10**5000
    try:
        got = _round_trip(memory, value)
    except (ValueError, TypeError):
        stage = DocStage(fresh("val"), memory)
        with stage:
            assert stage.doc is None  # nothing unreadable was written
        return
    assert got == value


@pytest.mark.parametrize("value", [{(1, 2): "a"}, {"x": {(1,): 1}}])
def test_unencodable_dict_keys_rejected(memory: DictMemoryStore, value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        _round_trip(memory, value)
    stage = DocStage(fresh("val"), memory)
    with stage:
        assert stage.doc is None


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, {True: 1}, {1: "a", "1": "b"}])
def test_non_str_dict_keys_rejected_or_round_trip(memory: DictMemoryStore, value: Any) -> None:
    try:
        got = _round_trip(memory, value)
    except (ValueError, TypeError):
        stage = DocStage(fresh("val"), memory)
        with stage:
            assert stage.doc is None
        return
    assert got == value


def test_non_json_value_rejected_cleanly(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("obj"), memory)
    with pytest.raises((TypeError, ValueError)), stage:
        stage.doc = Doc(count=object())
    with stage:
        assert stage.doc is None


def test_wrong_types() -> None:
    session = fresh("wt")
    with pytest.raises(TypeError):
        Doc(nope=1)
    with pytest.raises(TypeError):
        session.revise({"title": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        session.merge(Doc(), Feed(id="x"))
    with pytest.raises(TypeError):
        session.merge(Doc(), {"title": "x"})  # type: ignore[arg-type]


# -- a sequential history through the stage, with hostile wall clocks -------------------

clock_step = st.one_of(
    st.integers(-(10**6), 10**6).map(lambda s: timedelta(seconds=s)),
    st.just(timedelta(days=3650)),
    st.just(timedelta(days=-3650)),
    st.just(timedelta(0)),
)
stage_op = st.one_of(
    st.tuples(st.just("title"), st.sampled_from(["x", "y", "z"])),
    st.tuples(st.just("tag"), st.sampled_from(["t1", "t2", "t3"])),
    st.tuples(st.just("note"), st.sampled_from(["n1", "n2"]), st.sampled_from(["u", "v", "w"])),
    st.tuples(st.just("del"), st.sampled_from(["n1", "n2"])),
    st.tuples(st.just("inner"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("noinner")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 2), clock_step, stage_op), min_size=1, max_size=12))
def test_sequential_edits_through_stage_match_model(history: list[Any]) -> None:
    """Each edit is made after reading every earlier one, so it must win however the
    sessions' wall clocks are skewed, jump back or run far ahead."""
    walls = [Wall(EPOCH) for _ in range(3)]
    with DictMemoryStore() as store:
        stages = [DocStage(fresh("seq", wall), store) for wall in walls]
        model: dict[str, Any] = {"title": "", "tags": [], "notes": {}, "inner": None}
        for who, skew, operation in history:
            walls[who].at = walls[who].at + skew
            stage = stages[who]
            with stage:
                doc = stage.doc or Doc()
                _apply(doc, operation)
                stage.doc = doc
            kind = operation[0]
            if kind == "title":
                model["title"] = operation[1]
            elif kind == "tag" and operation[1] not in model["tags"]:
                model["tags"].append(operation[1])
            elif kind == "note":
                model["notes"][operation[1]] = operation[2]
            elif kind == "del":
                model["notes"].pop(operation[1], None)
            elif kind == "inner":
                model["inner"] = operation[1]
            elif kind == "noinner":
                model["inner"] = None
        for stage in stages:
            with stage:
                doc = stage.doc
                got = {
                    "title": doc.title,
                    "tags": list(dict.fromkeys(doc.tags)),
                    "notes": {key: note.text for key, note in doc.notes.items()},
                    "inner": None if doc.inner is None else doc.inner.a,
                }
                assert got == model


def test_far_ahead_copy_is_accepted_and_logged(
    memory: DictMemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    ahead = DocStage(fresh("log", Wall(datetime.now(UTC) + timedelta(days=3650))), memory)
    local = DocStage(fresh("log"), memory)
    with ahead:
        ahead.doc = Doc(title="future")
    caplog.set_level("DEBUG")
    with local:
        assert local.doc.title == "future"
    assert any(record.name.startswith("storekeeper") for record in caplog.records)


def test_readme_two_devices(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'reader'}?create=true"
    laptop = Stage(fresh("laptop"), url)
    phone = Stage(fresh("phone"), f"file://{tmp_path / 'reader'}")
    fid = "https://example.org/feed.xml"
    with laptop:
        feed = Feed(id=fid, title="Example")
        feed.entries["post-1"] = Entry(title="Hello", link="https://example.org/1")
        feed.entries["post-2"] = Entry(title="World", link="https://example.org/2")
        laptop.feeds[feed.id] = feed
    with phone:
        feed = phone.feeds[fid]
        feed.entries["post-1"].read = True
        phone.feeds[feed.id] = feed
    with laptop:
        feed = laptop.feeds[fid]
        feed.entries["post-2"].starred = True
        laptop.feeds[feed.id] = feed
    for device in (phone, laptop):
        with device:
            entries = device.feeds[fid].entries
            assert entries["post-1"].read and entries["post-2"].starred
            assert not entries["post-1"].starred and not entries["post-2"].read


def test_damaged_copy_is_a_clear_corrupt_file_error(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("dmg"), memory)
    with a:
        a.docs["k"] = Doc(title="good")
    memory.set_data("docs/k/evil.json", b"{not json")
    with a, pytest.raises(errors.CorruptFileError) as info:
        a.docs["k"]
    assert isinstance(info.value, ValueError) and "docs/k/evil.json" in str(info.value)


def test_compaction_then_session_with_clock_behind_the_floor(memory: DictMemoryStore) -> None:
    """A session whose wall clock is years behind returns after a compaction dropped a
    tombstone: what it adds after reading the snapshot is after everything it read."""
    wall = Wall()
    a = DocStage(fresh("floor", wall), memory)
    b = DocStage(fresh("floor", wall), memory)
    late = DocStage(fresh("floor", Wall(EPOCH - timedelta(days=3650))), memory)
    with a:
        a.touch()
        doc = Doc()
        doc.notes["gone"] = Note(text="x")
        doc.notes["kept"] = Note(text="y")
        a.doc = doc
    wall.at += timedelta(seconds=1)
    with b:
        doc = b.doc
        del doc.notes["gone"]
        b.doc = doc
    wall.at += timedelta(days=60)
    with b:
        b.touch()
    b.compact(retention=timedelta(days=30))
    with late:
        doc = late.doc
        assert set(doc.notes) == {"kept"}
        doc.notes["gone"] = Note(text="re-added")
        doc.notes["new"] = Note(text="brand new")
        late.doc = doc
    for stage in (a, b, late):
        with stage:
            notes = stage.doc.notes
            assert {key: note.text for key, note in notes.items()} == {
                "gone": "re-added",
                "kept": "y",
                "new": "brand new",
            }


def _skewed_same_session(kind: str, location: str, name: str, title: str, years: int) -> None:
    store: Any = (
        FileSystemStore(location, durable=False)
        if kind == "filesystem"
        else SqliteStore(location, durable=False)
    )
    session = Session(name)
    session.clock = HybridClock(lambda: datetime.now(UTC) + timedelta(days=365 * years))
    with store:
        stage = Stage(session, store)
        with stage:
            feed = stage.feeds.get("f") or Feed(id="f")
            feed.title = title
            stage.feeds["f"] = feed


@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_same_session_processes_later_edit_wins_despite_clock(kind: str, tmp_path: Path) -> None:
    if kind == "filesystem":
        location = str(tmp_path / "fs")
        init_shared_store(location)
    else:
        location = str(tmp_path / "db.sqlite")
        SqliteStore(location, durable=False).connect()
    context = multiprocessing.get_context("spawn")
    for title, years in [("ahead", 10), ("behind", -10), ("now", 0)]:
        process = context.Process(
            target=_skewed_same_session, args=(kind, location, "skewed-twin", title, years)
        )
        process.start()
        process.join(120)
        assert process.exitcode == 0
    store: Any = FileSystemStore(location) if kind == "filesystem" else SqliteStore(location)
    with store:
        stage = Stage(Session("skew-reader"), store)
        with stage:
            assert stage.feeds["f"].title == "now"


def test_threads_of_one_stage_lose_nothing(memory: DictMemoryStore) -> None:
    stage = Stage(fresh("threads"), memory)

    def run(worker: int) -> None:
        for index in range(15):
            with stage:
                feed = stage.feeds.get("f") or Feed(id="f")
                feed.entries[f"{worker}-{index}"] = Entry(title="t")
                stage.feeds["f"] = feed

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with stage:
        assert len(stage.feeds["f"].entries) == 60


def test_merge_returns_input_pulled_and_changes_nothing() -> None:
    a, b = fresh("pull", Wall()), fresh("pull", Wall(EPOCH + timedelta(seconds=5)))
    mine = Doc(title="x")
    a.revise(mine)
    assert a.merge(mine, mine) is mine
    theirs = b.pull(mine)
    theirs.body = "later"
    b.revise(theirs)
    snapshot = (_view(mine), mine.__revision__, _view(theirs), theirs.__revision__)
    merged = a.merge(mine, theirs)
    assert (_view(mine), mine.__revision__, _view(theirs), theirs.__revision__) == snapshot
    assert merged.__revision__.session is a
    assert _view(merged) == _view(theirs)


def test_route_rejects_wrong_document_type(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("type"), memory)
    with stage:
        with pytest.raises(TypeError):
            stage.docs["k"] = Feed(id="x")
        with pytest.raises(TypeError):
            stage.doc = Feed(id="x")
        with pytest.raises(KeyError):
            del stage.docs["never"]


def test_default_factories_are_not_shared() -> None:
    one, two = Doc(), Doc()
    one.tags.append("x")
    one.notes["n"] = Note()
    assert list(two.tags) == [] and len(two.notes) == 0


def test_copy_stamped_at_end_of_time_does_not_brick_readers(memory: DictMemoryStore) -> None:
    end = datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=5)
    broken = DocStage(fresh("rtc", Wall(end)), memory)
    with broken:
        broken.doc = Doc(title="from year 9999")
    reader = DocStage(fresh("victim"), memory)
    for index in range(5):
        with reader:
            doc = reader.doc
            doc.body = f"edit {index}"
            reader.doc = doc
        with reader:
            assert reader.doc.body == f"edit {index}"
    with reader:
        reader.docs["unrelated"] = Doc(title="u")


def test_revision_set_rejects_naive_datetimes() -> None:
    with pytest.raises((TypeError, ValueError)):
        RevisionSet([(fresh("naive"), datetime(2026, 1, 1))])


def test_clock_rejects_naive_times() -> None:
    with pytest.raises(ValueError):
        HybridClock().observe(datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        HybridClock(lambda: datetime(2026, 1, 1)).now()


@pytest.mark.parametrize("key", ["\ud800", "a\udcff"])
def test_unencodable_key_fails_cleanly(memory: DictMemoryStore, key: str) -> None:
    stage = DocStage(fresh("surrogate"), memory)
    with stage:
        stage.docs["ok"] = Doc(title="ok")
    try:
        with stage:
            stage.docs[key] = Doc(title="bad")
    except ValueError:
        pass
    with stage:
        assert list(stage.docs) == ["ok"]
        assert stage.docs["ok"].title == "ok"


def test_unicode_normalisation_forms_are_distinct_keys(disk: Any) -> None:
    nfc, nfd = "\u00e9", "e\u0301"
    stage = DocStage(fresh("nfc"), disk)
    with stage:
        stage.docs[nfc] = Doc(title="nfc")
        stage.docs[nfd] = Doc(title="nfd")
    with stage:
        assert sorted(stage.docs) == sorted([nfc, nfd])
        assert (stage.docs[nfc].title, stage.docs[nfd].title) == ("nfc", "nfd")


def test_compaction_between_read_and_commit_of_open_transaction(memory: DictMemoryStore) -> None:
    wall = Wall()
    a = DocStage(fresh("mid", wall), memory)
    b = DocStage(fresh("mid", wall), memory)
    compactor = DocStage(fresh("mid", wall), memory)
    with a:
        doc = Doc(title="t")
        doc.notes["n1"] = Note(text="one")
        doc.notes["n2"] = Note(text="two")
        a.doc = doc
    wall.at += timedelta(seconds=1)
    with b:
        doc = b.doc
        del doc.notes["n1"]
        b.doc = doc
    wall.at += timedelta(days=60)  # nobody live: the compaction may drop the tombstone
    done = threading.Event()
    with a:
        doc = a.doc
        assert set(doc.notes) == {"n2"}
        doc.notes["n2"].text = "edited while compacting"
        doc.notes["n3"] = Note(text="added while compacting")
        a.doc = doc
        thread = threading.Thread(
            target=lambda: (compactor.compact(retention=timedelta(days=30)), done.set())
        )
        thread.start()
        thread.join(30)
        assert done.is_set()
    compactor.compact(retention=timedelta(days=30))
    for stage in (a, b, compactor):
        with stage:
            notes = {key: note.text for key, note in stage.doc.notes.items()}
            assert notes == {"n2": "edited while compacting", "n3": "added while compacting"}
            assert stage.doc.title == "t"


def test_directory_delete_and_readd_inside_one_transaction(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("inside", Wall()), memory)
    with stage:
        stage.docs["gone"] = Doc(title="g")
        stage.docs["back"] = Doc(title="b")
        del stage.docs["gone"]
        del stage.docs["back"]
        assert list(stage.docs) == []
        stage.docs["back"] = Doc(title="again")
        assert list(stage.docs) == ["back"]
        assert len(stage.docs) == 1
    with stage:
        assert list(stage.docs) == ["back"]
        assert stage.docs["back"].title == "again"


def test_entities_mutable_mapping_mixins_leave_tombstones(memory: DictMemoryStore) -> None:
    a = DocStage(fresh("mix"), memory)
    b = DocStage(fresh("mix"), memory)
    with a:
        doc = Doc()
        doc.notes.update({"p": Note(text="p"), "q": Note(text="q"), "r": Note(text="r")})
        a.doc = doc
    with b:
        doc = b.doc
        assert doc.notes.pop("p").text == "p"
        doc.notes.clear()
        b.doc = doc
    with a:
        a.doc = a.doc  # a rewrites its (older) copy
    for stage in (a, b):
        with stage:
            assert len(stage.doc.notes) == 0


def test_child_task_and_thread_do_not_share_the_transaction(memory: DictMemoryStore) -> None:
    stage = DocStage(fresh("child", Wall()), memory)
    failures: list[BaseException] = []

    def in_thread() -> None:
        try:
            stage.doc  # noqa: B018
        except TransactionError as error:
            failures.append(error)

    async def child() -> None:
        stage.doc  # noqa: B018

    async def parent() -> None:
        with stage:
            stage.doc = Doc(title="parent")
            with pytest.raises(TransactionError):
                await asyncio.create_task(child())
            thread = threading.Thread(target=in_thread)
            thread.start()
            thread.join()

    asyncio.run(parent())
    assert len(failures) == 1
    with stage:
        assert stage.doc.title == "parent"


class OverlapStage(BaseStage):
    doc = Route(Doc, ["doc.{session.identifier}.json"])
    doc_extra = Route(Doc, ["doc.extra.{session.identifier}.json"])
    items = Route(Doc, ["items", "{0}", "{session.identifier}.json"])
    meta = Route(Doc, ["items", "{0}", "meta.{session.identifier}.json"])


def test_routes_with_overlapping_key_specs_do_not_cross_talk(memory: DictMemoryStore) -> None:
    a = OverlapStage(fresh("overlap"), memory)
    b = OverlapStage(fresh("overlap"), memory)
    with a:
        a.doc_extra = Doc(title="extra")
        a.meta["k"] = Doc(title="meta")
    with b:
        assert b.doc_extra.title == "extra"
        assert b.meta["k"].title == "meta"
        assert b.doc is None
        assert list(b.items) == []


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_sessions_and_revised_documents_copy_and_pickle(how: str) -> None:
    import copy
    import pickle

    def clone(value: Any) -> Any:
        if how == "deepcopy":
            return copy.deepcopy(value)
        return pickle.loads(pickle.dumps(value))

    session = Session("pickled")
    assert clone(session) is session
    doc = Doc(title="x")
    doc.notes["n"] = Note(text="t")
    session.revise(doc)
    again = clone(doc)
    assert _view(again) == _view(doc)
    assert again.__revision__ == doc.__revision__


def _identify(path: str, barrier: Any, queue: Any) -> None:
    from storekeeper.stage import default_identifier

    barrier.wait(30)
    queue.put(default_identifier(path))


def test_default_identifier_racing_processes_agree(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    path = str(tmp_path / "deep" / "dir" / "session-id")
    barrier, queue = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_identify, args=(path, barrier, queue)) for _ in range(3)]
    for process in workers:
        process.start()
    got = {queue.get(timeout=60) for _ in workers}
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    assert len(got) == 1
    identifier = got.pop()
    assert Session(identifier).identifier == identifier
    from storekeeper.stage import default_identifier

    assert default_identifier(path) == identifier


def test_session_file_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREKEEPER_SESSION_FILE", str(tmp_path / "id"))
    first = Session()
    assert first is Session()
    assert (tmp_path / "id").read_text().strip() == first.identifier


concurrent_step = st.tuples(
    st.integers(0, 2),  # which session
    st.booleans(),  # commit an open transaction (else open one / edit inside it)
    stage_op,
    clock_step,
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(concurrent_step, min_size=1, max_size=16))
def test_interleaved_transactions_converge(history: list[Any]) -> None:
    """Open transactions of three sessions interleave and commit in random order: every
    session then reads the same document, and an entity added but never deleted is kept."""
    walls = [Wall(EPOCH) for _ in range(3)]
    with DictMemoryStore() as store:
        stages = [DocStage(fresh("mix", wall), store) for wall in walls]
        open_docs: dict[int, Doc] = {}
        added: set[str] = set()
        deleted: set[str] = set()
        for who, commit, operation, skew in history:
            walls[who].at = walls[who].at + skew
            stage = stages[who]
            if commit and who in open_docs:
                stage.doc = open_docs.pop(who)
                stage.__exit__(None, None, None)
                continue
            if who not in open_docs:
                stage.__enter__()
                open_docs[who] = stage.doc or Doc()
            _apply(open_docs[who], operation)
            if operation[0] == "note":
                added.add(operation[1])
            elif operation[0] == "del":
                deleted.add(operation[1])
        for who, doc in open_docs.items():
            stages[who].doc = doc
            stages[who].__exit__(None, None, None)
        views = []
        for stage in stages:
            with stage:
                doc = stage.doc
                views.append(None if doc is None else _view(doc))
        assert views[0] == views[1] == views[2]
        if views[0] is not None:
            assert added - deleted <= set(views[0][4])


def test_refetched_feed_built_fresh_keeps_other_devices_marks(memory: DictMemoryStore) -> None:
    """A feed reader rebuilds a Feed from the network and writes it: the fresh entries
    never assign read/starred, so the marks another device made must survive."""
    fid = "https://example.org/feed.xml"
    laptop, phone = Stage(fresh("refetch"), memory), Stage(fresh("refetch"), memory)

    def fetched() -> Feed:
        feed = Feed(id=fid, title="Example")
        feed.entries["post-1"] = Entry(title="Hello", link="https://example.org/1")
        feed.entries["post-2"] = Entry(title="World", link="https://example.org/2")
        return feed

    with laptop:
        laptop.feeds[fid] = fetched()
    with phone:
        feed = phone.feeds[fid]
        feed.entries["post-1"].read = True
        feed.entries["post-2"].starred = True
        phone.feeds[fid] = feed
    with laptop:
        laptop.feeds[fid] = fetched()
    for device in (laptop, phone):
        with device:
            entries = device.feeds[fid].entries
            assert entries["post-1"].read and entries["post-2"].starred
            assert entries["post-1"].title == "Hello"


def test_fresh_nested_element_merges_with_other_sessions_fields(memory: DictMemoryStore) -> None:
    a, b = DocStage(fresh("nest"), memory), DocStage(fresh("nest"), memory)
    with a:
        a.doc = Doc(inner=Inner(b=5))
    with b:
        b.doc = Doc(inner=Inner(a="x"))
    for stage in (a, b):
        with stage:
            inner = stage.doc.inner
            assert inner is not None and (inner.a, inner.b) == ("x", 5)
