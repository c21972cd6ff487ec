"""A transaction that only reads writes nothing to the repository.

Checked through the store itself, three ways: its keys and versions, a listener on its
modification events, and (for a filesystem store) the files on disk. Adopting an
unstamped document is the one write a read makes, and it records nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import DictMemoryStore, FileSystemStore, SqliteStore, init_shared_store
from storekeeper.stage import BaseStage, MergeableDocument, Route, Session
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.events import StoreModificationEvent


class Doc(MergeableDocument):
    title: str = ""


class DocStage(BaseStage):
    doc = Route(Doc, ["doc.{session.identifier}.json"])
    docs = Route(Doc, ["docs", "{0}", "{session.identifier}.json"])
    deep = Route(Doc, ["deep", "{0}", "{1}", "{session.identifier}.json"])


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


def _stage(store: AbstractStore, name: str) -> DocStage:
    return DocStage(Session(f"{name}-{next(_names)}"), store)


def _versions(store: AbstractStore) -> dict[str, Any]:
    return {key: store.get(key).version for key in store.list_keys()}


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(path.relative_to(root)): (os.stat(path).st_mtime_ns, path.read_bytes())
        for path in root.rglob("*")
        if path.is_file()
    }


class Watch:
    """Everything a store shows of writes: versions, modification events, raw files."""

    def __init__(self, store: AbstractStore, tmp_path: Path) -> None:
        self.store = store
        self.root = tmp_path / "fs" if isinstance(store, FileSystemStore) else None
        self.events: list[str] = []
        store.event_manager.connect(StoreModificationEvent, self._heard)
        self.before = self._look()

    def _heard(self, event: Any) -> None:
        self.events.append(event.key)

    def _look(self) -> tuple[dict[str, Any], dict[str, tuple[int, bytes]]]:
        files = _files(self.root) if self.root is not None else {}
        return _versions(self.store), files

    def unchanged(self) -> bool:
        return self.events == [] and self._look() == self.before


def _populate(store: AbstractStore) -> None:
    writer = _stage(store, "ro-writer")
    with writer:
        writer.doc = Doc(title="flat")
        writer.docs["a"] = Doc(title="a")
        writer.docs["b"] = Doc(title="b")
        writer.deep["x"]["y"] = Doc(title="deep")
    with writer:
        del writer.docs["b"]


def test_a_transaction_that_only_reads_writes_nothing(store: AbstractStore, tmp_path: Path) -> None:
    _populate(store)
    reader = _stage(store, "ro-reader")  # never used the stage: nothing recorded yet
    watch = Watch(store, tmp_path)
    with reader:
        assert reader.doc.title == "flat"
        assert list(reader.docs) == ["a"] and len(reader.docs) == 1
        assert "b" not in reader.docs and reader.docs.get("b") is None
        assert reader.deep["x"]["y"].title == "deep"
        assert reader.docs.get("missing") is None
        assert len(reader.sessions) == 1  # the writer's record only
    with reader:
        pass  # an empty transaction, too
    assert watch.unchanged()
    assert reader.session not in reader.sessions


def test_adopting_an_unstamped_document_is_the_only_write_of_a_read(
    store: AbstractStore, tmp_path: Path
) -> None:
    store.set("docs/hand/made.json", (json.dumps({"title": "by hand"}).encode(), {}))
    reader = _stage(store, "ro-adopt")
    before = set(store.list_keys())
    adopting = Watch(store, tmp_path)
    with reader:
        assert reader.docs["hand"].title == "by hand"
    own = f"docs/hand/{reader.session.identifier}.json"
    assert set(store.list_keys()) - before == {own}  # the adopted copy, no session record
    assert adopting.events == [own]
    watch = Watch(store, tmp_path)
    with reader:
        assert reader.docs["hand"].title == "by hand"  # adopted already: nothing more
    assert watch.unchanged()
