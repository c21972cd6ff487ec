"""Compaction racing a reader: the bad interleavings forced deterministically.

A reader lists a document's copies, then fetches them one by one. A compaction that
folds a copy into the snapshot and deletes it between the reader's listing and its
fetch of that copy must not hide the copy's content from the reader. The stores below
run a compaction at exactly that moment: just before the reader's fetch of one key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import DictMemoryStore, FileSystemStore, SqliteStore, init_shared_store
from storekeeper.stage import Entry, Feed, Session, Stage
from storekeeper.store.abstract import AbstractStore

_counter = iter(range(10**9))


class _Hooked:
    """Runs ``hook`` once, just before the next fetch (``get`` or ``get_metadata``) of
    ``hook_key``: a pause in the reader where a compaction slips in."""

    hook_key: str | None = None
    hook: Callable[[], object] | None = None

    def _fire(self, key: str) -> None:
        hook = self.hook
        if hook is not None and key == self.hook_key:
            self.hook = None
            hook()

    def get(self, key: str) -> Any:
        self._fire(key)
        return super().get(key)  # type: ignore[misc]

    def get_metadata(self, key: str, select: Any = None) -> Any:
        self._fire(key)
        return super().get_metadata(key, select)  # type: ignore[misc]


class HookedMemory(_Hooked, DictMemoryStore):
    pass


class HookedFileSystem(_Hooked, FileSystemStore):
    pass


class HookedSqlite(_Hooked, SqliteStore):
    pass


@pytest.fixture(params=["memory", "filesystem", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made: AbstractStore
    if request.param == "memory":
        made = HookedMemory()
    elif request.param == "filesystem":
        init_shared_store(tmp_path / "fs")
        made = HookedFileSystem(tmp_path / "fs", durable=False)
    else:
        made = HookedSqlite(tmp_path / "db.sqlite", durable=False)
    with made:
        yield made


def _stage(store: Any, prefix: str) -> Stage:
    return Stage(Session(f"{prefix}-{next(_counter)}"), store)


def _add(stage: Stage, entry: str) -> None:
    with stage:
        feed = stage.feeds.get("f") or Feed(id="f")
        feed.entries[entry] = Entry(title=entry)
        stage.feeds["f"] = feed


def _snapshot_then_fresh_copy(store: Any) -> tuple[Stage, Stage, str]:
    """A snapshot holding ``e1`` and a writer's copy holding ``e2`` on top of it."""
    writer, compactor = _stage(store, "race-w"), _stage(store, "race-c")
    _add(writer, "e1")
    assert compactor.compact() == 1
    _add(writer, "e2")
    own = f"feeds/f/{writer.session.identifier}.json"
    assert sorted(store.list_keys("feeds/f/")) == ["feeds/f/@snapshot.json", own]
    return writer, compactor, own


def test_reader_sees_a_copy_folded_and_deleted_between_listing_and_fetch(store: Any) -> None:
    _, compactor, own = _snapshot_then_fresh_copy(store)
    reader = _stage(store, "race-r")
    store.hook_key, store.hook = own, compactor.compact
    with reader:
        entries = set(reader.feeds["f"].entries)
    assert store.hook is None, "the compaction never ran inside the read"
    assert sorted(store.list_keys("feeds/f/")) == ["feeds/f/@snapshot.json"]
    assert entries == {"e1", "e2"}


def test_writer_finds_its_own_committed_entry_while_compaction_folds_it(store: Any) -> None:
    writer, compactor, own = _snapshot_then_fresh_copy(store)
    store.hook_key, store.hook = own, compactor.compact
    with writer:  # the writer's next transaction: read, then delete what it committed
        feed = writer.feeds["f"]
        del feed.entries["e2"]
        writer.feeds["f"] = feed
    assert store.hook is None, "the compaction never ran inside the read"
    with compactor:
        assert set(compactor.feeds["f"].entries) == {"e1"}


def test_existence_check_sees_a_document_first_compacted_meanwhile(store: Any) -> None:
    writer, compactor = _stage(store, "race-w"), _stage(store, "race-c")
    _add(writer, "e1")
    own = f"feeds/f/{writer.session.identifier}.json"
    store.hook_key, store.hook = own, compactor.compact
    reader = _stage(store, "race-r")
    with reader:
        assert "f" in reader.feeds
        assert list(reader.feeds) == ["f"]
    assert store.hook is None, "the compaction never ran inside the check"


def test_reader_sees_a_copy_folded_then_rewritten_by_its_session(store: Any) -> None:
    writer, compactor, own = _snapshot_then_fresh_copy(store)

    def compact_then_write_afresh() -> None:
        compactor.compact()  # folds e2 into the snapshot, deletes the writer's copy
        with writer:  # a fresh document: the recreated copy holds e3 only
            feed = Feed(id="f")
            feed.entries["e3"] = Entry(title="e3")
            writer.feeds["f"] = feed

    store.hook_key, store.hook = own, compact_then_write_afresh
    reader = _stage(store, "race-r")
    with reader:
        entries = set(reader.feeds["f"].entries)
    assert store.hook is None, "the compaction never ran inside the read"
    assert entries == {"e1", "e2", "e3"}
