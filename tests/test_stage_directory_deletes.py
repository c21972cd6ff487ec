"""Deleted documents leave every view of a directory, in every session, until re-added.

``del directory[i]`` writes a tombstone into the deleting session's copy; the document
must vanish from iteration, ``len``, ``in`` and ``[]`` at once (read-your-writes), for
every other session once it reads the copies -- also a session in another process --
and at every level of a deep route (a level whose documents are all deleted is not
listed). A document assigned there afterwards comes back, and compaction keeps a
deleted document deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storekeeper import DictMemoryStore, FileSystemStore, SqliteStore, init_shared_store
from storekeeper.stage import (
    BaseStage,
    Element,
    Entities,
    MergeableDocument,
    Route,
    Session,
    entities,
)
from storekeeper.stage.session import HybridClock
from storekeeper.store.abstract import AbstractStore


class Seat(MergeableDocument):
    name: str = ""
    note: str = ""


class ChartStage(BaseStage):
    seats = Route(Seat, ["chart", "col-{0}", "row-{1}", "{session.identifier}.json"])
    rooms = Route(Seat, ["rooms", "{0}", "{session.identifier}.json"])


@pytest.fixture(params=["memory", "filesystem", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    made: AbstractStore
    if request.param == "memory":
        made = DictMemoryStore()
    elif request.param == "filesystem":
        init_shared_store(tmp_path / "fs")
        made = FileSystemStore(tmp_path / "fs", durable=False)
    else:
        made = SqliteStore(tmp_path / "db.sqlite", durable=False)
    with made:
        yield made


_names = iter(range(10**9))


def _stage(store: AbstractStore, name: str) -> ChartStage:
    return ChartStage(Session(f"{name}-{next(_names)}"), store)


def _view(stage: ChartStage) -> dict[str, Any]:
    """Everything the directory shows, through every way of looking at it."""
    seats = stage.seats
    return {
        "columns": list(seats),
        "len": len(seats),
        "rows": {col: list(seats[col]) for col in ("1", "2")},
        "in": {col: col in seats for col in ("1", "2")},
        "seat 1/1": seats["1"].get("1"),
        "seat 1/1 in": "1" in seats["1"],
    }


def _populate(store: AbstractStore) -> tuple[ChartStage, ChartStage]:
    a, b = _stage(store, "dd-a"), _stage(store, "dd-b")
    with a:
        a.seats["1"]["1"] = Seat(name="ann")
        a.seats["1"]["2"] = Seat(name="bob")
        a.seats["2"]["1"] = Seat(name="cy")
    return a, b


def test_a_deleted_document_leaves_every_level_in_every_session(store: AbstractStore) -> None:
    a, b = _populate(store)
    with b:
        del b.seats["1"]["1"]
        assert list(b.seats["1"]) == ["2"]  # read-your-writes
        with pytest.raises(KeyError):
            b.seats["1"]["1"]
        del b.seats["1"]["2"]  # column 1 is now empty: it is not listed either
        inside = _view(b)
    gone = {
        "columns": ["2"],
        "len": 1,
        "rows": {"1": [], "2": ["1"]},
        "in": {"1": False, "2": True},
        "seat 1/1": None,
        "seat 1/1 in": False,
    }
    assert inside == gone
    for stage in (b, a, _stage(store, "dd-fresh")):  # after the commit, everywhere
        with stage:
            assert _view(stage) == gone
            with pytest.raises(KeyError):
                stage.seats["1"]["2"]


def test_assigning_a_document_after_the_delete_brings_it_back(
    store: AbstractStore,
) -> None:
    """A session holding a document from before the delete edits it and assigns it
    back: assigning is a re-add, stamped after the delete stored at the key, so the
    document comes back for everyone with every field as the held document shows --
    whether or not the session looked at the key first. The key deleted alongside,
    which nobody assigned, stays deleted. A new document assigned after a further
    delete brings the key back as well."""
    a, b = _populate(store)
    with a:
        held = a.seats["1"]["1"]
    with b:
        del b.seats["1"]["1"]
        del b.seats["1"]["2"]
    with a:
        held.note = "edited, unaware of the delete"
        a.seats["1"]["1"] = held
        assert "1" in a.seats["1"] and a.seats["1"]["1"] == held
    for stage in (a, b, _stage(store, "dd-fresh")):
        with stage:
            assert list(stage.seats) == ["1", "2"] and list(stage.seats["1"]) == ["1"]
            assert stage.seats["1"]["1"] == Seat(name="ann", note="edited, unaware of the delete")
            assert stage.seats["1"].get("2") is None
    with b:
        del b.seats["1"]["1"]
    with a:
        a.seats["1"]["1"] = Seat(name="dee")  # a new document, after the delete
        assert list(a.seats) == ["1", "2"]
    for stage in (a, b):
        with stage:
            assert list(stage.seats) == ["1", "2"] and len(stage.seats) == 2
            assert list(stage.seats["1"]) == ["1"]
            assert stage.seats["1"]["1"] == Seat(name="dee")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_compaction_keeps_a_deleted_document_deleted_and_forgets_its_contents(
    store: AbstractStore,
) -> None:
    clock = Clock()
    stages = []
    for name in ("dc-a", "dc-b"):
        session = Session(f"{name}-{next(_names)}")
        session.clock = HybridClock(clock)
        stages.append(ChartStage(session, store))
    a, b = stages
    with a:
        a.rooms["r"] = Seat(name="room")
    stale = store.get(f"rooms/r/{a.session.identifier}.json")
    clock.now += timedelta(seconds=1)
    with a:  # an edit the delete below covers: kept only while the tombstone is
        held = a.rooms["r"]
        held.note = "late"
        a.rooms["r"] = held
    clock.now += timedelta(seconds=1)
    with b:
        del b.rooms["r"]
    clock.now += timedelta(seconds=1)
    with a:
        assert "r" not in a.rooms  # a sees the delete (a read-only check, writes nothing)
    clock.now += timedelta(days=40)
    with a:
        a.touch()  # the one live session; its copy covers the delete and the late edit
    assert a.compact(retention=timedelta(days=30)) == 1
    assert list(store.list_keys("rooms/")) == ["rooms/r/@snapshot.json"]
    snapshot = store.get("rooms/r/@snapshot.json")
    body = snapshot.data.read().decode()
    assert "late" not in body and "room" not in body  # no contents, just the tombstone
    assert snapshot.metadata["storekeeper.stage"]["deleted"] is not None
    store.set(f"rooms/r/{a.session.identifier}.json", (stale.data.read(), stale.metadata))
    for stage in (a, b):
        with stage:
            assert list(stage.rooms) == [] and "r" not in stage.rooms
    with b:
        b.rooms["r"] = Seat(name="again")
    with a:
        assert a.rooms["r"] == Seat(name="again")  # the late edit went with the tombstone


_CHILD = """
import json, sys
from storekeeper import FileSystemStore
from storekeeper.stage import Session
import test_stage_directory_deletes as t
with FileSystemStore(sys.argv[1], durable=False) as store:
    stage = t.ChartStage(Session(sys.argv[2]), store)
    with stage:
        del stage.seats["1"]["1"]
        del stage.seats["1"]["2"]
    with stage:
        print(json.dumps([list(stage.seats), len(stage.seats), "1" in stage.seats]))
"""


def test_a_delete_in_another_process_leaves_the_directory(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    with FileSystemStore(tmp_path / "fs", durable=False) as store:
        a, _ = _populate(store)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "fs"), "dd-proc"],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        assert json.loads(child.stdout) == [["2"], 1, False]
        with a:
            assert list(a.seats) == ["2"] and len(a.seats) == 1 and "1" not in a.seats


def test_listing_agrees_with_reading_when_a_stale_copy_returns(store: AbstractStore) -> None:
    """A device away longer than the retention re-created a deleted document while
    offline, before the floor of a later compaction; its copy syncs back afterwards.
    The snapshot supersedes what the copy did before its floor, so the document stays
    deleted -- and the directory must say so as reading does."""
    clock = Clock()
    stages = []
    for name in ("ls-a", "ls-b", "ls-c"):
        session = Session(f"{name}-{next(_names)}")
        session.clock = HybridClock(clock)
        stages.append(ChartStage(session, store))
    a, b, device = stages
    with a:
        a.rooms["r"] = Seat(name="room")
    with b:
        held = b.rooms["r"]
    clock.now += timedelta(seconds=1)
    with a:
        del a.rooms["r"]
    clock.now += timedelta(seconds=1)
    with device:  # offline: its copy reaches the shared store only later
        device.rooms["r"] = Seat(name="re-created offline")
    own = f"rooms/r/{device.session.identifier}.json"
    offline = store.get(own)
    offline_copy = (offline.data.read(), offline.metadata)
    store.delete(own)
    clock.now += timedelta(seconds=1)
    with b:  # b's copy comes to cover everything so far: it re-adds, then deletes again
        held.note = "late"
        b.rooms["r"] = held
    clock.now += timedelta(seconds=1)
    with b:
        del b.rooms["r"]
    clock.now += timedelta(days=40)
    with b:
        b.touch()
    assert b.compact(retention=timedelta(days=30)) == 1
    store.set(own, offline_copy)
    for stage in stages:
        with stage:
            assert stage.rooms.get("r") is None
            assert list(stage.rooms) == [] and "r" not in stage.rooms


class Cover(Element):
    color: str = ""
    labels: list[str] = field(default_factory=list)


class Item(Element):
    id: str
    title: str = ""


class Album(MergeableDocument):
    name: str = ""
    cover: Cover | None = None
    items: Entities[Item] = entities(key="id")


class AlbumStage(BaseStage):
    albums = Route(Album, ["albums", "{0}", "{session.identifier}.json"])


def test_readd_of_a_read_document_writes_it_as_shown(store: AbstractStore) -> None:
    """Re-adding a document read before its delete (or read from another key) writes
    every field as the document shows at the assignment -- nested element, its list,
    entities, including changes made to the held object -- in one transaction and for
    everyone after; what the held object had removed stays removed."""
    a = AlbumStage(Session(f"ra-a-{next(_names)}"), store)
    b = AlbumStage(Session(f"ra-b-{next(_names)}"), store)
    with a:
        album = Album(name="trip", cover=Cover(color="red", labels=["x", "y"]))
        album.items["1"] = Item(title="one")
        album.items["2"] = Item(title="two")
        a.albums["k"] = album
        a.albums["other"] = Album(name="other", cover=Cover(labels=["o"]))
    with a:
        held = a.albums["k"]
    with b:
        del b.albums["k"]
    with a:
        assert "k" not in a.albums
        del held.items["2"]
        held.items["3"] = Item(title="three")
        held.items["1"].title = "uno"
        assert held.cover is not None
        held.cover.labels.append("z")
        a.albums["k"] = held
        a.albums["copy"] = a.albums["other"]  # a read document at a new key
        del a.albums["other"]
        a.albums["other"] = a.albums["copy"]  # ... and back where it was deleted
    expected = Album(name="trip", cover=Cover(color="red", labels=["x", "y", "z"]))
    expected.items["1"] = Item(id="1", title="uno")
    expected.items["3"] = Item(id="3", title="three")
    for stage in (a, b, AlbumStage(Session(f"ra-c-{next(_names)}"), store)):
        with stage:
            assert list(stage.albums) == ["copy", "k", "other"]
            assert stage.albums["k"] == expected
            assert list(stage.albums["k"].items) == ["1", "3"]
            assert stage.albums["other"] == Album(name="other", cover=Cover(labels=["o"]))
