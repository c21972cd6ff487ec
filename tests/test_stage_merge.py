"""The merge of staged documents is a join: random histories, then the laws.

Sessions with skewed clocks edit replicas of one document (fields, a grow-only list, a
nested element, entities added, edited, deleted and re-added) and merge each other's
replicas at random. Every state seen along the way must satisfy commutativity,
associativity and idempotence, and every order of merging must converge.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from storekeeper.stage import Element, Entities, MergeableDocument, Session, entities
from storekeeper.stage.merge import DocState, join_documents, state_of
from storekeeper.stage.session import HybridClock


class Address(Element):
    city: str = ""
    street: str = ""


class Item(Element):
    id: str
    title: str = ""
    done: bool = False
    labels: list[str] = field(default_factory=list)


class Card(MergeableDocument):
    title: str = ""
    count: int = 0
    tags: list[str] = field(default_factory=list)
    address: Address | None = None
    items: Entities[Item] = entities(key="id")


_SESSIONS = 3
_BASE = datetime(2026, 1, 1, tzinfo=UTC)

_values = st.sampled_from(["a", "b", "c", "d"])
_ids = st.sampled_from(["i1", "i2", "i3"])
_op = st.one_of(
    st.tuples(st.just("title"), _values),
    st.tuples(st.just("count"), st.integers(0, 3)),
    st.tuples(st.just("tag"), _values),
    st.tuples(st.just("city"), _values),
    st.tuples(st.just("street"), _values),
    st.tuples(st.just("address"), st.none()),
    st.tuples(st.just("add"), _ids, _values),
    st.tuples(st.just("edit"), _ids, _values),
    st.tuples(st.just("label"), _ids, _values),
    st.tuples(st.just("delete"), _ids),
    st.tuples(st.just("sync"), st.integers(0, _SESSIONS - 1)),
)
_history = st.lists(st.tuples(st.integers(0, _SESSIONS - 1), _op), max_size=30)
_skews = st.lists(st.integers(-5_000_000, 5_000_000), min_size=_SESSIONS, max_size=_SESSIONS)


@dataclass
class World:
    sessions: list[Session]
    replicas: list[Card]
    seen: list[DocState] = field(default_factory=list)


def _world(skews: list[int], tick: list[int]) -> World:
    sessions = []
    for index, skew in enumerate(skews):
        session = Session(f"law-{index}")

        def wall(skew: int = skew) -> datetime:
            return _BASE + timedelta(microseconds=tick[0] + skew)

        session.clock = HybridClock(wall)
        sessions.append(session)
    replicas = []
    for session in sessions:
        card = Card()
        session.revise(card)
        replicas.append(card)
    return World(sessions, replicas)


def _apply(card: Card, op: tuple[Any, ...], other: Card) -> Card | None:
    kind = op[0]
    if kind == "sync":
        return other
    if kind in ("title", "count"):
        setattr(card, kind, op[1])
    elif kind == "tag":
        card.tags.append(op[1])
    elif kind in ("city", "street"):
        if card.address is None:
            card.address = Address()
        setattr(card.address, kind, op[1])
    elif kind == "address":
        card.address = None
    elif kind == "add":
        card.items[op[1]] = Item(title=op[2])
    elif op[1] in card.items:
        item = card.items[op[1]]
        if kind == "edit":
            item.title = op[2]
        elif kind == "label":
            item.labels.append(op[2])
        else:
            del card.items[op[1]]
    return None


def _run(history: list[tuple[int, tuple[Any, ...]]], skews: list[int]) -> World:
    tick = [0]
    world = _world(skews, tick)
    for who, op in history:
        tick[0] += 1000
        session = world.sessions[who]
        other = world.replicas[op[1]] if op[0] == "sync" else world.replicas[who]
        incoming = _apply(world.replicas[who], op, other)
        if incoming is not None:
            world.replicas[who] = session.merge(world.replicas[who], incoming)
        else:
            session.revise(world.replicas[who])
        world.seen.append(state_of(world.replicas[who]))
    world.seen.extend(state_of(r) for r in world.replicas)
    return world


def _join(a: DocState, b: DocState) -> DocState:
    return join_documents(Card, a, b)


@settings(max_examples=150, deadline=None)
@given(_history, _skews, st.data())
def test_join_laws_hold_on_states_of_random_histories(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int], data: st.DataObject
) -> None:
    world = _run(history, skews)
    states = world.seen
    pick = st.sampled_from(states)
    for _ in range(5):
        a, b, c = data.draw(pick), data.draw(pick), data.draw(pick)
        assert _join(a, a) == a
        assert _join(a, b) == _join(b, a)
        assert _join(_join(a, b), c) == _join(a, _join(b, c))
        assert _join(a, _join(a, b)) == _join(a, b)  # absorbing what is already known


@settings(max_examples=100, deadline=None)
@given(_history, _skews, st.permutations(range(_SESSIONS)), st.permutations(range(_SESSIONS)))
def test_every_merge_order_converges(
    history: list[tuple[int, tuple[Any, ...]]],
    skews: list[int],
    order_a: list[int],
    order_b: list[int],
) -> None:
    world = _run(history, skews)
    reader_a, reader_b = world.sessions[0], world.sessions[1]
    merged_a = world.replicas[order_a[0]]
    for index in order_a[1:]:
        merged_a = reader_a.merge(merged_a, world.replicas[index])
    merged_b = world.replicas[order_b[0]]
    for index in order_b[1:]:
        merged_b = reader_b.merge(world.replicas[index], merged_b)
    assert merged_a == merged_b
    assert state_of(merged_a) == state_of(merged_b)


@settings(max_examples=100, deadline=None)
@given(_history, _skews)
def test_merge_returns_an_input_that_already_is_the_join(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int]
) -> None:
    world = _run(history, skews)
    for a, b in itertools.combinations(world.replicas, 2):
        joined = _join(state_of(a), state_of(b))
        merged = world.sessions[0].merge(a, b)
        assert state_of(merged) == joined
        equal = [s.__revision__ for s in (a, b) if state_of(s) == joined]
        if equal:  # the join is an input: that input, pulled (keeping its time)
            revision = merged.__revision__
            assert revision is not None
            assert revision.updated_at in [r.updated_at for r in equal if r is not None]


# -- what the merge keeps and drops ---------------------------------------------------


def _pair(skew_a: int = 0, skew_b: int = 0) -> tuple[Session, Session, list[int]]:
    tick = [0]
    world = _world([skew_a, skew_b, 0], tick)
    return world.sessions[0], world.sessions[1], tick


def test_an_older_copy_cannot_resurrect_a_deleted_entity() -> None:
    a, b, tick = _pair()
    card = Card()
    card.items["i1"] = Item(title="one")
    a.revise(card)
    old_copy = b.pull(card)
    tick[0] += 10
    del card.items["i1"]
    a.revise(card)
    tick[0] += 10
    old_copy.items["i1"].title = "edited after the delete, unaware of it"
    b.revise(old_copy)
    assert "i1" not in a.merge(card, old_copy).items
    assert "i1" not in b.merge(old_copy, card).items


def test_a_deliberate_re_add_after_a_delete_wins() -> None:
    a, b, tick = _pair()
    card = Card()
    card.items["i1"] = Item(title="one", labels=["old"])
    a.revise(card)
    seen = b.pull(card)
    tick[0] += 10
    del seen.items["i1"]
    b.revise(seen)
    after = a.merge(card, seen)
    tick[0] += 10
    after.items["i1"] = Item(title="again")
    a.revise(after)
    merged = b.merge(seen, after)
    assert merged.items["i1"].title == "again"
    assert merged.items["i1"].labels == []  # what the delete removed stays removed


def test_lists_merge_as_a_grow_only_ordered_union() -> None:
    a, b, tick = _pair()
    card = Card(tags=["x"])
    a.revise(card)
    other = b.pull(card)
    tick[0] += 10
    card.tags.append("a1")
    a.revise(card)
    tick[0] += 10
    other.tags.append("b1")
    other.tags.remove("x")  # removing is not a write: the union keeps it
    b.revise(other)
    assert a.merge(card, other).tags == ["x", "a1", "b1"]


def test_nested_elements_merge_field_by_field_and_none_deletes() -> None:
    a, b, tick = _pair()
    card = Card(address=Address(city="Paris"))
    a.revise(card)
    other = b.pull(card)
    tick[0] += 10
    other.address.street = "Rue"  # type: ignore[union-attr]
    b.revise(other)
    merged = a.merge(card, other)
    assert merged.address == Address(city="Paris", street="Rue")
    tick[0] += 10
    merged.address = None
    a.revise(merged)
    assert a.merge(merged, other).address is None


def test_equal_stamps_break_ties_by_value_in_every_order() -> None:
    one, two = Session("tie-a"), Session("tie-a")  # two processes of one session
    assert one is two
    first, second = Card(title="left"), Card(title="right")
    frozen = HybridClock(lambda: _BASE)
    one.clock = frozen
    one.revise(first)
    frozen._last = 0
    one.revise(second)
    assert state_of(first).state["title"][0] == state_of(second).state["title"][0]
    assert one.merge(first, second).title == one.merge(second, first).title


@settings(max_examples=100, deadline=None)
@given(_history, _skews, st.data())
def test_joining_many_states_at_once_equals_folding_pairs(
    history: list[tuple[int, tuple[Any, ...]]], skews: list[int], data: st.DataObject
) -> None:
    from storekeeper.stage.merge import join_all_documents

    world = _run(history, skews)
    picked = data.draw(st.lists(st.sampled_from(world.seen), min_size=1, max_size=6))
    folded = picked[0]
    for state in picked[1:]:
        folded = _join(folded, state)
    assert join_all_documents(Card, picked) == folded
