"""Compaction collects tombstones at every depth, and the merge stays a join with floors.

A document holds entities that hold entities, and nested elements. Deleting any of them
leaves a tombstone; a compaction whose every live session's copy covers it drops it from
the stored snapshot, and no copy made before (a stale session that returns later, even
one that edited the entity offline) can bring the entity back, while a deliberate
re-add after the delete wins. Random histories with compactions check the join laws.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from storekeeper import DictMemoryStore, FileSystemStore, init_shared_store
from storekeeper.stage import (
    BaseStage,
    Element,
    Entities,
    MergeableDocument,
    Revision,
    RevisionSet,
    Route,
    Session,
    entities,
)
from storekeeper.stage.merge import (
    DocState,
    build_document,
    collect_tombstones,
    join_all_documents,
    join_documents,
    state_of,
)
from storekeeper.stage.session import HybridClock, to_micros
from storekeeper.store.abstract import AbstractStore

_BASE = datetime(2026, 5, 1, tzinfo=UTC)


class Step(Element):
    id: str
    text: str = ""


class Note(Element):
    text: str = ""


class Task(Element):
    id: str
    title: str = ""
    labels: list[str] = field(default_factory=list)
    note: Note | None = None
    steps: Entities[Step] = entities(key="id")


class Board(MergeableDocument):
    title: str = ""
    color: str = ""
    pin: Note | None = None
    tasks: Entities[Task] = entities(key="id")


class BoardStage(BaseStage):
    board = Route(Board, ["board.{session.identifier}.json"])
    boards = Route(Board, ["boards", "{0}", "{session.identifier}.json"])


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = _BASE

    def __call__(self) -> datetime:
        return self.now


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


_names = iter(range(10**9))


def _stage(store: AbstractStore, clock: Clock, name: str) -> BoardStage:
    session = Session(f"{name}-{next(_names)}")
    session.clock = HybridClock(clock)
    return BoardStage(session, store)


def _stored_snapshot(store: AbstractStore) -> tuple[dict[str, Any], dict[str, Any]]:
    """The snapshot's raw JSON body and stage metadata, read from the store itself."""
    value = store.get("board.@snapshot.json")
    with value.data as stream:
        body = json.loads(stream.read())
    return body, value.metadata["storekeeper.stage"]


def _words(raw: Any) -> set[str]:
    """Every key and string anywhere in a raw JSON value: what the stored bytes still
    mention, whatever their layout (entity ids, field names, values)."""
    if isinstance(raw, dict):
        return set(raw).union(*(_words(v) for v in raw.values()))
    if isinstance(raw, list):
        return set().union(*(_words(v) for v in raw))
    return {raw} if isinstance(raw, str) else set()


def _seed(a: BoardStage, b: BoardStage, clock: Clock) -> None:
    """a writes a board with nested tasks and steps; b reads it (b's copy covers it)."""
    with a:
        board = Board(title="plan", pin=Note(text="pinned"))
        task = Task(title="t1", note=Note(text="n"))
        task.steps["s1"] = Step(text="one")
        task.steps["s2"] = Step(text="two")
        board.tasks["t1"] = task
        board.tasks["t2"] = Task(title="t2")
        a.board = board
    clock.now += timedelta(seconds=1)
    with b:
        board = b.board
        board.tasks["t2"].title = "t2 by b"
        b.board = board


def _delete_nested(stage: BoardStage, clock: Clock) -> None:
    """Delete step s1 inside task t1, t1's note, and the board's pin."""
    clock.now += timedelta(seconds=1)
    with stage:
        board = stage.board
        del board.tasks["t1"].steps["s1"]
        board.tasks["t1"].note = None
        board.pin = None
        stage.board = board


def _cover(stages: list[BoardStage], clock: Clock) -> None:
    """Every stage reads the board and commits an edit of its own (its copy then covers
    every delete so far) and is live."""
    for stage in stages:
        clock.now += timedelta(seconds=1)
        with stage:
            board = stage.board
            board.title = f"seen by {stage.session.identifier}"
            stage.board = board


def test_nested_tombstones_are_collected_once_every_live_copy_covers_them(
    store: AbstractStore,
) -> None:
    clock = Clock()
    a, b = _stage(store, clock, "nest-a"), _stage(store, clock, "nest-b")
    _seed(a, b, clock)
    _delete_nested(b, clock)
    _cover([a, b], clock)
    clock.now += timedelta(days=40)  # the deletes are older than the retention...
    for stage in (a, b):
        with stage:
            stage.touch()  # ...and both sessions are live, their copies covering them
    assert a.compact(retention=timedelta(days=30)) == 1
    body, meta = _stored_snapshot(store)
    words = _words(body)
    assert {"s2", "two", "t1", "t2"} <= words
    assert "s1" not in words and "one" not in words  # s1's tombstone is gone from the store
    assert "note" not in words and "pin" not in words  # so are the deleted nested elements
    assert meta["floor"] is not None
    for stage in (a, b):
        with stage:
            board = stage.board
            assert set(board.tasks["t1"].steps) == {"s2"}
            assert board.tasks["t1"].note is None and board.pin is None


def test_a_live_session_not_covering_a_nested_delete_keeps_its_tombstone(
    store: AbstractStore,
) -> None:
    clock = Clock()
    a, b = _stage(store, clock, "keep-a"), _stage(store, clock, "keep-b")
    _seed(a, b, clock)
    _delete_nested(b, clock)
    clock.now += timedelta(days=40)
    with a:
        a.touch()  # a is live, and its copy predates the delete
    with b:
        b.touch()
    assert a.compact(retention=timedelta(days=30)) == 1
    body, _ = _stored_snapshot(store)
    assert {"s1", "s2"} <= _words(body)  # s1 still there, as a tombstone
    with a:
        assert set(a.board.tasks["t1"].steps) == {"s2"}


def test_a_stale_session_returning_after_collection_resurrects_nothing(
    store: AbstractStore,
) -> None:
    clock = Clock()
    a, b = _stage(store, clock, "stale-a"), _stage(store, clock, "stale-b")
    _seed(a, b, clock)
    stale = store.get(f"board.{a.session.identifier}.json")  # a's copy before the deletes
    stale_body, stale_meta = stale.data.read(), stale.metadata
    _delete_nested(b, clock)
    clock.now += timedelta(days=40)  # a is away longer than the retention
    with b:
        b.touch()
    assert b.compact(retention=timedelta(days=30)) == 1
    body, _ = _stored_snapshot(store)
    assert "s2" in _words(body) and "s1" not in _words(body)
    # The device comes back and syncs its old file into the shared folder...
    store.set(f"board.{a.session.identifier}.json", (stale_body, stale_meta))
    for stage in (a, b):
        with stage:
            board = stage.board
            assert set(board.tasks["t1"].steps) == {"s2"}
            assert board.tasks["t1"].note is None and board.pin is None
    # ...and a deliberate re-add after the delete wins, everywhere.
    clock.now += timedelta(seconds=1)
    with a:
        board = a.board
        board.tasks["t1"].steps["s1"] = Step(text="again")
        a.board = board
    with b:
        assert b.board.tasks["t1"].steps["s1"].text == "again"


def test_an_offline_edit_of_a_collected_entity_does_not_resurrect_it(
    store: AbstractStore,
) -> None:
    """A device edits an entity while offline, unaware another deleted it; the delete was
    collected meanwhile. Without compaction the entity stays deleted (its add is older
    than the delete), and compaction must not change that."""
    clock = Clock()
    a, b = _stage(store, clock, "off-a"), _stage(store, clock, "off-b")
    _seed(a, b, clock)
    stale = store.get(f"board.{a.session.identifier}.json")
    clock.now += timedelta(seconds=1)
    with b:
        board = b.board
        del board.tasks["t2"]
        del board.tasks["t1"].steps["s1"]
        b.board = board
    clock.now += timedelta(days=40)
    with b:
        b.touch()
    assert b.compact(retention=timedelta(days=30)) == 1
    words = _words(_stored_snapshot(store)[0])
    assert "t1" in words and "t2" not in words  # t2 collected
    # The offline device's copy, edited after the snapshot's floor, syncs back.
    offline = _stage(store, clock, "off-dev")
    offline.session.clock.observe(clock.now)
    with offline:
        offline.write([f"board.{offline.session.identifier}.json"], _edited_offline(stale, offline))
    for stage in (a, b, offline):
        with stage:
            board = stage.board
            assert set(board.tasks) == {"t1"}
            assert set(board.tasks["t1"].steps) == {"s2"}


def _edited_offline(stale: Any, stage: BoardStage) -> Board:
    """The stale copy as a document, with its (deleted elsewhere) entities edited."""
    from storekeeper.stage.codec import decode_document

    state = decode_document(Board, stale.data.read(), stale.metadata)
    board = build_document(Board, state, Revision(stage.session, _BASE), RevisionSet())
    board.tasks["t2"].title = "edited offline"
    board.tasks["t1"].steps["s1"].text = "edited offline"
    return board


# -- the join laws, with compactions in the histories ---------------------------------

_SESSIONS = 3
_ids = st.sampled_from(["t1", "t2"])
_steps_ids = st.sampled_from(["s1", "s2"])
_values = st.sampled_from(["a", "b", "c"])
_op = st.one_of(
    st.tuples(st.just("title"), _values),
    st.tuples(st.just("pin"), _values),
    st.tuples(st.just("unpin")),
    st.tuples(st.just("add"), _ids, _values),
    st.tuples(st.just("edit"), _ids, _values),
    st.tuples(st.just("label"), _ids, _values),
    st.tuples(st.just("note"), _ids, _values),
    st.tuples(st.just("unnote"), _ids),
    st.tuples(st.just("delete"), _ids),
    st.tuples(st.just("step"), _ids, _steps_ids, _values),
    st.tuples(st.just("unstep"), _ids, _steps_ids),
    st.tuples(st.just("sync"), st.integers(0, _SESSIONS - 1)),
    st.tuples(st.just("compact"), st.integers(0, 12)),
    st.tuples(st.just("rebase")),
)
_history = st.lists(st.tuples(st.integers(0, _SESSIONS - 1), _op), max_size=40)
_skews = st.lists(st.integers(-5_000, 5_000), min_size=_SESSIONS, max_size=_SESSIONS)


@dataclass
class World:
    sessions: list[Session]
    replicas: list[Board]
    tick: list[int]
    snapshot: Board | None = None
    seen: list[DocState] = field(default_factory=list)
    #: (snapshot state, the states it folded)
    compactions: list[tuple[DocState, list[DocState]]] = field(default_factory=list)


def _world(skews: list[int]) -> World:
    tick = [0]
    sessions = []
    for index, skew in enumerate(skews):
        session = Session(f"gclaw-{index}")

        def wall(skew: int = skew) -> datetime:
            return _BASE + timedelta(microseconds=tick[0] + skew)

        session.clock = HybridClock(wall)
        sessions.append(session)
    replicas = []
    for session in sessions:
        board = Board()
        session.revise(board)
        replicas.append(board)
    return World(sessions, replicas, tick)


def _edit(board: Board, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "title":
        board.title = op[1]
    elif kind == "pin":
        board.pin = Note(text=op[1])
    elif kind == "unpin":
        board.pin = None
    elif kind == "add":
        board.tasks[op[1]] = Task(title=op[2])
    elif op[1] in board.tasks:
        task = board.tasks[op[1]]
        if kind == "edit":
            task.title = op[2]
        elif kind == "label":
            task.labels.append(op[2])
        elif kind == "note":
            task.note = Note(text=op[2])
        elif kind == "unnote":
            task.note = None
        elif kind == "delete":
            del board.tasks[op[1]]
        elif kind == "step":
            task.steps[op[2]] = Step(text=op[3])
        elif op[2] in task.steps:
            del task.steps[op[2]]


def _compact(world: World, back: int) -> None:
    """Fold every replica (and the last snapshot) and collect below a floor *back*
    ticks in the past (any floor: the laws must hold whatever it is)."""
    folded = [state_of(r) for r in world.replicas]
    if world.snapshot is not None:
        folded.append(state_of(world.snapshot))
    merged = folded[0]
    for state in folded[1:]:
        merged = join_documents(Board, merged, state)
    floor = (to_micros(_BASE) + world.tick[0] - back * 1000, "")
    snapshot = collect_tombstones(Board, merged, floor)
    when = _BASE + timedelta(microseconds=world.tick[0])
    world.snapshot = build_document(
        Board, snapshot, Revision(Session("gclaw-snapshot"), when), RevisionSet()
    )
    world.compactions.append((snapshot, list(world.seen)))
    world.seen.append(snapshot)


def _run(history: list[tuple[int, tuple[Any, ...]]], skews: list[int]) -> World:
    world = _world(skews)
    for who, op in history:
        world.tick[0] += 1000
        session, replica = world.sessions[who], world.replicas[who]
        if op[0] == "compact":
            _compact(world, op[1])
            continue
        if op[0] == "sync":
            world.replicas[who] = session.merge(replica, world.replicas[op[1]])
        elif op[0] == "rebase":
            if world.snapshot is None:
                continue
            world.replicas[who] = session.merge(replica, world.snapshot)
        else:
            _edit(replica, op)
            session.revise(replica)
        world.seen.append(state_of(world.replicas[who]))
    world.seen.extend(state_of(r) for r in world.replicas)
    return world


def _join(a: DocState, b: DocState) -> DocState:
    return join_documents(Board, a, b)


@settings(max_examples=200, deadline=None)
@given(_history, _skews, st.data())
def test_join_laws_hold_with_compacted_snapshots(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int], data: st.DataObject
) -> None:
    world = _run(history, skews)
    pick = st.sampled_from(world.seen)
    for _ in range(6):
        a, b, c = data.draw(pick), data.draw(pick), data.draw(pick)
        assert _join(a, a) == a
        assert _join(a, b) == _join(b, a)
        assert _join(_join(a, b), c) == _join(a, _join(b, c))
        assert _join(a, _join(a, b)) == _join(a, b)
    picked = data.draw(st.lists(pick, min_size=1, max_size=6))
    folded = picked[0]
    for state in picked[1:]:
        folded = _join(folded, state)
    assert join_all_documents(Board, picked) == folded


@settings(max_examples=200, deadline=None)
@given(_history, _skews)
@example(  # an entity deleted, collected, then re-added: the old delete stays gone
    history=[
        (0, ("add", "t1", "a")),
        (0, ("delete", "t1")),
        (0, ("compact", 0)),
        (0, ("rebase",)),
        (0, ("add", "t1", "a")),
        (0, ("compact", 0)),
    ],
    skews=[0, 0, 0],
)
def test_a_snapshot_absorbs_every_older_state_it_folded(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int]
) -> None:
    """Whatever a compaction folded, joined again with its snapshot, changes nothing:
    neither a collected tombstone nor what it covered comes back."""
    world = _run(history, skews)
    for snapshot, folded in world.compactions:
        for state in folded:
            if state.floor is None or (snapshot.floor is not None and state.floor < snapshot.floor):
                assert _join(state, snapshot) == snapshot


def test_stale_copies_and_a_snapshot_join_the_same_in_every_order() -> None:
    """Two copies made before a compaction -- one holding a label added before the
    floor, one editing the entity after it, unaware of the delete the compaction
    collected -- joined with the snapshot: every order gives the same state, and the
    entity stays deleted."""
    world = _world([0, 0, 0])
    a, c = world.sessions[0], world.sessions[2]
    board = world.replicas[0]
    board.tasks["t2"] = Task(title="x")
    a.revise(board)
    other = c.pull(board)
    world.tick[0] += 1000
    board.tasks["t2"].labels.append("l")
    a.revise(board)
    labelled = state_of(board)
    world.tick[0] += 1000
    del board.tasks["t2"]
    a.revise(board)
    world.tick[0] += 1000
    floor = (to_micros(_BASE) + world.tick[0], "")
    snapshot = collect_tombstones(Board, state_of(board), floor)
    assert "t2" not in snapshot.state.get("tasks", {})
    world.tick[0] += 1000
    other.tasks["t2"].title = "edited offline"
    c.revise(other)
    edited = state_of(other)
    orders = [
        _join(_join(labelled, edited), snapshot),
        _join(labelled, _join(edited, snapshot)),
        _join(_join(labelled, snapshot), edited),
    ]
    assert orders[0] == orders[1] == orders[2]
    board = build_document(Board, orders[0], None, RevisionSet())
    assert "t2" not in board.tasks


def test_a_document_put_by_hand_next_to_a_snapshot_is_adopted(store: AbstractStore) -> None:
    """An unstamped copy's contents carry the oldest possible stamp: they lose to every
    real write, but fill the fields nobody wrote, a compacted snapshot or not."""
    clock = Clock()
    a = _stage(store, clock, "hand-a")
    with a:
        a.board = Board(title="plan")
    clock.now += timedelta(days=40)
    with a:
        a.touch()
    assert a.compact(retention=timedelta(days=30)) == 1
    hand = json.dumps({"title": "by hand", "color": "red"}).encode()
    store.set("board.by-hand.json", (hand, {}))
    reader = _stage(store, clock, "hand-r")
    with reader:
        board = reader.board
        assert (board.title, board.color) == ("plan", "red")
    with a:
        assert (a.board.title, a.board.color) == ("plan", "red")
