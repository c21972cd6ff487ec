"""Hostile probes: a black-box tester's attempts to break storekeeper's documented promises.

Written from README.md, CHANGELOG.md and the docstrings only (no implementation read).
Tests that FAIL here are real breaks of a quoted promise; each says what happens instead.
The passing ones are the strongest attacks that the library withstood, kept as regression
guards.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storekeeper import (
    CachedStore,
    DictMemoryStore,
    FileSystemStore,
    In,
    JoinedStore,
    MountedStore,
    Prefix,
    Range,
    SimpleAuthStore,
    SqliteStore,
    init_shared_store,
    open_store,
)
from storekeeper.composite import make_encoder
from storekeeper.errors import (
    ConflictError,
    CorruptFileError,
    InvalidArgumentError,
    InvalidMetadataError,
    InvalidURLError,
    StorekeeperError,
)
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, StoreModificationEvent

FAST = make_encoder(b"pepper", n=2)  # scrypt at the lowest cost: tests only
KINDS = [
    "memory",
    "file",
    "sqlite",
    "sqlite-mem",
    "sqlite-small",
    "joined",
    "mounted",
    "cached",
    "cached-immutable",
    "auth-memory",
    "auth-file",
    "auth-sqlite",
]


def _leaf(kind: str, tmp: Path, name: str = "s", **options: Any) -> AbstractStore:
    if kind == "memory":
        return DictMemoryStore(**options)
    if kind == "file":
        init_shared_store(tmp / name)
        return FileSystemStore(tmp / name, inline_limit=16, durable=False, **options)
    if kind == "sqlite":
        return SqliteStore(tmp / f"{name}.db", durable=False, **options)
    if kind == "sqlite-mem":
        return SqliteStore(**options)
    assert kind == "sqlite-small"
    return SqliteStore(tmp / f"{name}.db", inline_limit=16, durable=False, **options)


def make(kind: str, tmp: Path, **options: Any) -> AbstractStore:
    """A connected store of *kind* (see KINDS)."""
    store: AbstractStore
    if kind in ("memory", "file", "sqlite", "sqlite-mem", "sqlite-small"):
        store = _leaf(kind, tmp, **options)
    elif kind == "joined":
        store = JoinedStore([_leaf("sqlite-small", tmp, "top"), _leaf("memory", tmp)], **options)
    elif kind == "mounted":
        store = MountedStore("", _leaf("sqlite-small", tmp, "mnt"), _leaf("memory", tmp), **options)
    elif kind.startswith("cached"):
        policy = "immutable" if kind.endswith("immutable") else "always"
        store = CachedStore(
            _leaf("sqlite-small", tmp, "src"), _leaf("memory", tmp), policy=policy, **options
        )
    else:
        assert kind.startswith("auth-")
        inner = _leaf(kind[5:], tmp, "inner")
        inner.connect()
        SimpleAuthStore(inner, FAST).add_user("alice", "pw")
        auth = SimpleAuthStore(inner, FAST, **options)
        auth.connect({"username": "alice", "password": "pw"})
        return auth
    store.connect()
    return store


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AbstractStore:
    return make(request.param, tmp_path)


# =====================================================================================
# FAILING PROBES (real breaks)
# =====================================================================================


# -- open_store URLs -------------------------------------------------------------------
# README: "An unknown option (`?durabel=false`), a bad value (`?durable=nope`) or a part
# that names nothing ... raises `InvalidURLError` naming the valid forms."
# open_store docstring: "Raises InvalidURLError for a malformed URL or an unknown or
# invalid option (naming the valid ones)".
@pytest.mark.parametrize(
    "query",
    [
        "chunk_size=0",  # observed: raw ValueError "chunk_size must be positive ..."
        "table=a%00b",  # observed: raw ValueError "invalid table name 'a\x00b'"
    ],
)
def test_open_store_invalid_sqlite_option_value_is_invalid_url_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidURLError):
        open_store(f"sqlite:///x.db?{query}")


# README table: `sqlite:///relative/app.db` is relative, `sqlite:////absolute/app.db` is
# absolute; `sqlite:x.db` is refused with InvalidURLError ("write sqlite:///x.db ...").
# But `sqlite:/x.db` (a path that reads as the absolute /x.db, and a form SQLAlchemy
# refuses) is silently accepted and opens ./x.db in the working directory.
# (Lower confidence: the README only lists the forms it accepts.)
def test_open_store_sqlite_single_slash_is_refused_not_read_as_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        store = open_store("sqlite:/x.db")
    except InvalidURLError:
        return
    store.disconnect()
    assert not (tmp_path / "x.db").exists(), "sqlite:/x.db opened ./x.db (a relative path)"


# -- strict input ----------------------------------------------------------------------
# encode_metadata / set_metadata: metadata must be a dict ("Raises InvalidMetadataError
# unless *metadata* is a dict (or other mapping)"); store._validate: "bad input fails with
# a specific error and leaves stored data untouched". Every backend and the other
# composites raise InvalidMetadataError for set_metadata(key, None); SimpleAuthStore
# accepts it and wipes the key's metadata to {}.
@pytest.mark.parametrize("kind", ["auth-memory", "auth-sqlite"])
def test_auth_set_metadata_none_is_refused_like_every_other_store(
    tmp_path: Path, kind: str
) -> None:
    store = make(kind, tmp_path)
    store.set("a", (b"A", {"m": 1}))
    with pytest.raises(InvalidMetadataError):
        store.set_metadata("a", None)  # type: ignore[arg-type]
    assert store.get_metadata("a") == {"m": 1}  # observed: {} (metadata wiped)


# CHANGELOG (issue 14): "`select` given as a str was split into characters
# (`query("abc")`); it is now an `InvalidArgumentError`". The same mistake with the *keys*
# of the batch methods is still silently split: multiset("xy", ...) writes keys "x" and
# "y", multiget("ab") reads keys "a" and "b". Observed on every store.
@pytest.mark.parametrize("kind", ["memory", "sqlite", "file", "joined", "auth-memory"])
def test_batch_keys_given_as_a_str_are_refused_not_split(tmp_path: Path, kind: str) -> None:
    store = make(kind, tmp_path)
    with pytest.raises(InvalidArgumentError):
        store.multiset("xy", [(b"1", {}), (b"2", {})])
    assert not store.exists("x")  # observed: keys "x" and "y" were written
    assert not store.exists("y")


# store._validate: "Everything a caller hands to a store passes through here before
# anything is written, so bad input fails with a specific error and leaves stored data
# untouched"; InvalidArgumentError: "an argument of the wrong type". A buffer_size of the
# wrong type (str, None, float) is silently ignored by set/from_bytes/multiset of bytes
# data and the write goes through, on every store.
@pytest.mark.parametrize("kind", ["memory", "sqlite", "file", "cached", "auth-sqlite"])
@pytest.mark.parametrize("buffer_size", ["1", None, 1.5])
def test_set_with_buffer_size_of_wrong_type_is_refused(
    tmp_path: Path, kind: str, buffer_size: Any
) -> None:
    store = make(kind, tmp_path)
    store.set("a", (b"old", {"m": 1}))
    with pytest.raises(TypeError):
        store.set("a", (b"new", {}), buffer_size)
    assert store.to_bytes("a") == b"old"  # observed: b"new"
    assert store.get_metadata("a") == {"m": 1}


# Same promise: no raw builtin error for a bad argument. buffer_size=0 is accepted by
# set/from_bytes/to_bytes on the backends, but to_file (every store) and to_bytes (the
# composites) raise a raw ValueError("buffer_size must be positive, not 0") that is not
# a StorekeeperError.
@pytest.mark.parametrize("kind", ["memory", "joined", "cached"])
def test_to_file_buffer_size_zero_gives_a_storekeeper_error(tmp_path: Path, kind: str) -> None:
    store = make(kind, tmp_path)
    store.set("a", (b"A", {}))
    with pytest.raises(StorekeeperError):
        store.to_file("a", tmp_path / "out", 0)


# -- FileSystemStore damage ------------------------------------------------------------
# query_keys docstring: "The keys :meth:`query` would return for the same terms."
# filesystem module: "listings and queries skip [a damaged record] with a logged warning".
# With one damaged record, query() (no terms) skips it but query_keys() (no terms) lists it.
def test_fs_query_keys_agrees_with_query_on_a_damaged_record(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    store = FileSystemStore(tmp_path / "fs", durable=False)
    store.connect()
    store.set("good", (b"g", {}))
    store.set("bad", (b"b", {}))
    record = tmp_path / "fs" / "keys" / "bad"
    assert record.exists()
    record.write_bytes(record.read_bytes()[:10])
    assert sorted(k for k, _ in store.query()) == ["good"]
    assert sorted(store.query_keys()) == ["good"]  # observed: ['bad', 'good']


# errors module: "Backend SDK errors ... are translated into this tree at the backend edge";
# brief/CHANGELOG intent: no raw OSError escapes a store. A directory where a record file
# should be (a damaged store) made get / set / delete raise a raw IsADirectoryError.
# (Lower confidence: the documented damage case is a record failing its checksum.)
# Adjusted after triage: the probe first required set and delete to raise too, but the
# filesystem module documents for a damaged record that "``set`` or ``delete`` of the key
# replaces or removes it". So reads raise CorruptFileError and listings skip the key;
# set and delete repair it when that loses nothing (an empty directory), and raise
# CorruptFileError, leaving the directory alone, when it holds files.
def test_fs_directory_in_place_of_a_record_gives_a_storekeeper_error(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    store = FileSystemStore(tmp_path / "fs", durable=False)
    store.connect()
    keys = tmp_path / "fs" / "keys"
    (keys / "subdir").mkdir()
    (keys / "full").mkdir()
    (keys / "full" / "precious").write_bytes(b"not ours")
    for key in ("subdir", "full"):
        with pytest.raises(CorruptFileError):
            store.get(key)
        with pytest.raises(CorruptFileError):
            store.get_metadata(key)
    assert store.query_keys() == [] and store.query() == []
    store.set("subdir", (b"1", {}))  # the empty directory is replaced by the record
    assert store.to_bytes("subdir") == b"1"
    (keys / "subdir").unlink()
    (keys / "subdir").mkdir()
    store.delete("subdir")
    assert not store.exists("subdir") and not (keys / "subdir").exists()
    for call in (lambda: store.set("full", (b"1", {})), lambda: store.delete("full")):
        with pytest.raises(CorruptFileError, match="not empty"):
            call()
    assert (keys / "full" / "precious").read_bytes() == b"not ours"


# Value docstring: "size: number of bytes in the data"; README: "keep your application's
# data safely". A large value's data file truncated on disk is read back silently short:
# get(key).size says 3,000,000 but to_bytes returns the 5 bytes left, no error.
# (Lower confidence: the documented checksum covers record files, not data files.)
def test_fs_truncated_data_file_is_not_returned_as_short_data(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    store = FileSystemStore(tmp_path / "fs", durable=False)
    store.connect()
    store.set("big", (b"z" * 3_000_000, {}))
    files = list((tmp_path / "fs" / "data").iterdir())
    assert len(files) == 1
    files[0].write_bytes(b"short")
    try:
        data = store.to_bytes("big")
    except StorekeeperError:
        return
    assert len(data) == store.get("big").size  # observed: 5 != 3000000


def _fill_disk_child(path: str, queue: Any) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = FileSystemStore(path, durable=False)
    store.connect()
    store.set("keep", (b"k" * 1000, {"m": 1}))
    try:
        store.set("keep", (b"x" * 400_000, {}))
        outcome = "no error"
    except StorekeeperError as exc:
        outcome = f"storekeeper {type(exc).__name__}"
    except OSError as exc:
        outcome = f"raw {type(exc).__name__}: {exc}"
    intact = store.to_bytes("keep") == b"k" * 1000 and store.get_metadata("keep") == {"m": 1}
    queue.put((outcome, intact))


# errors module: "Backend SDK errors ... are translated into this tree at the backend edge"
# (BackendError: "the underlying engine failed (wraps its error)"); SqliteStore documents
# "a disk that fills ... raises BackendError ... no OSError of the store's own writes
# leaks". FileSystemStore on a full disk (RLIMIT_FSIZE in a child) leaks a raw
# OSError [Errno 27] File too large (the data stays intact, which is good).
def test_fs_full_disk_raises_a_storekeeper_error(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fill_disk_child, args=(str(tmp_path / "fs"), queue))
    child.start()
    outcome, intact = queue.get(timeout=60)
    child.join(30)
    assert intact
    assert outcome.startswith("storekeeper"), outcome  # observed: raw OSError EFBIG


# =====================================================================================
# STRONG PASSING PROBES (attacks the library withstood)
# =====================================================================================

QUERY_VALUES: list[Any] = [
    0, 1, 1.0, True, False, -0.0, 2**53, 2**53 + 1, float(2**53), 2**63, 2**64, 2**64 + 1,
    float(2**64), 10**20, 1e20, 2**70, -(2**70), 1.5, "a", "a\x00b", "a\x00", "", "1", None,
    [1], [1.0], [True], {"x": 1}, {"x": 1.0}, 1e308, 10**400, "\U0010ffff", "\uffff",
    [2**64 + 1], [float(2**64)],
]  # fmt: skip


def _range_match(term: Range, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    for bound in (term.low, term.high):
        if bound is not None and isinstance(bound, str) != isinstance(value, str):
            return False
    return (term.low is None or term.low <= value) and (term.high is None or value < term.high)


# query module: "a backend answers exactly what Python's == and ordering answer on the
# decoded metadata" (big ints, floats equal to ints, bools, NUL in strings).
def test_queries_answer_what_python_answers(store: AbstractStore) -> None:
    for i, value in enumerate(QUERY_VALUES):
        store.set(f"k{i}", (b"", {"v": value}))
    stored = {f"k{i}": v for i, v in enumerate(QUERY_VALUES)}
    for probe in QUERY_VALUES:
        expected = {k for k, v in stored.items() if v == probe}
        assert set(store.query_keys(v=probe)) == expected, probe
    terms: list[tuple[Any, Callable[[Any], bool]]] = []
    for term in (Range(0, 2**70), Range(float(2**64), None), Range(2**64 + 1, None),
                 Range(float(2**53), 2**53 + 1), Range("", "\x00"), Range(0.5, 1e20)):  # fmt: skip
        terms.append((term, lambda v, t=term: _range_match(t, v)))
    terms.append((In([True, "a\x00b", 2**64 + 1]), lambda v: v in (True, "a\x00b", 2**64 + 1)))
    terms.append((Prefix("a\x00"), lambda v: isinstance(v, str) and v.startswith("a\x00")))
    for term, predicate in terms:
        expected = {k for k, v in stored.items() if predicate(v)}
        assert set(store.query_keys(v=term)) == expected, term


# Transactions: "Writes in the block are applied together when the outermost block exits
# normally"; a nested block that raises rolls back to its savepoint; "inside a
# transaction [modification events] are held back until the outermost transaction
# commits, and dropped if it rolls back"; set "Inside a transaction ... returns the
# version the value has once the transaction commits".
@pytest.mark.parametrize("kind", KINDS)
def test_savepoint_rollback_drops_inner_writes_and_their_events(tmp_path: Path, kind: str) -> None:
    events = EventManager()
    seen: list[tuple[str, str]] = []
    events.connect(StoreModificationEvent, lambda e: seen.append((type(e).__name__, e.key)))
    store = make(kind, tmp_path, event_manager=events)
    store.set("a", (b"0", {}))
    seen.clear()
    with store.transaction():
        version = store.set("a", (b"1", {}))
        with pytest.raises(ValueError), store.transaction():
            store.set("b", (b"inner", {}))
            store.set("a", (b"inner", {}))
            raise ValueError
        assert store.to_bytes("a") == b"1"
        assert not store.exists("b")
    assert store.get("a").version == version
    assert not store.exists("b")
    assert seen == [("StoreSetEvent", "a")]


# "read-modify-write from threads gives exact counts; no torn reads": 4 threads x 20
# increments of two keys in one transaction, with a reader checking inside its own
# transaction that both keys always agree.
@pytest.mark.slow
def test_threads_read_modify_write_is_exact_and_never_torn(store: AbstractStore) -> None:
    store.set("x", (b"0", {}))
    store.set("y", (b"0", {}))
    errors: list[str] = []
    stop = threading.Event()

    def increment() -> None:
        for _ in range(20):
            with store.transaction():
                n = int(store.to_bytes("x")) + 1
                store.set("x", (str(n).encode(), {}))
                store.set("y", (str(n).encode(), {"n": n}))

    def read() -> None:
        while not stop.is_set():
            with store.transaction():
                x, y = store.to_bytes("x"), store.to_bytes("y")
            if x != y:
                errors.append(f"{x!r} != {y!r}")

    writers = [threading.Thread(target=increment) for _ in range(4)]
    reader = threading.Thread(target=read)
    for t in [*writers, reader]:
        t.start()
    for t in writers:
        t.join(120)
    stop.set()
    reader.join(30)
    assert store.to_bytes("x") == b"80"
    assert errors == []


# "conditional writes: two racing writers can never both win" (threads).
def test_racing_create_only_writers_have_exactly_one_winner(store: AbstractStore) -> None:
    barrier = threading.Barrier(8)
    winners: list[int] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.set("lock", (str(i).encode(), {}), if_exists=False)
            winners.append(i)
        except ConflictError:
            pass

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(winners) == 1
    assert store.to_bytes("lock") == str(winners[0]).encode()


# "a large value read before an overwrite (or delete) keeps its data" -- also for a
# stream already half read and a data range, on every store.
def test_open_streams_keep_their_version_across_overwrite_and_delete(
    store: AbstractStore,
) -> None:
    old = b"A" * 2_500_000
    store.set("big", (old, {"v": 1}))
    stream = store.get_data("big")
    head = stream.read(1000)
    value = store.get("big")
    part = store.get_data_range("big", 100, 2_000_000)
    store.set("big", (b"B" * 2_400_000, {}))
    store.delete("big")
    assert head + stream.read() == old
    stream.close()
    assert part.read() == old[100:2_000_000]
    part.close()
    with value.data as fresh:
        assert fresh.read() == old
    assert value.metadata == {"v": 1}


def _open_shared(kind: str, tmp: Path) -> AbstractStore:
    if kind == "file":
        store: AbstractStore = FileSystemStore(tmp / "shared", inline_limit=16, durable=False)
    else:
        store = SqliteStore(tmp / "shared.db", inline_limit=16, durable=False)
    store.connect()
    return store


def _race_child(kind: str, tmp: str, i: int, start: Any, queue: Any) -> None:
    store = _open_shared(kind, Path(tmp))
    start.wait()
    try:
        store.set("lock", (str(i).encode() * 20, {}), if_exists=False)
        queue.put(i)
    except ConflictError:
        queue.put(None)


def _transaction_child(kind: str, tmp: str, ready: Any) -> None:
    store = _open_shared(kind, Path(tmp))
    n = 0
    while True:
        n += 1
        with store.transaction():
            for key in ("a", "b", "c"):
                store.set(key, (str(n).encode() * 20, {"n": n}))
            if n == 3:
                ready.set()


def _read_child(kind: str, tmp: str, connected: Any, go: Any, queue: Any) -> None:
    # Connected before the writer is frozen: FileSystemStore promises atomic reads to "a
    # reader already connected" (CHANGELOG); its connect may wait for the store lock.
    store = _open_shared(kind, Path(tmp))
    connected.set()
    go.wait(60)
    values = [store.to_bytes(k) for k in ("a", "b", "c")]
    queue.put([store.get_metadata(k)["n"] for k in ("a", "b", "c")] + values)


# "conditional writes: two racing writers can never both win" across processes, and
# "all or nothing, also across a crash": a fresh process reading while the writer is
# frozen (SIGSTOP) and after it is killed (SIGKILL) mid-transaction sees one transaction.
# (A reader that connects only while the writer is frozen waits for the store lock and,
# for FileSystemStore, times out: only already-connected readers are promised this.)
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_processes_race_and_a_killed_writer_leaves_whole_transactions(
    tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        init_shared_store(tmp_path / "shared")
    _open_shared(kind, tmp_path).disconnect()
    ctx = multiprocessing.get_context("fork")
    start, queue = ctx.Event(), ctx.Queue()
    racers = [
        ctx.Process(target=_race_child, args=(kind, str(tmp_path), i, start, queue))
        for i in range(6)
    ]
    for p in racers:
        p.start()
    start.set()
    results = [queue.get(timeout=60) for _ in racers]
    for p in racers:
        p.join(30)
    assert len([r for r in results if r is not None]) == 1

    for _ in range(3):
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            connected, go = ctx.Event(), ctx.Event()
            reader = ctx.Process(
                target=_read_child, args=(kind, str(tmp_path), connected, go, queue)
            )
            reader.start()
            assert connected.wait(60)
            ready = ctx.Event()
            writer = ctx.Process(target=_transaction_child, args=(kind, str(tmp_path), ready))
            writer.start()
            assert ready.wait(30)
            assert writer.pid is not None
            os.kill(writer.pid, sig)
            go.set()
            seen = queue.get(timeout=60)
            reader.join(30)
            ns, datas = seen[:3], seen[3:]
            assert len(set(ns)) == 1, seen
            assert datas == [str(ns[0]).encode() * 20] * 3, seen
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(30)


# filesystem module: "**Readers** take no lock and never wait"; README: FileSystemStore is
# "safe across processes". A fresh process connects and reads a consistent state while
# another process commits multi-key transactions back to back (connect is not starved).
# Note: connect() does wait for the store lock, so while a writer is *frozen* (SIGSTOP)
# inside a transaction a fresh connect blocks until lock_timeout (LockTimeoutError); only
# readers already connected are promised reads then (CHANGELOG).
@pytest.mark.slow
def test_fs_fresh_reader_can_connect_while_another_process_writes(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "shared")
    _open_shared("file", tmp_path).disconnect()
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    writer = ctx.Process(target=_transaction_child, args=("file", str(tmp_path), ready))
    writer.start()
    try:
        assert ready.wait(30)
        reader = FileSystemStore(tmp_path / "shared", durable=False, lock_timeout=5)
        reader.connect()
        assert len({reader.to_bytes(k) for k in ("a", "b", "c")}) == 1
    finally:
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(30)
