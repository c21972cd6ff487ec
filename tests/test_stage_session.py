"""Sessions, revisions, revision sets and the hybrid logical clock of storekeeper.stage."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storekeeper.stage import (
    Element,
    Entities,
    MergeableDocument,
    Revision,
    RevisionSet,
    Session,
    ensure_revision_pair,
    entities,
)
from storekeeper.stage.session import HybridClock, default_identifier, from_micros, to_micros


class Note(Element):
    id: str
    text: str = ""


class Doc(MergeableDocument):
    title: str = ""
    body: str = ""
    tags: list[str]
    notes: Entities[Note] = entities(key="id")


def _at(seconds: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


# -- identifiers ----------------------------------------------------------------------


@pytest.mark.parametrize("identifier", ["a", "Device-1", "x.y_z", "0"])
def test_valid_identifiers_are_interned(identifier: str) -> None:
    session = Session(identifier)
    assert session is Session(identifier)
    assert session.identifier == identifier
    assert str(session) == identifier
    assert repr(session) == f"storekeeper.stage.session.Session({identifier!r})"


@pytest.mark.parametrize("identifier", ["", "a b", "a/b", "é", "@snapshot", "a\n"])
def test_invalid_identifier_is_a_value_error(identifier: str) -> None:
    with pytest.raises(ValueError, match="invalid session identifier"):
        Session(identifier)


@pytest.mark.parametrize("identifier", [1, b"abc", ["a"]])
def test_identifier_of_another_type_is_a_type_error(identifier: object) -> None:
    with pytest.raises(TypeError):
        Session(identifier)  # type: ignore[arg-type]


def test_default_identifier_is_stable_per_installation(tmp_path: Path) -> None:
    path = tmp_path / "config" / "session"
    first = default_identifier(path)
    assert Session.IDENTIFIER_PATTERN.match(first)
    assert default_identifier(path) == first
    assert path.read_text().strip() == first
    assert default_identifier(tmp_path / "other") != first


def test_default_session_uses_the_configured_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_SESSION_FILE", str(tmp_path / "id"))
    assert Session() is Session(default_identifier(tmp_path / "id"))


def test_processes_racing_to_create_the_default_identifier_agree(tmp_path: Path) -> None:
    path = tmp_path / "id"
    code = (
        "import sys; from storekeeper.stage.session import default_identifier as d;"
        "print(d(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    answers = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert answers == {path.read_text().strip()}


# -- revisions ------------------------------------------------------------------------


def test_revision_is_a_named_pair() -> None:
    session = Session("rev-a")
    revision = Revision(session, _at(0))
    assert revision.session is session and revision.updated_at == _at(0)
    assert tuple(revision) == (session, _at(0))


def test_ensure_revision_pair() -> None:
    pair = (Session("rev-a"), _at(0))
    assert ensure_revision_pair(pair) is pair
    assert isinstance(ensure_revision_pair(pair, force_cast=True), Revision)
    for bad in [(Session("rev-a"),), ("rev-a", _at(0)), (Session("rev-a"), 1), None]:
        with pytest.raises(TypeError):
            ensure_revision_pair(bad)


def test_revision_set_rules() -> None:
    a, b, c = Session("rs-a"), Session("rs-b"), Session("rs-c")
    one = RevisionSet([(a, _at(1)), (b, _at(5)), (a, _at(3))])
    assert dict(one) == {a: _at(3), b: _at(5)}  # a later pair of a session replaces
    assert len(one) == 2 and one[a] == _at(3)
    assert set(one.items()) == {Revision(a, _at(3)), Revision(b, _at(5))}
    assert one.copy() == one and one.copy() is not one
    other = RevisionSet([(a, _at(2)), (c, _at(9))])
    merged = one.merge(other)
    assert dict(merged) == {a: _at(3), b: _at(5), c: _at(9)}
    assert dict(one) == {a: _at(3), b: _at(5)}  # merge makes a new set
    assert one.merge(other) == other.merge(one)
    assert one.contains(Revision(a, _at(3))) and one.contains(Revision(a, _at(2)))
    assert not one.contains(Revision(a, _at(4)))
    assert not one.contains(Revision(c, _at(0)))
    with pytest.raises(TypeError):
        one.merge()
    with pytest.raises(TypeError):
        one.merge({a: _at(1)})  # type: ignore[arg-type]


# -- the clock ------------------------------------------------------------------------


def test_clock_never_goes_backwards_with_a_wall_clock_that_does() -> None:
    walls = iter([_at(10), _at(10), _at(5), _at(11)])
    clock = HybridClock(lambda: next(walls))
    times = [clock.now() for _ in range(4)]
    assert times == sorted(set(times))  # strictly increasing
    assert times[2] == _at(10) + timedelta(microseconds=2)
    assert times[3] == _at(11)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)


def test_clock_is_never_behind_what_it_has_seen() -> None:
    clock = HybridClock(lambda: _at(0))
    clock.observe(_at(60))  # another device's clock, a minute ahead
    assert clock.now() == _at(60) + timedelta(microseconds=1)


def test_a_far_ahead_clock_is_accepted_but_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = HybridClock(lambda: _at(0))
    with caplog.at_level(logging.WARNING, logger="storekeeper.stage.session"):
        clock.observe(_at(3600 * 24))
    assert "ahead of this clock" in caplog.text
    assert clock.now() > _at(3600 * 24)


def test_a_time_beyond_the_bound_is_folded_only_up_to_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = HybridClock(lambda: _at(0), max_lead=timedelta(days=1))
    end = datetime.max.replace(tzinfo=UTC)
    with caplog.at_level(logging.ERROR, logger="storekeeper.stage.session"):
        clock.observe(end)
        clock.observe(end)
    assert caplog.text.count("beyond the bound") == 1
    assert clock.now() == _at(3600 * 24) + timedelta(microseconds=1)


def test_the_clock_raises_a_clear_error_at_the_end_of_time() -> None:
    clock = HybridClock(lambda: datetime.max.replace(tzinfo=UTC))
    assert clock.now() == datetime.max.replace(tzinfo=UTC)
    with pytest.raises(OverflowError, match="end of representable time"):
        clock.now()


def test_micros_round_trip() -> None:
    moment = datetime(2026, 12, 6, 23, 1, 2, 345678, tzinfo=UTC)
    assert from_micros(to_micros(moment)) == moment
    with pytest.raises(ValueError, match="timezone-aware"):
        to_micros(datetime(2026, 1, 1))


# -- revise, pull, merge --------------------------------------------------------------


def _session(name: str, seconds: float = 0) -> Session:
    session = Session(name)
    session.clock = HybridClock(lambda: _at(seconds))
    return session


def test_revise_stamps_the_document() -> None:
    session = _session("rv-a", 100)
    doc = Doc(title="t")
    assert doc.__revision__ is None
    session.revise(doc)
    assert doc.__revision__ == Revision(session, _at(100))
    session.revise(doc)
    assert doc.__revision__.updated_at > _at(100)
    with pytest.raises(TypeError):
        session.revise(Note(id="x"))  # type: ignore[arg-type]


def test_pull_of_own_document_is_the_same_object_else_a_copy_keeping_the_time() -> None:
    a, b = _session("pl-a", 10), _session("pl-b", 0)
    doc = Doc(title="t")
    a.revise(doc)
    assert a.pull(doc) is doc
    pulled = b.pull(doc)
    assert pulled is not doc and pulled == doc
    assert pulled.__revision__ == Revision(b, _at(10))
    fresh = b.pull(Doc(title="u"))  # an unrevised document is revised
    assert fresh.__revision__ is not None and fresh.__revision__.session is b


def test_merge_keeps_every_sessions_edits_and_is_attributed_to_the_merger() -> None:
    a, b, c = _session("mg-a", 10), _session("mg-b", 20), _session("mg-c", 30)
    base = Doc(title="start", tags=["x"])
    base.notes["n1"] = Note(text="one")
    a.revise(base)
    left, right = b.pull(base), c.pull(base)
    left.title = "left title"
    left.tags.append("y")
    left.notes["n2"] = Note(text="two")
    b.revise(left)
    right.body = "right body"
    right.tags.append("z")
    del right.notes["n1"]
    c.revise(right)
    merged = a.merge(left, right)
    assert merged.title == "left title" and merged.body == "right body"
    assert merged.tags == ["x", "y", "z"]
    assert list(merged.notes) == ["n2"]
    assert merged.__revision__ is not None and merged.__revision__.session is a
    assert merged.__base_revisions__.contains(left.__revision__)
    assert merged.__base_revisions__.contains(right.__revision__)
    assert a.merge(right, left) == merged


def test_merge_returns_the_input_that_is_the_join_pulled() -> None:
    a, b = _session("mj-a", 10), _session("mj-b", 20)
    old = Doc(title="old")
    a.revise(old)
    new = b.pull(old)
    new.title = "new"
    b.revise(new)
    for merged in (a.merge(old, new), a.merge(new, old)):
        assert merged.title == "new"
        assert merged.__revision__ == Revision(a, new.__revision__.updated_at)
    assert b.merge(old, new) is new  # its own document, pulled, is itself


def test_merge_of_different_types_is_a_type_error() -> None:
    class Other(MergeableDocument):
        title: str = ""

    with pytest.raises(TypeError):
        Session("mt-a").merge(Doc(), Other())  # type: ignore[type-var]


def test_a_field_never_assigned_is_not_a_write() -> None:
    a, b = _session("nw-a", 10), _session("nw-b", 20)
    full = Doc(title="kept", body="kept too")
    a.revise(full)
    fresh = Doc(body="new body")  # title never assigned: its default is not a write
    b.revise(fresh)
    merged = a.merge(full, fresh)
    assert merged.title == "kept" and merged.body == "new body"


def test_causally_later_edit_wins_even_from_a_slow_clock() -> None:
    fast, slow = _session("ck-fast", 3600), _session("ck-slow", 0)
    doc = Doc(title="from the fast device")
    fast.revise(doc)
    seen = slow.pull(doc)
    slow.clock.observe(doc.__revision__.updated_at)  # the stage does this on every read
    seen.title = "edited after reading it"
    slow.revise(seen)
    assert fast.merge(doc, seen).title == "edited after reading it"
