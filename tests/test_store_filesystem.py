"""FileSystemStore against the conformance suite, plus what only it promises."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storekeeper.backends import _fs_transactions
from storekeeper.backends._fs_journal import JOURNAL_NAME, STAGE_PREFIX, Journal
from storekeeper.backends._fs_names import MAX_ESCAPED_LENGTH, decode_name, encode_key
from storekeeper.backends.filesystem import (
    FileSystemStore,
    FileSystemStoreError,
    init_shared_store,
)
from storekeeper.errors import ConflictError, CorruptFileError, NotConnectedError
from storekeeper.events import EventManager
from storekeeper.files import atomic_write
from storekeeper.store import AbstractStore, open_store
from storekeeper.testing.crossprocess import Opener, same_store
from storekeeper.testing.model import SMALL_INLINE_LIMIT
from storekeeper.testing.processes import cas_counter, create_only_race
from storekeeper.testing.raw import read_in_new_process, write_in_new_process
from storekeeper.testing.store import WEIRD_KEYS, StoreTests

CONTEXT = multiprocessing.get_context("spawn")
BIG = 200_000  # over the default inline limit: stored in a data file


def _store(tmp_path: Path, **options: object) -> FileSystemStore:
    init_shared_store(tmp_path / "store")
    return FileSystemStore(tmp_path / "store", **options)  # type: ignore[arg-type]


class _FileSystemRaw(StoreTests):
    """Raw access: a fresh store object on the same directory, in another process."""

    listing_streams = False

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, FileSystemStore)
        return read_in_new_process(functools.partial(FileSystemStore, store.path), key)

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, FileSystemStore)
        opener = functools.partial(FileSystemStore, store.path)
        write_in_new_process(opener, key, data, metadata)


class TestFileSystemStore(_FileSystemRaw):
    def create_store(self, tmp_path: Path, event_manager: EventManager) -> FileSystemStore:
        return _store(tmp_path, event_manager=event_manager)

    reopen_store = create_store

    def store_url(self, tmp_path: Path) -> str:
        return f"file://{tmp_path / 'store'}"

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> FileSystemStore:
        return _store(
            tmp_path, event_manager=event_manager, inline_limit=SMALL_INLINE_LIMIT, durable=False
        )


class TestFileSystemStoreDataFiles(_FileSystemRaw):
    """A tiny inline limit and no fsync: every value but the smallest uses a data file."""

    large_value_size = 100_003

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> FileSystemStore:
        return _store(tmp_path, event_manager=event_manager, inline_limit=2, durable=False)

    reopen_store = create_store

    def process_opener(self, tmp_path: Path) -> Opener:
        return same_store(self, tmp_path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileSystemStore]:
    with _store(tmp_path) as opened:
        assert isinstance(opened, FileSystemStore)
        yield opened


def _files(root: Path) -> list[Path]:
    return [Path(top, name) for top, _, names in os.walk(root) for name in names]


# -- key names --------------------------------------------------------------------------
def test_weird_keys_stay_inside_the_root(tmp_path: Path, store: FileSystemStore) -> None:
    for key in WEIRD_KEYS:
        store.set(key, (key.encode(), {}))
        store.set(key + "/big", (b"x" * BIG, {}))
    assert sorted(os.listdir(tmp_path)) == ["store"]
    root = (tmp_path / "store").resolve()
    names = [path.name for path in _files(root)]
    assert len(names) >= 2 * len(WEIRD_KEYS)
    for path in _files(root):
        assert path.resolve().parent in {root, root / "keys", root / "data"}, path
        assert len(path.name.encode()) <= 255
    keys_dir = os.listdir(root / "keys")
    assert len(keys_dir) == 2 * len(WEIRD_KEYS)
    assert all(name == name.lower() and "." not in name for name in keys_dir)
    assert sorted(store.query_keys()) == sorted(WEIRD_KEYS + [k + "/big" for k in WEIRD_KEYS])


def test_names_are_unique_ignoring_case() -> None:
    keys = [*WEIRD_KEYS, "Ab", "aB", "AB", "ab", "É", "é", "ǅ", "ǆ", "Ǆ", "ß", "SS", "ss"]
    names = [encode_key(key) for key in keys]
    assert all(name == name.lower() for name in names)
    assert len({name.lower() for name in names}) == len(keys)


def test_device_names_and_dots_are_escaped() -> None:
    for key in ("con", "CON", "nul", "com1", "lpt9", "aux", "prn"):
        assert encode_key(key).lower() not in {"con", "nul", "com1", "lpt9", "aux", "prn"}
    for key in (".", "..", "../x", "/abs", "a/../../b", "c:\\x"):
        name = encode_key(key)
        assert "/" not in name and "\\" not in name and "." not in name and ":" not in name


def test_long_keys_get_hashed_names(store: FileSystemStore) -> None:
    long_key = "k" * (MAX_ESCAPED_LENGTH + 1)
    assert len(encode_key(long_key)) == 65 and decode_name(encode_key(long_key)) is None
    store.set(long_key, (b"v", {"m": 1}))
    assert store.exists(long_key) and not store.exists(long_key + "x")
    assert store.query_keys() == [long_key]
    assert store.query(m=1) == [(long_key, {"m": 1})]


@given(st.text(min_size=1).filter(lambda key: "\x00" not in key))
def test_names_round_trip(key: str) -> None:
    name = encode_key(key)
    assert name == name.lower() and len(name) <= MAX_ESCAPED_LENGTH + 1
    if not name.startswith("~"):
        assert decode_name(name) == key


@given(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8))
def test_names_are_injective(first: str, second: str) -> None:
    if first != second:
        assert encode_key(first).lower() != encode_key(second).lower()


# -- opening ------------------------------------------------------------------------------
def test_missing_root_or_magic_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileSystemStoreError, match="directory not found") as info:
        FileSystemStore(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="magic file"):
        FileSystemStore(tmp_path / "plain")
    init_shared_store(tmp_path / "plain")
    store = FileSystemStore(tmp_path / "plain")
    (tmp_path / "plain" / ".FSStore").unlink()
    with pytest.raises(FileSystemStoreError):
        store.connect()
    assert not store.is_connected()


def test_custom_magic_file_and_idempotent_init(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "a" / "b", magic_fname="MAGIC")
    with FileSystemStore(tmp_path / "a" / "b", "MAGIC") as store:
        store.set("k", (b"v", {}))
    init_shared_store(tmp_path / "a" / "b", magic_fname="MAGIC")
    with FileSystemStore(tmp_path / "a" / "b", "MAGIC") as store:
        assert store.to_bytes("k") == b"v"
    with pytest.raises(FileSystemStoreError):
        FileSystemStore(tmp_path / "a" / "b")


def test_open_store_file_urls(tmp_path: Path) -> None:
    path = tmp_path / "my store"
    with pytest.raises(FileSystemStoreError):
        open_store(f"file://{path}")
    with open_store(f"file://{path.as_posix().replace(' ', '%20')}?create=true&durable=false") as s:
        assert isinstance(s, FileSystemStore)
        assert (s.path, s.durable, s.is_connected()) == (str(path), False, True)
        s.set("k", (b"v", {}))
    with open_store(f"file://{path}") as again:
        assert isinstance(again, FileSystemStore) and again.durable
        assert again.to_bytes("k") == b"v"
    with pytest.raises(ValueError, match="host"):
        open_store(f"file://elsewhere{path}")


def test_info_and_connection(tmp_path: Path) -> None:
    store = _store(tmp_path, durable=False)
    with pytest.raises(NotConnectedError):
        store.collect_garbage()
    with store:
        info = store.info()
    assert info["type"] == "FileSystemStore" and info["durable"] is False
    assert info["path"] == str(tmp_path / "store")


# -- values ---------------------------------------------------------------------------------
def test_a_value_keeps_its_data_when_the_key_is_overwritten(store: FileSystemStore) -> None:
    store.set("k", (b"a" * BIG, {"v": 1}))
    old = store.get("k")
    stream = old.data
    store.set("k", (b"b" * BIG, {"v": 2}))
    assert stream.read() == b"a" * BIG
    stream.close()
    with old.range(BIG - 3, None) as tail:
        assert tail.read() == b"aaa"
    assert store.to_bytes("k") == b"b" * BIG
    assert len(os.listdir(store.path + "/data")) == 1


def test_large_streams_seek_and_read_ranges(store: FileSystemStore) -> None:
    data = bytes(range(256)) * 1000
    store.set("k", (data, {}))
    with store.get_data("k") as stream:
        assert stream.seekable()
        stream.seek(1000)
        assert stream.read(10) == data[1000:1010]
        assert stream.tell() == 1010
        assert stream.read() == data[1010:]
    with store.get_data_range("k", 5, 300) as part:
        assert part.read(1) == data[5:6] and part.read() == data[6:300]


def test_data_files_replace_and_go_away(store: FileSystemStore) -> None:
    store.set("k", (b"x" * BIG, {}))
    store.set_metadata("k", {"m": 1})
    store.update_metadata("k", {"n": 2})
    assert store.to_bytes("k") == b"x" * BIG
    assert len(os.listdir(store.path + "/data")) == 1
    store.set("k", (b"small", {}))
    assert os.listdir(store.path + "/data") == []
    store.set("k", (b"y" * BIG, {}))
    store.delete("k")
    assert os.listdir(store.path + "/data") == []


def test_a_damaged_record_is_reported(store: FileSystemStore) -> None:
    store.set("k", (b"value", {"a": 1}))
    record = Path(store.path, "keys", encode_key("k"))
    content = record.read_bytes()
    record.write_bytes(content[:-1] + b"!")
    with pytest.raises(CorruptFileError, match="checksum"):
        store.get("k")
    record.write_bytes(b"garbage")
    with pytest.raises(CorruptFileError):
        store.get_metadata("k")


def test_metadata_reads_do_not_read_inline_data(store: FileSystemStore) -> None:
    store.set("k", (b"d" * 60_000, {"a": 1}))
    assert store.get_metadata("k") == {"a": 1}
    assert store.query(a=1) == [("k", {"a": 1})]


# -- crash recovery ---------------------------------------------------------------------
class _CrashError(Exception):
    pass


def _journal_then_crash(root: str, journal: Journal, *, durable: bool) -> None:
    atomic_write(os.path.join(root, JOURNAL_NAME), journal.encode(), durable=durable)
    raise _CrashError


def _crash_mid_commit(store: FileSystemStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.multiset(["a", "b", "gone"], [(b"old", {"g": 1}), (b"x" * BIG, {"g": 1}), (b"", {})])
    monkeypatch.setattr(_fs_transactions, "commit_journal", _journal_then_crash)
    with pytest.raises(_CrashError), store.transaction("crashes"):
        store.set("a", (b"new", {"g": 2}))
        store.set("b", (b"y" * BIG, {"g": 2}))
        store.set("c", (b"new", {"g": 2}))
        store.delete("gone")
    monkeypatch.undo()


def test_a_committed_journal_is_rolled_forward(
    tmp_path: Path, store: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _crash_mid_commit(store, monkeypatch)
    root = Path(store.path)
    assert (root / JOURNAL_NAME).exists()
    # Nothing is applied yet, but the journal is the commit point: readers see it all.
    assert store.to_bytes("a") == b"new" and store.exists("c") and not store.exists("gone")
    assert not Path(store.path, "keys", "c").exists()
    with FileSystemStore(root) as again:
        assert [again.get_metadata(key)["g"] for key in "abc"] == [2, 2, 2]
        assert again.to_bytes("b") == b"y" * BIG and not again.exists("gone")
    assert not (root / JOURNAL_NAME).exists()
    assert [n for n in os.listdir(root / "keys") if n.startswith(".")] == []
    assert len(os.listdir(root / "data")) == 1


def test_a_partly_applied_journal_is_finished(
    tmp_path: Path, store: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _crash_mid_commit(store, monkeypatch)
    keys = Path(store.path, "keys")
    journal = Journal.decode(Path(store.path, JOURNAL_NAME).read_bytes())
    staged, record = journal.puts[0]
    os.replace(keys / staged, keys / record)  # the crash came after the first rename
    with FileSystemStore(store.path) as again:
        assert [again.get_metadata(key)["g"] for key in "abc"] == [2, 2, 2]


def test_the_next_writer_finishes_a_crashed_transaction_first(
    store: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _crash_mid_commit(store, monkeypatch)
    store.set("a", (b"newest", {"g": 3}))
    assert store.to_bytes("c") == b"new"
    with FileSystemStore(store.path) as again:
        assert again.to_bytes("a") == b"newest"
        assert again.get_metadata("b") == {"g": 2}


def test_an_incomplete_journal_is_discarded(store: FileSystemStore) -> None:
    store.set("a", (b"old", {}))
    root = Path(store.path)
    complete = Journal(puts=[(STAGE_PREFIX + "x-0", encode_key("a"))]).encode()
    (root / "keys" / (STAGE_PREFIX + "x-0")).write_bytes(b"half a record")
    (root / JOURNAL_NAME).write_bytes(complete[:-20])
    with FileSystemStore(root) as again:
        assert again.to_bytes("a") == b"old"
    assert not (root / JOURNAL_NAME).exists()
    assert os.listdir(root / "keys") == [encode_key("a")]


def test_orphans_are_collected_on_connect(store: FileSystemStore) -> None:
    store.set("kept", (b"k" * BIG, {}))
    root = Path(store.path)
    [kept] = os.listdir(root / "data")
    orphans = [
        root / "data" / f"{encode_key('kept')}.stale-version",
        root / "data" / f"{encode_key('never-linked')}.v1",
        root / "data" / ".tmp-left-by-a-crash",
        root / "keys" / (STAGE_PREFIX + "dead-0"),
        root / "keys" / ".leftover-temp",
    ]
    young = root / "data" / f"{encode_key('in-progress')}.v2"
    for path in [*orphans, young]:
        path.write_bytes(b"junk")
    old = time.time() - 2 * store.orphan_grace
    for path in orphans:
        os.utime(path, (old, old))
    store.disconnect()
    store.connect()
    assert sorted(os.listdir(root / "data")) == sorted([kept, young.name])
    assert os.listdir(root / "keys") == [encode_key("kept")]
    assert store.to_bytes("kept") == b"k" * BIG
    assert store.collect_garbage(grace=0) == 1
    assert os.listdir(root / "data") == [kept]


def test_a_failed_write_leaves_no_data_file(store: FileSystemStore) -> None:
    store.set("k", (b"v", {}), if_exists=False)
    with pytest.raises(ConflictError):
        store.set("k", (b"x" * BIG, {}), if_exists=False)
    with pytest.raises(ConflictError), store.transaction():
        store.set("t", (b"x" * BIG, {}))
        store.set("k", (b"x" * BIG, {}), if_exists=False)
    assert os.listdir(Path(store.path, "data")) == []
    assert not store.exists("t")


def test_transactions_see_their_own_writes(store: FileSystemStore) -> None:
    store.multiset(["a", "b"], [(b"1", {"n": 1}), (b"2", {"n": 2})])
    with store.transaction():
        store.delete("a")
        store.set("c", (b"x" * BIG, {"n": 3}))
        store.update_metadata("b", {"m": True})
        assert sorted(store.query_keys()) == ["b", "c"]
        assert dict(store.query(n=3)) == {"c": {"n": 3}}
        assert store.get_metadata("b") == {"n": 2, "m": True}
        assert not store.exists("a") and store.exists("c")
        assert store.to_bytes("c") == b"x" * BIG
    assert sorted(store.query_keys()) == ["b", "c"]


# -- several processes ---------------------------------------------------------------------
def _payload(writer: int, n: int) -> bytes:
    return f"{writer}:{n}:".encode() * (1 + (n * 7919) % (3 * BIG // 10))


def _write_and_read(path: str, writer: int, rounds: int) -> int:
    checked = 0
    with FileSystemStore(path, durable=False) as store:
        for n in range(rounds):
            data = _payload(writer, n)
            digest = hashlib.sha256(data).hexdigest()
            if n % 5 == 0:
                with store.transaction():
                    for key in ("tx/a", "tx/b"):
                        store.set(key, (data, {"sha": digest, "w": writer, "n": n}))
            else:
                store.set(f"w{writer}/{n % 3}", (data, {"sha": digest}))
            checked += _check_all(store)
    return checked


def _check_all(store: FileSystemStore) -> int:
    checked = 0
    for key in store.query_keys():
        try:
            value = store.get(key)
        except KeyError:
            continue
        with value.data as stream:
            data = stream.read()
        assert hashlib.sha256(data).hexdigest() == value.metadata["sha"], key
        checked += 1
    with store.transaction("consistent read"):  # holds the lock: no commit in between
        pair = [store.get_metadata(key) for key in ("tx/a", "tx/b") if store.exists(key)]
    assert len(pair) != 1
    return checked


def test_create_only_race_between_processes(tmp_path: Path) -> None:
    winners, stored = create_only_race(f"file://{tmp_path / 'race'}?create=true")
    assert sum(winners) == 1
    assert stored == winners.index(True)


def test_compare_and_swap_counter_between_processes(tmp_path: Path) -> None:
    assert cas_counter(f"file://{tmp_path / 'counter'}?create=true&durable=false") == 400


def test_processes_write_and_read_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared")
    init_shared_store(path)
    with CONTEXT.Pool(3) as pool:
        checked = pool.starmap(_write_and_read, [(path, writer, 40) for writer in range(3)])
    assert all(count > 0 for count in checked)
    with FileSystemStore(path) as store:
        assert _check_all(store) == 3 * 3 + 2
        first, second = (store.get_metadata(key) for key in ("tx/a", "tx/b"))
        assert first == second


def test_a_rolled_back_savepoint_keeps_shared_data_files(store: FileSystemStore) -> None:
    store.set("k", (b"x" * BIG, {"v": 1}))
    with store.transaction("outer"):
        with pytest.raises(RuntimeError), store.transaction("inner"):
            store.set_metadata("k", {"v": 2})  # the new record shares the data file
            store.set("other", (b"y" * BIG, {}))
            raise RuntimeError
        store.set("after", (b"z", {}))
    assert store.to_bytes("k") == b"x" * BIG and store.get_metadata("k") == {"v": 1}
    assert not store.exists("other")
    assert len(os.listdir(Path(store.path, "data"))) == 1
