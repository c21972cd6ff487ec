"""``storekeeper.store.transfer``: copy and sync between every backend and local folders.

What the CLI's ``cp`` and ``sync`` promise, checked here on the library call they make:
keys, data and metadata arrive (read back through a fresh store on the same storage), a
second run copies nothing, a change on the source is found even when the size stays the
same, an interrupted run leaves whole keys only and a rerun finishes the job.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from storekeeper import open_store
from storekeeper.errors import InvalidArgumentError, InvalidKeyError
from storekeeper.events import EventManager, ProgressStepEvent
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.transfer import Folder, iter_transfer, transfer
from storekeeper.store.value import StreamValue, Value

BIG = os.urandom(3 << 20)  # three buffers: the data streams in chunks

StoreFactory = Callable[[str], str]


@pytest.fixture(params=["memory", "sqlite", "file"])
def url_for(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A function giving a URL for a new store named *name* of the parametrized kind."""
    kind = request.param

    def make(name: str) -> str:
        if kind == "memory":
            return "memory://"
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.db')}"
        return (tmp_path / name).as_uri() + "?create=true"

    return make


@pytest.fixture
def pair(url_for: StoreFactory) -> Iterator[tuple[AbstractStore, AbstractStore]]:
    with open_store(url_for("source")) as source, open_store(url_for("target")) as target:
        yield source, target


def fill(store: AbstractStore) -> dict[str, tuple[bytes, dict[str, object]]]:
    content: dict[str, tuple[bytes, dict[str, object]]] = {
        "a.txt": (b"alpha", {"kind": "text", "n": 1}),
        "dir/b.bin": (BIG, {"kind": "blob"}),
        "dir/sub/c": (b"", {}),
        "other/d": (b"delta", {"tags": ["x", "y"]}),
    }
    for key, value in content.items():
        store.set(key, value)
    return content


def snapshot(store: AbstractStore) -> dict[str, tuple[bytes, dict[str, object]]]:
    return {key: (store.to_bytes(key), store.get_metadata(key)) for key in store.list_keys()}


def test_copies_every_key_with_metadata_then_nothing(
    pair: tuple[AbstractStore, AbstractStore],
) -> None:
    source, target = pair
    content = fill(source)
    report = transfer(source, target)
    assert report.copied == 4 and report.bytes == sum(len(d) for d, _ in content.values())
    assert {a.reason for a in report.actions} == {"new"}
    assert snapshot(target) == content
    again = transfer(source, target)
    assert (again.copied, again.skipped, again.actions) == (0, 4, [])
    assert transfer(source, target, compare="checksum").copied == 0


def test_fresh_store_on_the_target_storage_sees_the_copy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with open_store("memory://") as source, open_store(url) as target:
        content = fill(source)
        transfer(source, target)
    with open_store(url) as reopened:
        assert snapshot(reopened) == content


def test_same_size_change_is_found_by_time_and_by_checksum(
    pair: tuple[AbstractStore, AbstractStore],
) -> None:
    source, target = pair
    fill(source)
    transfer(source, target)
    source.set("a.txt", (b"ALPHA", {"kind": "text", "n": 1}))
    assert [(a.key, a.reason) for a in transfer(source, target).actions] == [("a.txt", "newer")]
    assert target.to_bytes("a.txt") == b"ALPHA"
    # A target changed behind the transfer's back, newer than the source: only a
    # checksum comparison can tell.
    target.set("other/d", (b"DELTA", {"tags": ["x", "y"]}))
    assert transfer(source, target).copied == 0
    report = transfer(source, target, compare="checksum")
    assert [(a.key, a.reason) for a in report.actions] == [("other/d", "checksum")]
    assert target.to_bytes("other/d") == b"delta"


def test_metadata_change_is_copied(pair: tuple[AbstractStore, AbstractStore]) -> None:
    source, target = pair
    fill(source)
    transfer(source, target)
    source.update_metadata("dir/b.bin", {"kind": "changed"})
    assert [(a.key, a.reason) for a in transfer(source, target).actions] == [
        ("dir/b.bin", "metadata")
    ]
    assert target.get_metadata("dir/b.bin") == {"kind": "changed"}


def test_sync_deletes_extras_under_the_prefix_only(
    pair: tuple[AbstractStore, AbstractStore],
) -> None:
    source, target = pair
    fill(source)
    target.set("dir/extra", (b"x", {}))
    target.set("outside", (b"y", {}))
    report = transfer(source, target, "dir/", delete=True)
    assert sorted(a.key for a in report.actions if a.action == "copy") == ["dir/b.bin", "dir/sub/c"]
    assert [a.key for a in report.actions if a.action == "delete"] == ["dir/extra"]
    assert sorted(target.list_keys()) == ["dir/b.bin", "dir/sub/c", "outside"]


def test_dry_run_writes_nothing(pair: tuple[AbstractStore, AbstractStore]) -> None:
    source, target = pair
    fill(source)
    target.set("extra", (b"x", {}))
    report = transfer(source, target, delete=True, dry_run=True)
    assert {(a.action, a.done) for a in report.actions} == {("copy", False), ("delete", False)}
    assert (report.copied, report.deleted) == (4, 1)
    assert list(target.list_keys()) == ["extra"]


class BrokenStream(io.RawIOBase):
    """Gives the first bytes of *stream*, then fails as a dying disk would."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        if self.reads > 1:
            raise OSError("disk gone")
        data = self.stream.read(min(len(buffer), 100))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def test_interrupted_copy_leaves_whole_keys_and_a_rerun_finishes(
    pair: tuple[AbstractStore, AbstractStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = pair
    content = fill(source)
    for index in range(20):
        source.set(f"many/{index:02}", (os.urandom(1000), {"i": index}))
    expected = snapshot(source)
    real_get = source.get
    opened = 0

    def broken_get(key: str) -> Value:
        # The 12th data stream the copy opens breaks after its first bytes.
        value = real_get(key)

        def opener() -> IO[bytes]:
            nonlocal opened
            opened += 1
            return BrokenStream(value.data) if opened == 12 else value.data

        return StreamValue(opener, value.metadata, value.size, modified=value.modified)

    monkeypatch.setattr(source, "get", broken_get)
    with pytest.raises(OSError, match="disk gone"):
        transfer(source, target, batch_keys=3)
    monkeypatch.undo()
    partial = snapshot(target)
    assert 0 < len(partial) < len(expected)
    assert all(expected[key] == value for key, value in partial.items())
    report = transfer(source, target)
    assert report.copied == len(expected) - len(partial)
    assert snapshot(target) == expected
    assert len(content) + 20 == len(expected)


def test_progress_counts_the_bytes_copied(pair: tuple[AbstractStore, AbstractStore]) -> None:
    source, target = pair
    content = fill(source)
    manager = EventManager()
    seen: list[int] = []
    manager.connect(ProgressStepEvent, lambda event: seen.append(event.step))
    transfer(source, target, event_manager=manager)
    assert seen == sorted(seen) and seen[-1] == sum(len(d) for d, _ in content.values())


def test_folder_round_trip(pair: tuple[AbstractStore, AbstractStore], tmp_path: Path) -> None:
    source, target = pair
    content = fill(source)
    out = tmp_path / "out"
    assert transfer(source, Folder(out)).copied == 4
    assert (out / "dir" / "b.bin").read_bytes() == BIG
    assert (out / "dir" / "sub" / "c").read_bytes() == b""
    assert transfer(source, Folder(out)).copied == 0
    assert transfer(Folder(out), target).copied == 4
    assert snapshot(target) == {key: (data, {}) for key, (data, _) in content.items()}
    assert transfer(Folder(out), target).copied == 0
    # A file edited in the folder (same size, so only its time tells) is copied again.
    (out / "a.txt").write_bytes(b"ALPHA")
    assert [a.key for a in transfer(source, Folder(out)).actions] == ["a.txt"]
    assert (out / "a.txt").read_bytes() == b"alpha"


def test_folder_to_store_keeps_the_target_metadata(
    pair: tuple[AbstractStore, AbstractStore], tmp_path: Path
) -> None:
    _, target = pair
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "k").write_bytes(b"brand new")
    target.set("k", (b"old", {"keep": True}))
    assert transfer(Folder(folder), target).copied == 1
    assert (target.to_bytes("k"), target.get_metadata("k")) == (b"brand new", {"keep": True})


def test_sync_into_a_folder_deletes_files_and_empty_folders(
    pair: tuple[AbstractStore, AbstractStore], tmp_path: Path
) -> None:
    source, _ = pair
    fill(source)
    out = tmp_path / "out"
    transfer(source, Folder(out))
    source.delete("dir/sub/c")
    report = transfer(source, Folder(out), delete=True)
    assert [(a.action, a.key) for a in report.actions] == [("delete", "dir/sub/c")]
    assert not (out / "dir" / "sub").exists() and (out / "dir" / "b.bin").exists()


def test_key_that_cannot_be_a_file_is_refused(tmp_path: Path) -> None:
    with open_store("memory://") as source:
        source.set("ok", (b"1", {}))
        source.set("../escape", (b"2", {}))
        with pytest.raises(InvalidKeyError, match="escape"):
            transfer(source, Folder(tmp_path / "out"))
        source.delete("../escape")
        source.set("ok/inside", (b"3", {}))
        with pytest.raises(InvalidKeyError, match="'ok' and 'ok/inside'"):
            transfer(source, Folder(tmp_path / "out"))
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_missing_source_folder_and_bad_mode(tmp_path: Path) -> None:
    with open_store("memory://") as store:
        with pytest.raises(FileNotFoundError):
            transfer(Folder(tmp_path / "nope"), store)
        with pytest.raises(InvalidArgumentError):
            iter_transfer(store, store, compare="sometimes")


def test_store_onto_itself_and_overlapping_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a").write_bytes(b"A")
    with open_store("memory://") as store, pytest.raises(InvalidArgumentError, match="same"):
        iter_transfer(store, store)
    for source, target in [("src", "src/sub"), ("src/sub", "src"), ("src", "src/.")]:
        with pytest.raises(InvalidArgumentError, match="overlap"):
            transfer(Folder(tmp_path / source), Folder(tmp_path / target))
    transfer(Folder(tmp_path / "src"), Folder(tmp_path / "srcx"))  # a sibling, not inside
    assert (tmp_path / "srcx" / "a").read_bytes() == b"A"
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["a", "sub"]


def test_every_folder_file_is_a_key_whatever_its_name(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / ".x.0123456789ab.tmp").write_bytes(b"mine")
    (tmp_path / "out" / "k").mkdir(parents=True)
    stale = tmp_path / "out" / "k" / ".a.9cefa6ad6315.tmp"
    stale.write_bytes(b"half")  # what a copy killed mid-file leaves
    with open_store("memory://") as store:
        transfer(Folder(tmp_path / "src"), store)
        assert store.to_bytes(".x.0123456789ab.tmp") == b"mine"
        store.set("k/a", (b"whole", {}))
        report = transfer(store, Folder(tmp_path / "out"), delete=True)
    assert [a.key for a in report.actions if a.action == "delete"] == ["k/.a.9cefa6ad6315.tmp"]
    assert sorted(p.name for p in (tmp_path / "out" / "k").iterdir()) == ["a"]


def test_dangling_symlink_is_skipped_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"A")
    (tmp_path / "src" / "dangling").symlink_to(tmp_path / "gone")
    with open_store("memory://") as store:
        with pytest.warns(UserWarning, match="dangling"):
            transfer(Folder(tmp_path / "src"), store)
        assert list(store.list_keys()) == ["a"]


KINDS = ["memory", "sqlite", "file"]


@pytest.mark.parametrize(("from_kind", "to_kind"), [(a, b) for a in KINDS for b in KINDS if a != b])
def test_between_kinds(from_kind: str, to_kind: str, tmp_path: Path) -> None:
    def url(kind: str, name: str) -> str:
        if kind == "memory":
            return "memory://"
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.db')}"
        return (tmp_path / name).as_uri() + "?create=true"

    with open_store(url(from_kind, "a")) as source, open_store(url(to_kind, "b")) as target:
        content = fill(source)
        assert transfer(source, target).copied == len(content)
        assert snapshot(target) == content
        assert transfer(source, target, delete=True).actions == []


def test_key_changed_while_copied_is_copied_again(
    pair: tuple[AbstractStore, AbstractStore],
) -> None:
    source, target = pair
    fill(source)
    manager = EventManager()
    changes = iter([b"ALPHA", b"alph4"])

    def change_source(event: ProgressStepEvent) -> None:
        # Steps are counted after a value is read and before it is written: the worst
        # moment for a change (the copy is written after it, so it looks newer).
        if event.step == 5:  # a.txt, the first key, has been read
            source.set("a.txt", (next(changes, b"final"), {"kind": "text", "n": 1}))

    manager.connect(ProgressStepEvent, change_source)
    report = transfer(source, target, event_manager=manager)
    assert report.unsettled == []
    assert ("a.txt", "changed") in [(a.key, a.reason) for a in report.actions]
    assert target.to_bytes("a.txt") == source.to_bytes("a.txt") == b"ALPHA"
    assert transfer(source, target, compare="checksum").copied == 0


#: What a no-change re-sync may ask of a store: one listing, no lookup per key.
READ_CALLS = ("get", "exists", "get_metadata", "multiget", "list_keys", "list_info", "to_bytes")


def count_reads(store: AbstractStore, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls of the store's read methods made from outside it."""
    calls: dict[str, int] = {}

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return call

    for name in READ_CALLS:
        if hasattr(store, name):
            monkeypatch.setattr(store, name, counted(name, getattr(store, name)))
    return calls


def small_tree(folder: Path, count: int) -> None:
    for index in range(count):
        path = folder / f"d{index % 10}" / f"f{index:04}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%04d" % index)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_no_change_resync_lists_the_target_once(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_tree(tmp_path / "in", 600)
    url = f"sqlite:///{tmp_path / 't.db'}" if kind == "sqlite" else (tmp_path / "t").as_uri()
    with open_store(url + ("" if kind == "sqlite" else "?create=true")) as store:
        assert transfer(Folder(tmp_path / "in"), store).copied == 600
        calls = count_reads(store, monkeypatch)
        report = transfer(Folder(tmp_path / "in"), store, delete=True)
        assert (report.copied, report.skipped, report.deleted) == (0, 600, 0)
        assert calls == {"list_info": 1}


def test_no_change_resync_between_stores_lists_each_side_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        open_store(f"sqlite:///{tmp_path / 'a.db'}") as source,
        open_store((tmp_path / "b").as_uri() + "?create=true") as target,
    ):
        source.multiset([f"k{index:04}" for index in range(500)], [(b"x", {"n": 1})] * 500)
        assert transfer(source, target).copied == 500
        source.update_metadata("k0250", {"n": 2})  # found in the listing's metadata
        from_source = count_reads(source, monkeypatch)
        from_target = count_reads(target, monkeypatch)
        report = transfer(source, target, delete=True)
        assert [(a.key, a.reason) for a in report.actions] == [("k0250", "metadata")]
        assert target.get_metadata("k0250") == {"n": 2}
        # One listing each; the one copy reads its key (and checks it again after): a
        # few calls in all, none per key that did not change.
        for calls in (from_source, from_target):
            assert calls.pop("list_info") == 1
            assert sum(calls.values()) <= 3, calls


def test_no_change_resync_into_sqlite_runs_a_few_statements(tmp_path: Path) -> None:
    small_tree(tmp_path / "in", 1500)
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        transfer(Folder(tmp_path / "in"), store)
        statements: list[str] = []
        store._conn().set_trace_callback(statements.append)  # type: ignore[attr-defined]
        try:
            assert transfer(Folder(tmp_path / "in"), store).skipped == 1500
        finally:
            store._conn().set_trace_callback(None)  # type: ignore[attr-defined]
    # A paged scan of the key range: a handful of pages, not one lookup per key.
    assert 0 < len(statements) <= 10, statements[:12]


def test_same_size_folder_change_is_copied_into_a_store(
    url_for: StoreFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "k"
    path.write_bytes(b"one1")
    with open_store(url_for("t")) as store:
        assert transfer(Folder(folder), store).copied == 1
        copied_at = store.get("k").modified
        assert copied_at is not None
        # Edited after the copy, same size: its newer modified time tells (once that
        # time is past: a time still in the future says nothing, see the next test).
        path.write_bytes(b"two2")
        later = round((copied_at + 0.05) * 1e9)
        os.utime(path, ns=(later, later))
        while time.time() <= later / 1e9:
            time.sleep(0.01)
        report = transfer(Folder(folder), store)
        assert [(a.key, a.reason) for a in report.actions] == [("k", "newer")]
        assert store.to_bytes("k") == b"two2"
        # Same size and an older time (restored from a backup): a checksum finds it.
        path.write_bytes(b"old0")
        os.utime(path, ns=(later - 10**10, later - 10**10))
        assert transfer(Folder(folder), store).copied == 0
        report = transfer(Folder(folder), store, compare="checksum")
        assert [(a.key, a.reason) for a in report.actions] == [("k", "checksum")]
        assert store.to_bytes("k") == b"old0"


def test_a_listing_out_of_key_order_is_refused_before_any_delete(tmp_path: Path) -> None:
    from storekeeper.backends.memory import DictMemoryStore
    from storekeeper.errors import BackendError
    from storekeeper.store import KeyInfo

    class Shuffled(DictMemoryStore):
        """A store whose detailed listing breaks the key-order contract."""

        def list_info(
            self, prefix: str = "", *, metadata: bool = False
        ) -> Iterator[tuple[str, KeyInfo]]:
            return reversed(list(super().list_info(prefix, metadata=metadata)))

    with Shuffled() as source, open_store(f"sqlite:///{tmp_path / 't.db'}") as target:
        content = fill(source)
        target.set("a.txt", (b"kept", {}))
        # Merged in the wrong order, "a.txt" would look like the target's alone.
        with pytest.raises(BackendError, match="not in key order"):
            transfer(source, target, delete=True)
        assert snapshot(target) == {"a.txt": (b"kept", {})}
        assert set(content) > {"a.txt"}
