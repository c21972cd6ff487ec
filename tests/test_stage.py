"""The stage: routes, directories, transactions, the dirty buffer, sessions and touch."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from storekeeper import DictMemoryStore, FileSystemStore, SqliteStore, errors, init_shared_store
from storekeeper.stage import (
    BaseStage,
    Directory,
    Entry,
    Feed,
    MergeableDocument,
    Route,
    Session,
    Stage,
    TransactionError,
    compile_format_to_pattern,
)
from storekeeper.stage.codec import METADATA_NAME, decode_revision
from storekeeper.store.abstract import AbstractStore


class Doc(MergeableDocument):
    title: str = ""
    body: str = ""


class Student(MergeableDocument):
    name: str = ""


class SchoolStage(BaseStage):
    doc = Route(Doc, ["doc.{session.identifier}.json"])
    dir = Route(Doc, ["dir", "{0}", "{session.identifier}.json"])
    seating = Route(Student, ["students", "col-{0}", "row-{1}", "{session.identifier}.json"])


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


@pytest.fixture
def memory() -> Iterator[DictMemoryStore]:
    with DictMemoryStore() as made:
        yield made


def _stage(store: AbstractStore, name: str) -> SchoolStage:
    return SchoolStage(Session(name), store)


# -- patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [
        ("string{0}like{1}this{{2}}", r"^string(.*?)like(.*?)this\{2\}$"),
        ("{{2}}", r"^\{2\}$"),
        ("{0}{1}", r"^(.*?)(.*?)$"),
        ("x{0!r:>3}y", r"^x(.*?)y$"),
        ("{session.identifier}.json", r"^(.*?)\.json$"),
        ("plain", r"^plain$"),
    ],
)
def test_compile_format_to_pattern_does_what_it_documents(fmt: str, pattern: str) -> None:
    assert compile_format_to_pattern(fmt).pattern == pattern


def test_compiled_pattern_matches_what_the_format_produces() -> None:
    compiled = compile_format_to_pattern("col-{0}-{{x}}.{1}")
    template = "col-{0}-{{x}}.{1}"
    match = compiled.match(template.format("B", "json"))
    assert match is not None and match.groups() == ("B", "json")
    assert compiled.match("col-B-x.json") is None


# -- sessions and touch ---------------------------------------------------------------


def test_sessions_appear_once_a_stage_has_been_used(store: AbstractStore) -> None:
    a, b = _stage(store, "ses-a"), _stage(store, "ses-b")
    assert a.sessions == frozenset()
    with a:
        assert a.doc is None
    assert a.sessions == frozenset()  # a transaction that only reads records nothing
    with a:
        a.touch()
    assert a.sessions == {Session("ses-a")}
    with b:
        b.dir["k"] = Doc(title="b")
    assert a.sessions == b.sessions == {Session("ses-a"), Session("ses-b")}
    assert isinstance(a.session_times()[Session("ses-b")], datetime)
    c = _stage(store, "ses-c")
    with c:
        del c.dir["k"]  # a delete is a write
    assert Session("ses-c") in a.sessions


def test_touch_records_the_time(memory: DictMemoryStore) -> None:
    stage = _stage(memory, "touch-a")
    with stage:
        stage.touch()
        assert list(memory.list_keys()) == []  # recorded when the transaction commits
    stored = datetime.fromisoformat(memory.to_bytes(".sessions/touch-a").decode())
    assert stored.tzinfo is not None
    assert abs((datetime.now(UTC) - stored).total_seconds()) < 60


# -- low-level read and write ---------------------------------------------------------


def test_read_adopts_an_unstamped_document_into_the_readers_own_copy(store: AbstractStore) -> None:
    store.set("doc.handmade.json", (json.dumps({"title": "by hand"}).encode(), {}))
    a = _stage(store, "adopt-a")
    with a:
        doc = a.doc
        assert doc is not None and doc.title == "by hand"
        assert doc.__revision__ is not None and doc.__revision__.session is Session("adopt-a")
        assert not store.exists("doc.adopt-a.json")  # nothing written before the commit
    assert decode_revision(store.get_metadata("doc.adopt-a.json")) is not None
    assert store.get_metadata("doc.handmade.json") == {}  # the hand-made copy is left alone
    b = _stage(store, "adopt-b")
    with b:
        edited = b.doc
        assert edited is not None
        edited.title = "edited"
        b.doc = edited
    for stage in (a, b):
        with stage:
            assert stage.doc is not None and stage.doc.title == "edited"


def test_write_stamps_the_revision_and_stores_it_in_metadata(memory: DictMemoryStore) -> None:
    stage = _stage(memory, "write-a")
    before = datetime.now(UTC)
    with stage:
        written = stage.write(["x.json"], Doc(title="t"))
        revision = written.__revision__
        assert revision is not None and revision.session is stage.session
        assert before <= revision.updated_at <= datetime.now(UTC)
        assert stage.read(Doc, ["x.json"]).title == "t"
    stored = decode_revision(memory.get_metadata("x.json"))
    assert stored is not None and stored[0] == revision
    assert set(memory.get_metadata("x.json")) == {METADATA_NAME}


def test_read_of_a_missing_key_is_a_key_error(memory: DictMemoryStore) -> None:
    with _stage(memory, "miss-a") as stage, pytest.raises(KeyError):
        stage.read(Doc, ["nothing.json"])


def test_read_and_write_check_the_document_type(memory: DictMemoryStore) -> None:
    with _stage(memory, "type-a") as stage:
        with pytest.raises(TypeError):
            stage.read(dict, ["x.json"])  # type: ignore[type-var]
        with pytest.raises(TypeError):
            stage.write(["x.json"], {"title": "x"})  # type: ignore[type-var]


# -- flat routes ----------------------------------------------------------------------


def test_flat_route_is_none_until_written(store: AbstractStore) -> None:
    with _stage(store, "flat-a") as stage:
        assert stage.doc is None
        stage.doc = Doc(title="hello")
        assert stage.doc is not None and stage.doc.title == "hello"
    assert store.exists("doc.flat-a.json")


def test_flat_route_shows_another_sessions_update(store: AbstractStore) -> None:
    a, b = _stage(store, "flat2-a"), _stage(store, "flat2-b")
    with a:
        a.doc = Doc(title="from a", body="a's body")
    with b:
        doc = b.doc
        assert doc is not None
        doc.title = "from b"
        b.doc = doc
        written = b.doc
    with a:
        seen = a.doc
        assert seen is not None
        assert (seen.title, seen.body) == ("from b", "a's body")
        assert written is not None and written.__revision__ is not None
        assert seen.__revision__ is not None
        assert seen.__revision__.updated_at >= written.__revision__.updated_at
    assert sorted(store.list_keys("doc.")) == ["doc.flat2-a.json", "doc.flat2-b.json"]


def test_a_flat_route_cannot_be_set_as_a_directory(memory: DictMemoryStore) -> None:
    with _stage(memory, "flat3-a") as stage, pytest.raises(AttributeError):
        stage.dir = Doc()


# -- directories ----------------------------------------------------------------------


def test_directory_route(store: AbstractStore) -> None:
    a, b = _stage(store, "dir-a"), _stage(store, "dir-b")
    with a:
        a.dir["abc"] = Doc(title="abc")
    with b:
        b.dir["def"] = Doc(title="def")
    with a:
        directory = a.dir
        assert isinstance(directory, Directory)
        assert len(directory) == 2
        assert list(directory) == ["abc", "def"]
        assert directory["def"].title == "def"
        assert "abc" in directory and "xyz" not in directory
        with pytest.raises(KeyError):
            directory["xyz"]
        assert repr(directory) == "<storekeeper.stage.route.Directory ['dir']>"


def test_directory_iteration_includes_the_open_transaction(store: AbstractStore) -> None:
    stage = _stage(store, "dir2-a")
    with stage:
        assert list(stage.dir) == []  # a missing level is empty, not an error
        stage.dir["b"] = Doc(title="b")
        stage.dir["a"] = Doc(title="a")
        assert list(stage.dir) == ["a", "b"]
        assert stage.dir["a"].title == "a"
    other = _stage(store, "dir2-b")
    with other:
        assert list(other.dir) == ["a", "b"]


def test_directory_indices_are_escaped_reversibly(memory: DictMemoryStore) -> None:
    stage = Stage(Session("esc-a"), memory)
    feed_id = "https://example.org/feed?x=1&y=%2F"
    with stage:
        stage.feeds[feed_id] = Feed(id=feed_id, title="t")
    with stage:
        assert list(stage.feeds) == [feed_id]
        assert stage.feeds[feed_id].title == "t"
    keys = list(memory.list_keys("feeds/"))
    assert len(keys) == 1 and keys[0].count("/") == 2


def test_deleting_from_a_directory_leaves_a_tombstone(store: AbstractStore) -> None:
    a, b = _stage(store, "del-a"), _stage(store, "del-b")
    with a:
        a.dir["x"] = Doc(title="x")
        a.dir["y"] = Doc(title="y")
    with b:
        assert b.dir["x"].title == "x"
        del b.dir["x"]
        assert list(b.dir) == ["y"]
        with pytest.raises(KeyError):
            del b.dir["nothing"]
    with a:  # a's own copy still holds x, but the tombstone wins
        assert list(a.dir) == ["y"]
        with pytest.raises(KeyError):
            a.dir["x"]
        assert a.read(Doc, ["dir", "x", "del-a.json"]).title == "x"  # a's copy is kept
    with b:  # no copy, however stale, brings it back by itself
        assert "x" not in b.dir and list(b.dir) == ["y"]
    with a:
        a.dir["x"] = Doc(title="again")  # a deliberate re-creation wins
    with b:
        assert b.dir["x"].title == "again"


def test_deep_route_seating_chart(store: AbstractStore) -> None:
    stage = _stage(store, "seat-a")
    with stage:
        for column in "ABC":
            for row in "123":
                stage.seating[column][row] = Student(name=f"{column}{row}")
    other = _stage(store, "seat-b")
    with other:
        chart = other.seating
        assert list(chart) == ["A", "B", "C"]
        column = chart["B"]
        assert isinstance(column, Directory)
        assert repr(column) == "<storekeeper.stage.route.Directory ['students', 'col-B']>"
        assert list(column) == ["1", "2", "3"]
        assert column["3"].name == "B3"
        assert list(chart["Z"]) == []
        with pytest.raises(TypeError):
            chart["A"] = Student(name="whole column")
    assert store.exists("students/col-B/row-3/seat-a.json")


# -- transactions ---------------------------------------------------------------------


def _begin_first(stage: BaseStage) -> None:
    stage.__enter__()


def test_doubly_begun_transaction_says_where_the_first_began(memory: DictMemoryStore) -> None:
    stage = _stage(memory, "tx-a")
    _begin_first(stage)
    try:
        with pytest.raises(TransactionError) as caught, stage:
            pass
        assert isinstance(caught.value, errors.TransactionError)
        assert isinstance(caught.value, RuntimeError)
        assert "_begin_first" in str(caught.value)
    finally:
        stage.__exit__(None, None, None)


def test_operations_outside_a_transaction_raise(memory: DictMemoryStore) -> None:
    stage = _stage(memory, "tx-b")
    with pytest.raises(TransactionError, match="with stage"):
        stage.doc  # noqa: B018
    with pytest.raises(TransactionError):
        stage.doc = Doc()
    with pytest.raises(TransactionError):
        stage.get_current_transaction()


def test_an_exception_discards_the_transaction(store: AbstractStore) -> None:
    stage = _stage(store, "tx-c")
    with pytest.raises(ZeroDivisionError), stage:
        stage.doc = Doc(title="never")
        _ = 1 / 0
    assert not store.exists("doc.tx-c.json")
    with stage:
        assert stage.doc is None


def test_dirty_buffer_keeps_writes_invisible_until_commit(memory: DictMemoryStore) -> None:
    stage = _stage(memory, "buf-a")
    with stage:
        stage.doc = Doc(title="pending")
        buffer = stage.get_current_transaction()
        assert list(buffer.dictionary) == ["doc.buf-a.json"]
        assert not memory.exists("doc.buf-a.json")
        assert stage.doc is not None and stage.doc.title == "pending"
        seen_elsewhere: list[Any] = []
        thread = threading.Thread(target=lambda: seen_elsewhere.append(_peek(stage)))
        thread.start()
        thread.join()
        assert seen_elsewhere == [None]
    assert buffer.dictionary == {}
    assert memory.exists("doc.buf-a.json")


def _peek(stage: SchoolStage) -> Doc | None:
    with stage:
        return stage.doc


def test_threads_have_their_own_transactions(store: AbstractStore) -> None:
    stage = _stage(store, "thr-a")
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with stage:
                barrier.wait(timeout=60)
                stage.dir[f"d{index}"] = Doc(title=str(index))
                barrier.wait(timeout=60)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    with stage:
        assert list(stage.dir) == ["d0", "d1", "d2", "d3"]


def test_asyncio_tasks_have_their_own_transactions(memory: DictMemoryStore) -> None:
    stage = _stage(memory, "task-a")

    async def edit(name: str, fail: bool, written: asyncio.Barrier) -> None:
        with stage:
            stage.dir[name] = Doc(title=name)
            await written.wait()  # both tasks are inside their transactions now
            assert list(stage.dir) == [name]
            await written.wait()
            if fail:
                raise ValueError(name)

    async def main() -> list[Any]:
        written = asyncio.Barrier(2)
        return await asyncio.gather(
            edit("kept", False, written), edit("dropped", True, written), return_exceptions=True
        )

    results = asyncio.run(main())
    assert results[0] is None and isinstance(results[1], ValueError)
    with stage:
        assert list(stage.dir) == ["kept"]


# -- costs ----------------------------------------------------------------------------


class CountingStore(DictMemoryStore):
    """Counts listings and reads, and can serve one stale read."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0
        self.reads: list[str] = []
        self.stale: dict[str, Any] = {}

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        self.listings += 1
        return super().list_keys(prefix, delimiter)

    def get(self, key: str) -> Any:
        self.reads.append(key)
        stale = self.stale.pop(key, None)
        return stale if stale is not None else super().get(key)


def test_reading_a_document_costs_one_listing_and_its_copies() -> None:
    with CountingStore() as store:
        for index in range(6):
            stage = Stage(Session(f"cost-{index}"), store)
            with stage:
                for feed in range(20):
                    stage.feeds[f"f{feed}"] = Feed(id=f"f{feed}", title=f"{index}")
        reader = Stage(Session("cost-0"), store)
        with reader:
            store.listings, store.reads = 0, []
            assert reader.feeds["f7"].title == "5"
            assert store.listings == 1
            # The copies, then the snapshot's slot (a compaction may have folded a
            # listed copy into it while they were read), even when it does not exist.
            assert store.reads[-1] == "feeds/f7/@snapshot.json"
            assert sorted(store.reads[:-1]) == [f"feeds/f7/cost-{i}.json" for i in range(6)]


@pytest.mark.parametrize("others", [1, 12])
def test_commit_cost_does_not_grow_with_other_sessions(others: int) -> None:
    with CountingStore() as store:
        for index in range(others):
            with Stage(Session(f"many-{index}"), store) as stage:
                stage.subscriptions = _subscriptions(f"s{index}")
        writer = Stage(Session("many-writer"), store)
        with writer:
            writer.subscriptions = _subscriptions("mine")
        with writer:
            doc = writer.subscriptions
            assert doc is not None
            doc.subscriptions["mine"].title = "renamed"
            store.reads = []
            writer.subscriptions = doc
            store.listings = 0
        assert store.listings == 0
        assert store.reads == ["subscriptions.many-writer.json"] * 2  # write merge + commit


def _subscriptions(feed_id: str) -> Any:
    from storekeeper.stage import Subscription, SubscriptionList

    doc = SubscriptionList()
    doc.subscriptions[feed_id] = Subscription(title=feed_id)
    return doc


def test_commit_merges_and_retries_after_a_concurrent_write_of_the_same_session() -> None:
    with CountingStore() as store:
        stage = Stage(Session("retry-a"), store)
        twin = Stage(Session("retry-a"), store)  # another process of the same session
        with stage:
            feed = Feed(id="f", title="t")
            feed.entries["e1"] = Entry(title="one")
            stage.feeds["f"] = feed
        stale = store.get("feeds/f/retry-a.json")
        with twin:
            theirs = twin.feeds["f"]
            theirs.entries["e2"] = Entry(title="two")
            twin.feeds["f"] = theirs
        with stage:
            ours = stage.feeds["f"]
            ours.entries["e1"].starred = True
            stage.feeds["f"] = ours
            # The commit's first read sees the copy as it was before the twin wrote: its
            # conditional write conflicts, and the retry merges the twin's edit.
            store.stale["feeds/f/retry-a.json"] = stale
        with stage:
            merged = stage.feeds["f"]
            assert sorted(merged.entries) == ["e1", "e2"]
            assert merged.entries["e1"].starred


def test_routes_refuse_documents_of_another_type(memory: DictMemoryStore) -> None:
    with _stage(memory, "rtype-a") as stage:
        with pytest.raises(TypeError, match="Doc documents"):
            stage.doc = Student(name="x")  # type: ignore[assignment]
        with pytest.raises(TypeError, match="Student documents"):
            stage.seating["A"]["1"] = Doc(title="x")


def test_two_devices_sync_a_reading_list_through_a_folder(tmp_path: Path) -> None:
    # The README's example: each device opens the same (synced) folder as its store.
    folder = tmp_path / "Sync" / "reader"
    laptop = Stage(Session("laptop"), folder.as_uri() + "?create=true")
    phone = Stage(Session("phone"), folder.as_uri())
    with laptop:
        feed = Feed(id="https://example.org/feed.xml", title="Example")
        feed.entries["post-1"] = Entry(title="Hello", link="https://example.org/1")
        feed.entries["post-2"] = Entry(title="World", link="https://example.org/2")
        laptop.feeds[feed.id] = feed
    with phone:  # the phone marks post-1 read while the laptop stars post-2
        feed = phone.feeds["https://example.org/feed.xml"]
        feed.entries["post-1"].read = True
        phone.feeds[feed.id] = feed
    with laptop:
        feed = laptop.feeds["https://example.org/feed.xml"]
        feed.entries["post-2"].starred = True
        laptop.feeds[feed.id] = feed
    for device in (laptop, phone):
        with device:
            entries = device.feeds["https://example.org/feed.xml"].entries
            assert (entries["post-1"].read, entries["post-2"].starred) == (True, True)


@pytest.mark.parametrize(
    ("body", "metadata"),
    [
        (b"not json", {METADATA_NAME: {"revision": "x 1", "bases": []}}),
        (b'{"title": [1, 2]}', {METADATA_NAME: {"revision": "x 1", "bases": []}}),
        (b"{}", {METADATA_NAME: {"revision": "no-time", "bases": []}}),
        (b"[1, 2]", {}),
    ],
)
def test_a_damaged_copy_is_a_clear_error_naming_it(
    memory: DictMemoryStore, body: bytes, metadata: dict[str, Any]
) -> None:
    memory.set("doc.damaged.json", (body, metadata))
    with _stage(memory, "dmg-a") as stage, pytest.raises(errors.CorruptFileError, match="damaged"):
        stage.doc  # noqa: B018
    assert memory.to_bytes("doc.damaged.json") == body  # left as it was


class OverlappingStage(BaseStage):
    doc = Route(Doc, ["doc.{session.identifier}.json"])
    extra = Route(Doc, ["doc.extra.{session.identifier}.json"])


def test_a_session_whose_copy_another_route_would_claim_cannot_write(
    memory: DictMemoryStore,
) -> None:
    ambiguous = OverlappingStage(Session("extra.ovl-a"), memory)
    with pytest.raises(ValueError, match="another route"), ambiguous:
        ambiguous.doc = Doc(title="would read as session ovl-a's extra")
    assert [key for key in memory.list_keys() if key.startswith("doc")] == []
    plain = OverlappingStage(Session("ovl-b"), memory)
    with plain:
        plain.extra = Doc(title="extra")
    with ambiguous:
        assert ambiguous.doc is None
        assert ambiguous.extra.title == "extra"
