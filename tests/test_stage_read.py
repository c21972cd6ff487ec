"""Reading staged documents: the stored body's form, and the merge of many copies.

Random histories of several sessions with skewed clocks edit a document whose entities
hold only scalars (as feed entries do: they take the fast paths of decoding and
joining) next to every other kind of field. Every state seen must come back unchanged
from its stored form, and joining many copies at once must be the join of pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storekeeper import DictMemoryStore, errors
from storekeeper.stage import (
    BaseStage,
    Element,
    Entities,
    Entry,
    Feed,
    MergeableDocument,
    Route,
    Session,
    Stage,
    entities,
)
from storekeeper.stage.codec import METADATA_NAME, decode_document, encode_document
from storekeeper.stage.merge import DocState, join_all_documents, join_documents, state_of
from storekeeper.stage.session import HybridClock, Revision, RevisionSet

_BASE = datetime(2026, 1, 1, tzinfo=UTC)
_SESSIONS = 3


class Mark(Element):
    id: str
    text: str = ""
    done: bool = False
    due: datetime | None = None


class Step(Element):
    id: str
    labels: list[str] = field(default_factory=list)


class Place(Element):
    city: str = ""


class Board(MergeableDocument):
    title: str = ""
    data: Any = None
    tags: list[str] = field(default_factory=list)
    place: Place | None = None
    marks: Entities[Mark] = entities(key="id")
    steps: Entities[Step] = entities(key="id")


_values = st.sampled_from(["a", "b", None, [1, {"k": "v"}]])
_ids = st.sampled_from(["m1", "m2", "m3"])
_op = st.one_of(
    st.tuples(st.just("title"), st.sampled_from(["x", "y"])),
    st.tuples(st.just("data"), _values),
    st.tuples(st.just("tag"), st.sampled_from(["t1", "t2"])),
    st.tuples(st.just("city"), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("unplace")),
    st.tuples(st.just("add"), _ids, st.sampled_from(["p", "q"])),
    st.tuples(st.just("text"), _ids, st.sampled_from(["p", "q"])),
    st.tuples(st.just("done"), _ids),
    st.tuples(st.just("due"), _ids, st.integers(0, 3)),
    st.tuples(st.just("drop"), _ids),
    st.tuples(st.just("step"), _ids, st.sampled_from(["l1", "l2"])),
    st.tuples(st.just("unstep"), _ids),
    st.tuples(st.just("sync"), st.integers(0, _SESSIONS - 1)),
)
_history = st.lists(st.tuples(st.integers(0, _SESSIONS - 1), _op), max_size=30)
# Edits of the entities of scalars only, so that copies often hold the same entity.
_mark_op = st.one_of(
    st.tuples(st.just("add"), _ids, st.sampled_from(["p", "q"])),
    st.tuples(st.just("text"), _ids, st.sampled_from(["p", "q"])),
    st.tuples(st.just("due"), _ids, st.integers(0, 3)),
    st.tuples(st.just("drop"), _ids),
    st.tuples(st.just("sync"), st.integers(0, _SESSIONS - 1)),
)
_mark_history = st.lists(
    st.tuples(st.integers(0, _SESSIONS - 1), _mark_op), min_size=4, max_size=30
)
_skews = st.lists(st.integers(-3_000_000, 3_000_000), min_size=_SESSIONS, max_size=_SESSIONS)
_run_ids = itertools.count()


def _edit(board: Board, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind in ("title", "data"):
        setattr(board, kind, op[1])
    elif kind == "tag":
        board.tags.append(op[1])
    elif kind == "city":
        board.place = board.place or Place()
        board.place.city = op[1]
    elif kind == "unplace":
        board.place = None
    elif kind == "add":
        board.marks[op[1]] = Mark(text=op[2])
    elif kind == "step":
        if op[1] not in board.steps:
            board.steps[op[1]] = Step()
        board.steps[op[1]].labels.append(op[2])
    elif kind == "unstep":
        if op[1] in board.steps:
            del board.steps[op[1]]
    elif op[1] in board.marks:
        mark = board.marks[op[1]]
        if kind == "text":
            mark.text = op[2]
        elif kind == "done":
            mark.done = not mark.done
        elif kind == "due":
            mark.due = _BASE + timedelta(days=op[2])
        else:
            del board.marks[op[1]]


def _states(history: list[tuple[int, tuple[Any, ...]]], skews: list[int]) -> list[DocState]:
    """Every state the sessions' replicas go through (edits revised one by one, and
    merges of each other's replicas)."""
    tick = [0]
    run = next(_run_ids)
    sessions = []
    for index, skew in enumerate(skews):
        session = Session(f"read-{run}-{index}")

        def wall(skew: int = skew) -> datetime:
            return _BASE + timedelta(microseconds=tick[0] + skew)

        session.clock = HybridClock(wall)
        sessions.append(session)
    replicas = [Board() for _ in sessions]
    seen = []
    for who, op in history:
        tick[0] += 1000
        if op[0] == "sync":
            replicas[who] = sessions[who].merge(replicas[who], replicas[op[1]])
        else:
            _edit(replicas[who], op)
            sessions[who].revise(replicas[who])
        seen.append(state_of(replicas[who]))
    for session, replica in zip(sessions, replicas, strict=True):
        if replica.__revision__ is None:
            session.revise(replica)
        seen.append(state_of(replica))
    return seen


@settings(max_examples=150, deadline=None)
@given(_history, _skews)
def test_every_state_comes_back_unchanged_from_its_stored_form(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int]
) -> None:
    revision = Revision(Session("read-store"), _BASE)
    for state in _states(history, skews):
        body, metadata = encode_document(Board, state, revision, RevisionSet())
        assert decode_document(Board, body, metadata) == state


@settings(max_examples=100, deadline=None)
@given(_mark_history, _skews, st.data())
def test_join_laws_hold_with_entities_of_scalars(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int], data: st.DataObject
) -> None:
    states = _states(history, skews)
    pick = st.sampled_from(states)

    def join(a: DocState, b: DocState) -> DocState:
        return join_documents(Board, a, b)

    for _ in range(5):
        a, b, c = data.draw(pick), data.draw(pick), data.draw(pick)
        assert join(a, a) == a
        assert join(a, b) == join(b, a)
        assert join(join(a, b), c) == join(a, join(b, c))
    picked = data.draw(st.lists(pick, min_size=3, max_size=6))
    folded = picked[0]
    for state in picked[1:]:
        folded = join(folded, state)
    assert join_all_documents(Board, picked) == folded


def test_a_copy_stores_each_stamp_once() -> None:
    """A feed written in one transaction stamps its entries alike: the stored copy
    names that stamp (its session and time) once, not once per entry."""
    store = DictMemoryStore()
    store.connect()
    stage = Stage(Session("read-once"), store)
    feed = Feed(id="f", title="F")
    for index in range(300):
        feed.entries[f"e{index}"] = Entry(title=f"entry {index}")
    with stage:
        stage.feeds["f"] = feed
    body = store.to_bytes("feeds/f/read-once.json")
    assert body.count(b"read-once") == 1
    with stage:
        assert [e.title for e in stage.feeds["f"].entries.values()][:2] == ["entry 0", "entry 1"]


class NoteStage(BaseStage):
    doc = Route(Board, ["board.{session.identifier}.json"])


@pytest.mark.parametrize(
    "body",
    [
        b'{"#": [["1", "s"]], "@": 0, "title": "x"}',  # a time that is not an integer
        b'{"#": [[1, 2]], "@": 0, "title": "x"}',  # a session that is not a string
        b'{"#": [[1, "s"]], "@": 1, "title": "x"}',  # a stamp past the table
        b'{"#": [[1, "s"]], "@": -1, "title": "x"}',  # a negative position
        b'{"#": [[1, "s"]], "title": "x"}',  # a field without a stamp
        b'{"#": [[1, "s"]], "@": 0, "!": {"nosuch": 0}}',  # an own stamp of no field
        b'{"#": {"0": [1, "s"]}}',  # a table that is not a list
        b'{"#": [], "marks": {"m": {"@": 3, "text": "x"}}}',  # an entity's stamp missing
        b'{"#": [[1, "s"]], "marks": {"m": {"text": "x"}}}',  # an entity field unstamped
        b'{"#": [[1, "s"]], "marks": ["m"]}',  # entities that are not an object
        b'{"#": [[1, "s"]], "tags": [["t", 5, 1]]}',  # a list item's stamp missing
    ],
)
def test_a_malformed_body_is_a_corrupt_file_error_and_is_left_alone(body: bytes) -> None:
    store = DictMemoryStore()
    store.connect()
    metadata = {METADATA_NAME: {"revision": "other 1", "bases": []}}
    store.set("board.other.json", (body, metadata))
    stage = NoteStage(Session("read-hostile"), store)
    with stage, pytest.raises(errors.CorruptFileError, match=r"board\.other\.json"):
        stage.doc  # noqa: B018
    assert store.to_bytes("board.other.json") == body
