"""Hostile probes of RedisStore, written from its documentation only (README "## Redis",
the docstrings, the store API contract and issue 18). Every test uses its own random
prefix on the shared server and deletes its keys afterwards."""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
import uuid

import pytest

import redis_service

redis = pytest.importorskip("redis")

from storekeeper import open_store  # noqa: E402
from storekeeper.errors import (  # noqa: E402
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidURLError,
    KeyNotFoundError,
    NotConnectedError,
    StorekeeperError,
)
from storekeeper.events import EventManager  # noqa: E402
from storekeeper.store.events import (  # noqa: E402
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
)
from storekeeper.store.query import Exists, In, Prefix, Range, matches  # noqa: E402

SERVER = redis_service.SERVER
FORK = multiprocessing.get_context("fork")


def _raw() -> redis.Redis:
    return redis.Redis.from_url(SERVER)


@pytest.fixture(autouse=True, scope="module")
def _server() -> None:
    """Skip without a Redis server, but fail under CI=true, which must run these."""
    redis_service.raw_client()


def _url(prefix: str, **options: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    return f"{SERVER}?prefix={prefix}{extra}"


@pytest.fixture
def base():
    """A random prefix stem; every server key containing it is deleted afterwards."""
    stem = "hostile-" + uuid.uuid4().hex[:12]
    yield stem
    raw = _raw()
    keys = list(raw.scan_iter(match=f"*{stem}*", count=1000))
    if keys:
        raw.delete(*keys)
    raw.close()


@pytest.fixture
def store(base):
    with open_store(_url(base)) as s:
        yield s


# -- worker functions for processes ---------------------------------------------------


def _proc_if_version(url, key, version, barrier, results):
    with open_store(url) as s:
        barrier.wait()
        try:
            s.set(key, (f"{os.getpid()}".encode(), {"w": os.getpid()}), if_version=version)
            results.put("won")
        except ConflictError:
            results.put("lost")
        except Exception as exc:  # pragma: no cover - reported
            results.put(repr(exc))


def _incr(s, key, n):
    done = 0
    while done < n:
        try:
            with s.transaction():
                value = int(s.to_bytes(key))
                s.set(key, (str(value + 1).encode(), {"n": value + 1}))
            done += 1
        except ConflictError:
            pass


def _proc_incr(url, key, n, barrier):
    with open_store(url) as s:
        barrier.wait()
        _incr(s, key, n)


def _transfer(s, keys, n, seed):
    rng = random.Random(seed)
    done = 0
    while done < n:
        a, b = rng.sample(keys, 2)
        amount = rng.randint(1, 5)
        try:
            with s.transaction():
                va = s.get_metadata(a)["bal"]
                vb = s.get_metadata(b)["bal"]
                s.set_metadata(a, {"bal": va - amount})
                s.set_metadata(b, {"bal": vb + amount})
            done += 1
        except ConflictError:
            pass


def _proc_transfer(url, keys, n, seed, barrier):
    with open_store(url) as s:
        barrier.wait()
        _transfer(s, keys, n, seed)


def _proc_writer(url, key, count, barrier):
    with open_store(url) as s:
        barrier.wait()
        for i in range(count):
            s.set(key, (str(i).encode(), {"i": i}))


# -- atomicity and conditional writes -------------------------------------------------


def test_per_key_atomicity_data_metadata_version(store):
    stop = threading.Event()
    errors = []

    def writer(tag):
        i = 0
        while not stop.is_set():
            i += 1
            payload = f"{tag}-{i}"
            store.set("k", (payload.encode() * 50, {"p": payload}))

    def reader():
        while not stop.is_set():
            v = store.get("k")
            data = v.data.read()
            meta = v.metadata
            if data != meta["p"].encode() * 50:
                errors.append((data[:20], meta))
            if store.get("k").version is None:
                errors.append("no version")

    store.set("k", (b"x-0" * 50, {"p": "x-0"}))
    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def test_set_returns_version_used_by_next_conditional_write(store):
    v1 = store.set("k", (b"1", {}))
    assert v1 == store.get("k").version
    v2 = store.set("k", (b"2", {}), if_version=v1)
    assert v2 != v1
    with pytest.raises(ConflictError):
        store.set("k", (b"3", {}), if_version=v1)
    with pytest.raises(ConflictError):
        store.delete("k", if_version=v1)
    assert store.to_bytes("k") == b"2"
    with pytest.raises(ConflictError):
        store.set("k", (b"4", {}), if_exists=False)
    with pytest.raises((ConflictError, KeyNotFoundError)):
        store.set("missing", (b"4", {}), if_exists=True)
    assert not store.exists("missing")


def test_if_exists_false_one_winner_of_8_threads(store):
    for round_ in range(5):
        barrier = threading.Barrier(8)
        outcomes = []

        def run(i, round_=round_, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                store.set(f"c{round_}", (str(i).encode(), {"i": i}), if_exists=False)
                outcomes.append(i)
            except ConflictError:
                pass

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(outcomes) == 1
        (winner,) = outcomes
        v = store.get(f"c{round_}")
        assert v.data.read() == str(winner).encode() and v.metadata == {"i": winner}


def test_if_version_one_winner_of_8_threads(store):
    version = store.set("k", (b"0", {}))
    barrier = threading.Barrier(8)
    wins = []

    def run(i):
        barrier.wait()
        try:
            store.set("k", (str(i).encode(), {"i": i}), if_version=version)
            wins.append(i)
        except ConflictError:
            pass

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_metadata("k") == {"i": wins[0]}


def test_if_version_one_winner_of_4_processes(base, store):
    version = store.set("k", (b"0", {}))
    barrier = FORK.Barrier(4)
    results = FORK.Queue()
    procs = [
        FORK.Process(target=_proc_if_version, args=(_url(base), "k", version, barrier, results))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    assert got == ["lost", "lost", "lost", "won"]


# -- optimistic transactions ----------------------------------------------------------


def test_transaction_increments_exact_from_threads(store):
    store.set("n", (b"0", {}))
    threads = [threading.Thread(target=_incr, args=(store, "n", 20)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.to_bytes("n") == b"80"
    assert store.get_metadata("n") == {"n": 80}


def test_transaction_increments_exact_from_processes(base, store):
    store.set("n", (b"0", {}))
    barrier = FORK.Barrier(4)
    procs = [FORK.Process(target=_proc_incr, args=(_url(base), "n", 15, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert store.to_bytes("n") == b"60"


def test_transfers_keep_total_across_processes(base, store):
    keys = [f"acct/{i}" for i in range(4)]
    for k in keys:
        store.set(k, (b"", {"bal": 100}))
    barrier = FORK.Barrier(4)
    procs = [
        FORK.Process(target=_proc_transfer, args=(_url(base), keys, 15, seed, barrier))
        for seed in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(store.get_metadata(k)["bal"] for k in keys) == 400


def test_transaction_all_or_nothing_on_exception(store):
    store.set("a", (b"a0", {"v": 0}))
    with pytest.raises(RuntimeError), store.transaction():
        store.set("a", (b"a1", {"v": 1}))
        store.set("b", (b"b1", {"v": 1}))
        store.delete("a")
        raise RuntimeError("boom")
    assert store.to_bytes("a") == b"a0"
    assert not store.exists("b")
    assert store.query_keys(v=1) == []


def test_conflicted_transaction_applies_nothing(base, store):
    store.set("a", (b"a0", {"v": 0}))
    store.set("b", (b"b0", {"v": 0}))
    with open_store(_url(base)) as other:
        with pytest.raises(ConflictError), store.transaction():
            store.get("a")
            store.set("b", (b"b1", {"v": 1}))
            store.set("c", (b"c1", {"v": 1}))
            other.set("a", (b"a-other", {"v": 9}))
        assert other.to_bytes("b") == b"b0"
        assert not other.exists("c")
        assert sorted(other.query_keys(v=Range(0, 100))) == ["a", "b"]
        assert other.query_keys(v=1) == []


def test_transaction_sees_own_writes_and_others_do_not(base, store):
    with open_store(_url(base)) as other:
        with store.transaction():
            store.set("x", (b"1", {"t": "x"}))
            assert store.to_bytes("x") == b"1"
            assert store.query_keys(t="x") == ["x"]
            assert list(store.list_keys()) == ["x"]
            assert not other.exists("x")
            assert other.query_keys(t="x") == []
        assert other.to_bytes("x") == b"1"


# -- large values ---------------------------------------------------------------------


def test_no_torn_reads_of_chunked_values(base):
    with open_store(_url(base, inline_limit=1024, chunk_size=4096)) as s:
        size = 64 * 1024
        s.set("big", (b"A" * size, {"c": "A"}))
        stop = threading.Event()
        bad = []

        def writer():
            letters = b"BCDEFGH"
            i = 0
            while not stop.is_set():
                c = letters[i % len(letters) : i % len(letters) + 1]
                s.set("big", (c * size, {"c": c.decode()}))
                i += 1

        def reader():
            while not stop.is_set():
                v = s.get("big")
                meta = v.metadata
                f = v.data
                parts = []
                while chunk := f.read(1000):
                    parts.append(chunk)
                    time.sleep(0.0005)
                data = b"".join(parts)
                if len(data) != size or data != meta["c"].encode() * size:
                    bad.append((len(data), set(data), meta))

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader) for _ in range(2)
        ]
        for t in threads:
            t.start()
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        assert bad == []
        r = s.get_data_range("big", 100, 200).read()
        assert len(r) == 100 and len(set(r)) == 1


_STREAM_SCRIPT = r"""
import resource, sys
from storekeeper import open_store
url = sys.argv[1]
MiB = 1 << 20
def gen():
    for i in range(50):
        yield bytes([i]) * MiB
with open_store(url) as s:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s.set("huge", (gen(), {"size": 50}))
    n = 0
    with s.get_data("huge") as f:
        i = 0
        while chunk := f.read(MiB):
            assert chunk == bytes([i]) * MiB, i
            i += 1
            n += len(chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(n, (peak - base) // 1024)
"""


def test_50_mib_value_streamed_in_bounded_memory(base):
    out = subprocess.run(
        [sys.executable, "-c", _STREAM_SCRIPT, _url(base)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    n, growth_mib = map(int, out.stdout.split())
    assert n == 50 << 20
    assert growth_mib < 40, f"RSS grew by {growth_mib} MiB for a 50 MiB value"


# -- prefix isolation and hostile keys ------------------------------------------------


HOSTILE_KEYS = [
    "a:b",
    "{x}",
    "}{",
    "*",
    "?",
    "[",
    "[a-z]",
    "a\\b",
    "k:{prefix}:idx",
    " ",
    "\u00e9\U0001f600",
    "x" * 5000,
    "a/b/c",
]


@pytest.mark.parametrize("second", [":b", "b", ":", "*"])
def test_prefix_isolation(base, second):
    with open_store(_url(base)) as a, open_store(_url(base + second)) as b:
        for k in HOSTILE_KEYS:
            a.set(k, (b"A", {"owner": "a", "k": k}))
        for k in HOSTILE_KEYS:
            assert not b.exists(k)
        assert b.query_keys() == []
        assert list(b.list_keys()) == []
        assert b.glob("*") == []
        assert b.query_keys(owner="a") == []
        for k in HOSTILE_KEYS:
            b.set(k, (b"B", {"owner": "b", "k": k}))
        for k in HOSTILE_KEYS:
            assert a.to_bytes(k) == b"A"
            assert a.get_metadata(k) == {"owner": "a", "k": k}
        assert sorted(a.query_keys()) == sorted(HOSTILE_KEYS)
        assert sorted(a.query_keys(owner="a")) == sorted(HOSTILE_KEYS)
        assert a.query_keys(owner="b") == []
        for k in HOSTILE_KEYS:
            b.delete(k)
        assert sorted(a.query_keys()) == sorted(HOSTILE_KEYS)


def test_prefix_with_braces_refused(base):
    with pytest.raises((InvalidURLError, InvalidArgumentError, ValueError)):
        open_store(_url(base + "{x}")).connect()


@pytest.mark.parametrize("key", ["", "a\x00b", "\ud800", "x\udfffy"])
def test_invalid_keys_refused(store, key):
    with pytest.raises(InvalidKeyError):
        store.set(key, (b"", {}))
    with pytest.raises((InvalidKeyError, KeyNotFoundError)):
        store.get(key)


@pytest.mark.parametrize("key", [1, None, b"k"])
def test_non_str_keys_refused(store, key):
    with pytest.raises((InvalidKeyError, InvalidArgumentError)):
        store.set(key, (b"", {}))


def test_hostile_keys_round_trip_and_list(store):
    for k in HOSTILE_KEYS:
        store.set(k, (k.encode("utf-8", "surrogatepass"), {"k": k}))
    for k in HOSTILE_KEYS:
        assert store.get_metadata(k) == {"k": k}
    assert list(store.list_keys()) == sorted(HOSTILE_KEYS)
    assert sorted(store.glob("*")) == sorted(HOSTILE_KEYS)
    assert store.glob("[[]") == ["["]
    assert store.glob("[*]") == ["*"]
    assert store.glob("[?]") == ["?"]
    assert sorted(store.glob("a*")) == ["a/b/c", "a:b", "a\\b"]
    assert store.glob("{x}") == ["{x}"]
    assert list(store.list_keys("[")) == ["[", "[a-z]"]
    assert list(store.list_keys("a", "/")) == ["a/", "a:b", "a\\b"]
    assert list(store.list_keys("a", ":")) == ["a/b/c", "a:", "a\\b"]


def test_list_keys_code_point_order_and_delimiters(store):
    keys = ["a", "a/", "a/b", "a/b/c", "a0", "a\x7f", "a\u00ff", "a\U0001f600", "a\uffff", "b"]
    for k in keys:
        store.set(k, (b"", {}))
    assert list(store.list_keys()) == sorted(keys)
    assert list(store.list_keys("a/", "/")) == ["a/", "a/b", "a/b/"]
    assert list(store.list_keys("", "/")) == sorted(
        {k if "/" not in k else k[: k.index("/") + 1] for k in keys}
    )
    assert list(store.list_keys("a\U0001f601")) == []
    assert list(store.list_keys("a", "\u00ff")) == sorted(
        ["a", "a/", "a/b", "a/b/c", "a0", "a\x7f", "a\u00ff", "a\U0001f600", "a\uffff"]
    )
    with pytest.raises(InvalidArgumentError):
        list(store.list_keys(1))
    with pytest.raises(InvalidArgumentError):
        list(store.list_keys("", ""))
    with pytest.raises(InvalidKeyError):
        list(store.list_keys("\ud800"))


def test_many_keys_listing_pages(store):
    keys = [f"p/{i:05d}" for i in range(2500)]
    store.multiset(keys, [(b"", {"i": i}) for i in range(2500)])
    assert list(store.list_keys("p/")) == keys
    assert len(store.glob("p/01*")) == 1000
    assert (
        store.query_keys(i=Range(2490, None)) == keys[2490:]
        or sorted(store.query_keys(i=Range(2490, None))) == keys[2490:]
    )


# -- queries vs the Python model ------------------------------------------------------

QUERY_VALUES = [
    True,
    False,
    1,
    0,
    1.0,
    0.0,
    -0.0,
    2,
    2**64 + 1,
    float(2**64),
    2**64,
    -(2**70),
    1.5,
    1e300,
    "1",
    "1.0",
    "true",
    "",
    "a",
    "ab",
    "a\x00b",
    "\U0001f600",
    None,
    [1, 2],
    [1.0, 2],
    [True, 2],
    {"a": 1},
    {"a": 1.0, "b": [1]},
    [],
    {},
]

TERMS = [
    *list(QUERY_VALUES),
    In([1, "a"]),
    In([True]),
    In([2**64]),
    In([None, []]),
    Range(0, 2),
    Range(1, 1, include_high=True),
    Range(2**64, 2**64 + 1),
    Range(2**64, 2**64 + 1, include_low=False, include_high=True),
    Range(-1e301, None),
    Range(None, 0.0, include_high=True),
    Range("a", "b"),
    Range("", "a", include_high=True),
    Range("1", None),
    Exists(),
    Exists(False),
    Prefix("a"),
    Prefix(""),
    Prefix("1"),
    Prefix("a\x00"),
]


def _model(records, name, term):
    return sorted(k for k, md in records.items() if matches(md, {name: _compile(term)}))


def _compile(term):
    from storekeeper.store.query import compile_terms

    return compile_terms({"x": term})["x"]


def test_queries_match_python_model(store):
    records = {}
    for i, v in enumerate(QUERY_VALUES):
        records[f"k{i:02d}"] = {"x": v, "i": i}
    records["nox"] = {"i": -1}
    store.multiset(list(records), [(b"", md) for md in records.values()])
    failures = []
    for term in TERMS:
        got = sorted(store.query_keys({"x": term}))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    assert failures == []


def test_queries_after_updates_and_deletes_no_stale_hits(store):
    records = {}
    rng = random.Random(7)
    keys = [f"q{i}" for i in range(40)]
    for _step in range(200):
        k = rng.choice(keys)
        op = rng.random()
        if op < 0.2 and k in records:
            store.delete(k)
            del records[k]
        elif op < 0.5 and k in records:
            patch = {"x": rng.choice(QUERY_VALUES[:20])}
            store.update_metadata(k, patch)
            records[k] = {**records[k], **patch}
        elif op < 0.7:
            md = {"y": rng.randint(0, 3)}
            store.set_metadata(k, md)
            records[k] = md
        else:
            md = {"x": rng.choice(QUERY_VALUES[:20]), "y": rng.randint(0, 3)}
            store.set(k, (b"d", md))
            records[k] = md
    failures = []
    for term in [*TERMS[:30], Exists(), Exists(False), Range(0, 2)]:
        got = sorted(store.query_keys({"x": term}))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    for y in range(4):
        got = sorted(store.query_keys(y=y, x=Exists(False)))
        want = sorted(k for k, md in records.items() if md.get("y") == y and "x" not in md)
        if got != want:
            failures.append(("y", y, got, want))
    assert failures == []
    assert sorted(store.query_keys()) == sorted(records)


def test_query_select_and_bad_terms(store):
    store.set("k", (b"", {"select": 1, "two words": "v", "x": 2}))
    assert store.query_keys({"select": 1}) == ["k"]
    assert store.query(["x"], {"two words": "v"}) == [("k", {"x": 2})]
    with pytest.raises(StorekeeperError):
        store.query_keys(x={1, 2})
    with pytest.raises(StorekeeperError):
        store.query_keys(x=float("nan"))
    with pytest.raises(StorekeeperError):
        store.query("x")


# -- events ---------------------------------------------------------------------------


class _Collector:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event):
        with self.lock:
            self.events.append(event)

    def wait(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.events) >= n:
                    return list(self.events)
            time.sleep(0.02)
        with self.lock:
            return list(self.events)


def _open_with_manager(url, **options):
    from storekeeper.backends.redis import RedisStore

    prefix = url.split("prefix=")[1].split("&")[0]
    manager = EventManager()
    col = _Collector()
    manager.connect(StoreModificationEvent, col)
    s = RedisStore(SERVER, prefix=prefix, event_manager=manager, **options)
    s.connect()
    return s, col


def test_events_remote_flag_exactly_once_in_order(base):
    writer, wcol = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.3)
        for i in range(30):
            writer.set(f"k{i % 3}", (b"", {"i": i}))
        writer.update_metadata("k0", {"u": 1})
        writer.delete("k1")
        events = rcol.wait(32)
        time.sleep(0.5)
        events = rcol.wait(32)
        assert len(events) == 32
        assert all(e.remote is True for e in events)
        own = wcol.wait(32)
        assert len(own) == 32 and all(e.remote is False for e in own)
        for key in ("k0", "k1", "k2"):
            seq = [e.metadata.get("i") for e in events if e.key == key and e.action == "set"]
            assert seq == sorted(seq)
        assert events[-2].action == "update" and events[-2].metadata == {"i": 27, "u": 1}
        assert isinstance(events[-1], StoreDeleteEvent) and events[-1].key == "k1"
        assert all(getattr(e, "version", None) for e in events if e.action != "delete")
    finally:
        writer.disconnect()
        reader.disconnect()


def test_events_from_processes_exactly_once(base):
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.3)
        barrier = FORK.Barrier(3)
        procs = [
            FORK.Process(target=_proc_writer, args=(_url(base), f"p{j}", 20, barrier))
            for j in range(3)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        events = rcol.wait(60)
        time.sleep(0.5)
        events = rcol.wait(60)
        assert len(events) == 60
        for j in range(3):
            seq = [e.metadata["i"] for e in events if e.key == f"p{j}"]
            assert seq == list(range(20))
        assert all(e.remote for e in events)
    finally:
        reader.disconnect()


def test_no_events_for_rolled_back_or_conflicted_transactions(base):
    writer, wcol = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        writer.set("a", (b"", {"v": 0}))
        rcol.wait(1)
        with pytest.raises(RuntimeError), writer.transaction():
            writer.set("rb", (b"", {}))
            raise RuntimeError
        with pytest.raises(ConflictError), writer.transaction():
            writer.get("a")
            writer.set("cf", (b"", {}))
            reader.set("a", (b"", {"v": 1}))
        writer.set("end", (b"", {}))
        time.sleep(0.5)
        keys = [e.key for e in rcol.wait(10, timeout=1.0)]
        assert "rb" not in keys and "cf" not in keys
        assert keys == ["a", "a", "end"]
        wkeys = [e.key for e in wcol.wait(10, timeout=0.5)]
        assert "rb" not in wkeys and "cf" not in wkeys
    finally:
        writer.disconnect()
        reader.disconnect()


def test_listener_killed_resumes_missing_nothing(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    raw = _raw()
    try:
        time.sleep(0.3)
        writer.set("k", (b"", {"i": -1}))
        assert len(rcol.wait(1)) == 1
        name = reader.client_name.replace("storekeeper:", "storekeeper-events:")
        mine = [c for c in raw.client_list() if c.get("name") == name]
        assert mine, f"no listener connection named {name!r}"
        for i in range(10):
            writer.set("k", (b"", {"i": i}))
        for c in mine:
            raw.client_kill_filter(_id=c["id"])
        for i in range(10, 20):
            writer.set("k", (b"", {"i": i}))
        events = rcol.wait(21, timeout=15)
        time.sleep(0.5)
        events = rcol.wait(21, timeout=0.1)
        assert [e.metadata["i"] for e in events] == list(range(-1, 20))
    finally:
        raw.close()
        writer.disconnect()
        reader.disconnect()


def test_event_cursor_resume(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.3)
        writer.set("k", (b"", {"i": 0}))
        rcol.wait(1)
        cursor = reader.event_cursor
        assert cursor
        reader.disconnect()
        for i in range(1, 6):
            writer.set("k", (b"", {"i": i}))
        from storekeeper.backends.redis import RedisStore

        manager = EventManager()
        col = _Collector()
        manager.connect(StoreSetEvent, col)
        again = RedisStore(SERVER, prefix=base, event_manager=manager, event_cursor=cursor)
        with again:
            events = col.wait(5)
            assert [e.metadata["i"] for e in events] == [1, 2, 3, 4, 5]
    finally:
        writer.disconnect()


# -- info, arguments, URLs, connection ------------------------------------------------


def test_info_reports_persistence(store):
    info = store.info()
    raw = _raw()
    try:
        cfg = raw.config_get("save")
        cfg.update(raw.config_get("appendonly"))
        cfg.update(raw.config_get("appendfsync"))
    finally:
        raw.close()
    assert info["type"] and info["readonly"] is False
    persistence = info["persistence"]
    for name in ("save", "appendonly", "appendfsync"):
        assert str(persistence[name]) == cfg[name]
    assert isinstance(info["durability"], str) and info["durability"]
    if cfg["save"] == "" and cfg["appendonly"] == "no":
        assert "restart" in info["durability"].lower() or "memory" in info["durability"].lower()
    assert "password" not in str(info.get("url", "")).lower()


def test_wrong_password_error_hides_password(base):
    with pytest.raises(StorekeeperError) as info:
        open_store(f"redis://user:s3cret@127.0.0.1:6379/0?prefix={base}")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?prefix=x&bogus=1",
        "redis://127.0.0.1:6379/0?prefix=x&inline_limit=abc",
        "redis://127.0.0.1:6379/0?prefix=x&chunk_size=-1",
        "redis://127.0.0.1:6379/0?prefix=x&chunk_size=0",
        "redis://127.0.0.1:6379/0?prefix=x&events=maybe",
        "redis://127.0.0.1:6379/0?prefix=x&timeout=-5",
        "redis://127.0.0.1:6379/notadb?prefix=x",
        "redis://127.0.0.1:notaport/0?prefix=x",
        "redis://127.0.0.1:6379/0?prefix=",
    ],
)
def test_bad_urls_refused_clearly(url):
    t0 = time.monotonic()
    with pytest.raises(InvalidURLError):
        s = open_store(url)
        s.connect()
        s.disconnect()
    assert time.monotonic() - t0 < 5


def test_wrong_port_fails_fast_and_clearly(base):
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError), open_store(f"redis://127.0.0.1:1/0?prefix={base}"):
        pass
    assert time.monotonic() - t0 < 5


def test_unroutable_host_respects_timeout(base):
    # (on this machine something answers there with HTTP: a clear storekeeper error)
    t0 = time.monotonic()
    with pytest.raises(StorekeeperError):
        with open_store(f"redis://10.255.255.1:6379/0?prefix={base}&timeout=1"):
            pass
    assert time.monotonic() - t0 < 8


def test_use_after_disconnect_and_reconnect(base):
    from storekeeper.backends.redis import RedisStore

    s = RedisStore(SERVER, prefix=base)
    with pytest.raises(NotConnectedError):
        s.get("k")
    s.connect()
    s.set("k", (b"v", {}))
    s.disconnect()
    for call in (
        lambda: s.get("k"),
        lambda: s.set("k", (b"v", {})),
        s.query_keys,
        lambda: list(s.list_keys()),
        lambda: s.delete("k"),
        lambda: s.exists("k"),
    ):
        with pytest.raises(NotConnectedError):
            call()
    s.connect()
    assert s.to_bytes("k") == b"v"
    s.disconnect()
    s.disconnect()


def test_wrong_argument_types(store):
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {1: 2}))
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {"a": float("nan")}))
    with pytest.raises(StorekeeperError):
        store.set("k", ("text", {}))
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {"a": b"bytes"}))
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {}), if_version=5)
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {}), if_exists="yes")
    with pytest.raises(StorekeeperError):
        store.glob(5)
    with pytest.raises(StorekeeperError):
        store.get_metadata("k", select="abc")
    assert not store.exists("k")
    with pytest.raises(KeyNotFoundError):
        store.get("k")
    with pytest.raises(KeyNotFoundError):
        store.delete("k")
    with pytest.raises(KeyNotFoundError):
        store.update_metadata("k", {"a": 1})


def test_failing_source_keeps_old_value(base):
    with open_store(_url(base, inline_limit=1024, chunk_size=1024)) as s:
        s.set("k", (b"old" * 1000, {"v": "old"}))

        def gen():
            yield b"x" * 5000
            raise OSError("source broke")

        with pytest.raises(OSError):
            s.set("k", (gen(), {"v": "new"}))
        assert s.to_bytes("k") == b"old" * 1000
        assert s.get_metadata("k") == {"v": "old"}
        assert s.query_keys(v="new") == []


def test_update_metadata_concurrent_no_lost_updates(store):
    store.set("k", (b"", {}))

    def run(i):
        for j in range(10):
            store.update_metadata("k", {f"t{i}-{j}": j})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get_metadata("k")) == 40


# -- second round: index collisions, doubles, grace, leaks, fork ------------------------


def test_metadata_names_and_values_do_not_collide_in_indexes(store):
    store.set("one", (b"", {"a": "b:c"}))
    store.set("two", (b"", {"a:b": "c"}))
    store.set("three", (b"", {"a:b:c": True}))
    store.set("four", (b"", {"a\x00b": "c", "*": "?", "{x}": "[", "": "empty"}))
    assert store.query_keys({"a": "b:c"}) == ["one"]
    assert store.query_keys({"a:b": "c"}) == ["two"]
    assert store.query_keys({"a": Prefix("b")}) == ["one"]
    assert store.query_keys({"a:b": Prefix("")}) == ["two"]
    assert store.query_keys({"a": Exists()}) == ["one"]
    assert store.query_keys({"a:b": Exists()}) == ["two"]
    assert store.query_keys({"a\x00b": "c"}) == ["four"]
    assert store.query_keys({"a": "b\x00c"}) == []
    assert store.query_keys({"*": "?"}) == ["four"]
    assert store.query_keys({"{x}": "["}) == ["four"]
    assert store.query_keys({"": "empty"}) == ["four"]
    assert store.query_keys({"": Exists()}) == ["four"]
    assert store.query_keys({"a:b:c": 1}) == ["three"]


def test_big_integers_beyond_double_precision_in_ranges_and_in(store):
    base_ = 2**53
    for off in range(-2, 3):
        store.set(f"n{off}", (b"", {"x": base_ + off}))
    store.set("f", (b"", {"x": float(base_)}))
    records = {f"n{off}": {"x": base_ + off} for off in range(-2, 3)}
    records["f"] = {"x": float(base_)}
    terms = [
        Range(base_ + 1, base_ + 2),
        Range(base_, base_ + 1),
        Range(base_, base_ + 1, include_low=False, include_high=True),
        Range(base_ - 1, None, include_low=False),
        Range(None, base_ - 1, include_high=True),
        Range(float(base_), None, include_low=False),
        In([base_ + 1]),
        base_ + 1,
        float(base_),
        Range(0.5, float(base_ + 2)),
    ]
    failures = []
    for term in terms:
        got = sorted(store.query_keys(x=term))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    assert failures == []


def test_dict_and_list_equality_like_python(store):
    values = [
        {"a": 1, "b": 2},
        {"b": 2, "a": 1},
        {"a": True},
        {"a": 1.0},
        [[1], [2.0]],
        [{"a": 1}],
        "\uffff",
        "\U00010000",
        "\ud7ff",
    ]
    records = {f"k{i}": {"x": v} for i, v in enumerate(values)}
    store.multiset(list(records), [(b"", md) for md in records.values()])
    terms = [
        {"a": 1, "b": 2},
        {"a": 1},
        [[1.0], [2]],
        [{"a": True}],
        Range("\uffff", None),
        Range("\ud7ff", "\U00010000"),
        Prefix("\U00010000"),
        In([{"b": 2, "a": 1.0}]),
    ]
    failures = []
    for term in terms:
        got = sorted(store.query_keys(x=term))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    assert failures == []


def test_old_chunked_value_readable_after_overwrite_and_delete(base):
    with open_store(_url(base, inline_limit=1024, chunk_size=1024)) as s:
        old = bytes(range(256)) * 64
        s.set("k", (old, {"v": 1}))
        f = s.get_data("k")
        head = f.read(3000)
        s.set("k", (b"new" * 5000, {"v": 2}))
        s.set("k", (b"tiny", {"v": 3}))
        s.delete("k")
        rest = f.read()
        f.close()
        assert head + rest == old
        assert not s.exists("k")


def test_data_ranges_across_chunk_boundaries(base):
    with open_store(_url(base, inline_limit=100, chunk_size=100)) as s:
        data = bytes(i % 251 for i in range(1050))
        s.set("k", (data, {}))
        for start, end in [(0, 100), (99, 101), (100, 200), (950, None), (None, 5), (1049, 2000)]:
            got = s.get_data_range("k", start, end).read()
            assert got == data[start:end], (start, end)
        assert s.get("k").size == 1050
        assert s.get("k").range(250, 750).read() == data[250:750]


def test_deleted_values_leave_no_server_keys_behind(base):
    raw = _raw()
    try:
        with open_store(_url(base, inline_limit=100, chunk_size=100, grace=1)) as s:
            s.set("seed", (b"", {}))
            s.delete("seed")
            time.sleep(1.5)
            baseline = set(raw.scan_iter(match=f"*{base}*", count=1000))
            for i in range(5):
                s.set(f"k{i}", (os.urandom(1000), {"i": i, "name": f"n{i}"}))
                s.set(f"k{i}", (os.urandom(1500), {"i": i + 1}))
            with pytest.raises(RuntimeError), s.transaction():
                s.set("rb", (os.urandom(1000), {"rb": 1}))
                raise RuntimeError
            for i in range(5):
                s.delete(f"k{i}")
            time.sleep(1.5)
            after = set(raw.scan_iter(match=f"*{base}*", count=1000))
            leaked = sorted(after - baseline)
            # the change stream grows, nothing else should
            assert len(leaked) <= 0, leaked
    finally:
        raw.close()


def test_conflict_when_read_missing_key_is_created(base, store):
    with open_store(_url(base)) as other:
        with pytest.raises(ConflictError), store.transaction():
            assert not store.exists("x")
            store.set("y", (b"", {}))
            other.set("x", (b"", {}))
        assert not other.exists("y")


def test_conflict_when_read_key_is_deleted(base, store):
    store.set("x", (b"", {"v": 1}))
    with open_store(_url(base)) as other:
        with pytest.raises(ConflictError), store.transaction():
            store.get_metadata("x")
            store.set("y", (b"", {}))
            other.delete("x")
        assert not other.exists("y")


def test_multiset_with_bad_item_applies_nothing(store):
    with pytest.raises(StorekeeperError):
        store.multiset(["a", "b", "c"], [(b"1", {}), (b"2", {"x": float("nan")}), (b"3", {})])
    assert store.query_keys() == []
    with pytest.raises(StorekeeperError):
        store.multiset(["a", "\ud800"], [(b"1", {}), (b"2", {})])
    assert store.query_keys() == []


def test_transaction_wait_false_refuses_while_other_thread_holds(store):
    from storekeeper.errors import LockTimeoutError

    entered = threading.Event()
    release = threading.Event()

    def holder():
        with store.transaction():
            store.set("h", (b"", {}))
            entered.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(5)
    try:
        with pytest.raises(LockTimeoutError), store.transaction(wait=False):
            pass
    finally:
        release.set()
        t.join()
    assert store.exists("h")


def _child_uses_inherited_store(s, key):
    s.set(key, (b"child", {"from": "child"}))


def test_forked_child_uses_inherited_store_and_parent_sees_remote_event(base):
    s, col = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        p = FORK.Process(target=_child_uses_inherited_store, args=(s, "forked"))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert s.to_bytes("forked") == b"child"
        events = col.wait(1)
        time.sleep(0.3)
        events = col.wait(2, timeout=0.1)
        assert [(e.key, e.remote) for e in events] == [("forked", True)]
    finally:
        s.disconnect()


def test_events_false_delivers_no_remote_events(base):
    from storekeeper.backends.redis import RedisStore

    writer, _ = _open_with_manager(_url(base))
    manager = EventManager()
    col = _Collector()
    manager.connect(StoreModificationEvent, col)
    quiet = RedisStore(SERVER, prefix=base, events=False, event_manager=manager)
    try:
        quiet.connect()
        writer.set("k", (b"", {}))
        time.sleep(0.5)
        assert col.wait(1, timeout=0.1) == []
        assert quiet.event_cursor is None
    finally:
        quiet.disconnect()
        writer.disconnect()


def test_very_long_key(store):
    key = "k" * 200_000
    store.set(key, (b"v", {"m": 1}))
    assert store.to_bytes(key) == b"v"
    assert store.query_keys(m=1) == [key]
    assert list(store.list_keys("k" * 199_999)) == [key]
    store.delete(key)
    assert store.query_keys() == []


def test_transaction_net_changes_reach_remote_listeners(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        writer.set("b", (b"", {"i": 0}))
        assert len(rcol.wait(1)) == 1
        with writer.transaction():
            writer.set("a", (b"", {"i": 1}))
            writer.set("b", (b"", {"i": 2}))
            writer.set("a", (b"", {"i": 3}))
            writer.delete("b")
        rcol.wait(3)
        time.sleep(0.3)
        events = rcol.wait(10, timeout=0.1)[1:]
        assert [e.metadata["i"] for e in events if e.key == "a"][-1] == 3
        assert [e.action for e in events if e.key == "b"][-1] == "delete"
        assert all(e.remote for e in events)
    finally:
        writer.disconnect()
        reader.disconnect()


def test_transaction_remote_events_same_as_local(base):
    writer, wcol = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        with writer.transaction():
            writer.set("a", (b"", {"i": 1}))
            writer.set("b", (b"", {"i": 2}))
            writer.set("a", (b"", {"i": 3}))
            writer.delete("b")
        local = [(e.action, e.key, e.metadata) for e in wcol.wait(4)]
        rcol.wait(4, timeout=1.5)
        time.sleep(0.3)
        remote = [(e.action, e.key, e.metadata) for e in rcol.wait(10, timeout=0.1)]
        assert remote == local
    finally:
        writer.disconnect()
        reader.disconnect()


def test_transaction_remote_events_follow_savepoints_and_updates(base):
    writer, wcol = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        with writer.transaction():
            writer.set("a", (b"", {"i": 1}))
            with pytest.raises(RuntimeError), writer.transaction():
                writer.set("b", (b"", {"i": 2}))
                raise RuntimeError("roll the savepoint back")
            writer.update_metadata("a", {"j": 2})
        local = [(e.action, e.key, e.metadata) for e in wcol.wait(2)]
        assert [(action, key) for action, key, _ in local] == [("set", "a"), ("update", "a")]
        rcol.wait(2, timeout=1.5)
        time.sleep(0.3)
        remote = [(e.action, e.key, e.metadata) for e in rcol.wait(10, timeout=0.1)]
        assert remote == local
    finally:
        writer.disconnect()
        reader.disconnect()


# -- third round: pagination under churn, glob model, trimming, txn views -----------------


def test_listing_under_churn_lists_stable_keys_exactly_once(base, store):
    stable = [f"s/{i:04d}" for i in range(1200)]
    store.multiset(stable, [(b"", {}) for _ in stable])
    stop = threading.Event()

    def churn():
        rng = random.Random(3)
        with open_store(_url(base)) as other:
            while not stop.is_set():
                k = f"s/{rng.randrange(1200):04d}x"
                other.set(k, (b"", {}))
                other.delete(k)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(3):
            listed = [k for k in store.list_keys("s/") if not k.endswith("x")]
            assert listed == stable
            globbed = sorted(k for k in store.glob("s/*") if not k.endswith("x"))
            assert globbed == stable
    finally:
        stop.set()
        t.join()


GLOB_KEYS = ["a", "b", "]", "[", "!", "a]", "[a", "ab", "a*b", "a?b", "a\\b", "-", "a-b", "é"]
GLOB_PATTERNS = [
    "[]a]",
    "[!a]",
    "[!]]*",
    "a[*?]b",
    "a\\*",
    "[[]*",
    "*]",
    "[a-]",
    "a[",
    "[",
    "?",
    "??",
    "*",
    "[!]",
    "[a-b]*",
    "[é]",
    "a[\\]b",
]


def test_glob_matches_fnmatch_model(store):
    import fnmatch

    store.multiset(GLOB_KEYS, [(b"", {}) for _ in GLOB_KEYS])
    failures = []
    for pattern in GLOB_PATTERNS:
        got = sorted(store.glob(pattern))
        want = sorted(k for k in GLOB_KEYS if fnmatch.fnmatchcase(k, pattern))
        if got != want:
            failures.append((pattern, got, want))
    assert failures == []


def test_list_keys_prefix_at_top_code_point(store):
    keys = ["a\U0010ffff", "a\U0010ffffb", "a\U0010ffff\U0010ffff", "b", "a\uffff"]
    store.multiset(keys, [(b"", {}) for _ in keys])
    assert list(store.list_keys("a\U0010ffff")) == sorted(
        k for k in keys if k.startswith("a\U0010ffff")
    )
    assert store.glob("a\U0010ffff*") == sorted(k for k in keys if k.startswith("a\U0010ffff"))


def test_stream_trimming_reports_gap(base, caplog):
    from storekeeper.backends.redis import RedisStore

    writer, _ = _open_with_manager(_url(base), stream_length=10)
    try:
        writer.set("k", (b"", {"i": 0}))
        manager = EventManager()
        col = _Collector()
        manager.connect(StoreSetEvent, col)
        first = RedisStore(SERVER, prefix=base, event_manager=manager)
        with first:
            writer.set("k", (b"", {"i": 1}))
            col.wait(1)
            cursor = first.event_cursor
        for i in range(2, 1000):
            writer.set("k", (b"", {"i": i}))
        again = RedisStore(SERVER, prefix=base, event_manager=manager, event_cursor=cursor)
        with again:
            deadline = time.monotonic() + 5
            while again.event_gaps == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert again.event_gaps >= 1
    finally:
        writer.disconnect()


def test_query_results_never_stale_under_concurrent_flips(base, store):
    keys = [f"f{i}" for i in range(20)]
    store.multiset(keys, [(b"", {"x": 1}) for _ in keys])
    stop = threading.Event()

    def flipper():
        rng = random.Random(5)
        with open_store(_url(base)) as other:
            while not stop.is_set():
                other.update_metadata(rng.choice(keys), {"x": rng.choice([1, 2, "1"])})

    t = threading.Thread(target=flipper)
    t.start()
    bad = []
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for key, md in store.query(None, x=1):
                if md["x"] != 1:
                    bad.append((key, md))
            for key, md in store.query(None, x=Range(1.5, 3)):
                if md["x"] != 2:
                    bad.append((key, md))
    finally:
        stop.set()
        t.join()
    assert bad == []


def test_transaction_view_of_deletes_and_metadata_changes(store):
    store.set("a", (b"", {"x": 1}))
    store.set("b", (b"", {"x": 1}))
    with store.transaction():
        store.delete("a")
        store.set_metadata("b", {"x": 2})
        assert not store.exists("a")
        assert store.query_keys(x=1) == []
        assert store.query_keys(x=2) == ["b"]
        assert list(store.list_keys()) == ["b"]
        assert store.glob("*") == ["b"]
        with pytest.raises(KeyNotFoundError):
            store.get("a")
    assert store.query_keys(x=1) == []
    assert sorted(store.query_keys()) == ["b"]


def test_versions_change_on_every_kind_of_write(store):
    v1 = store.set("k", (b"d", {"a": 1}))
    store.set_metadata("k", {"a": 2}, if_version=v1)
    v2 = store.get("k").version
    assert v2 != v1
    store.update_metadata("k", {"b": 1}, if_version=v2)
    v3 = store.get("k").version
    assert v3 not in (v1, v2)
    with pytest.raises(ConflictError):
        store.update_metadata("k", {"c": 1}, if_version=v2)
    store.set_data("k", b"e", if_version=v3)
    v4 = store.get("k").version
    assert v4 not in (v1, v2, v3)
    assert store.get_metadata("k") == {"a": 2, "b": 1}
    store.delete("k", if_version=v4)
    v5 = store.set("k", (b"d", {"a": 1}))
    assert v5 not in (v1, v2, v3, v4)


def _proc_update(url, key, tag, barrier):
    with open_store(url) as s:
        barrier.wait()
        for j in range(10):
            s.update_metadata(key, {f"{tag}-{j}": j})


def test_update_metadata_no_lost_updates_across_processes(base, store):
    store.set("k", (b"", {}))
    barrier = FORK.Barrier(4)
    procs = [
        FORK.Process(target=_proc_update, args=(_url(base), "k", t, barrier)) for t in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(store.get_metadata("k")) == 40


# -- fourth round: killed connections, huge integers ------------------------------------


def _kill_named(raw, name):
    ids = [c["id"] for c in raw.client_list() if c.get("name") == name]
    for cid in ids:
        raw.client_kill_filter(_id=cid)
    return len(ids)


def test_listener_killed_repeatedly_during_writes_misses_nothing(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    raw = _raw()
    try:
        time.sleep(0.2)
        name = reader.client_name.replace("storekeeper:", "storekeeper-events:")
        stop = threading.Event()
        count = [0]

        def write():
            while not stop.is_set() and count[0] < 400:
                writer.set("k", (b"", {"i": count[0]}))
                count[0] += 1

        t = threading.Thread(target=write)
        t.start()
        killed = 0
        for _ in range(3):
            time.sleep(0.15)
            killed += _kill_named(raw, name)
        stop.set()
        t.join()
        assert killed >= 1
        n = count[0]
        rcol.wait(n, timeout=10)
        time.sleep(0.3)
        got = [e.metadata["i"] for e in rcol.wait(n, timeout=0.1)]
        assert got == list(range(n))
    finally:
        raw.close()
        writer.disconnect()
        reader.disconnect()


def test_main_connection_killed_inside_transaction_all_or_nothing(base):
    from storekeeper.backends.redis import RedisStore

    s = RedisStore(SERVER, prefix=base, events=False)
    raw = _raw()
    try:
        s.connect()
        s.set("a", (b"a0", {"v": 0}))
        outcome = None
        try:
            with s.transaction():
                s.get("a")
                s.set("a", (b"a1", {"v": 1}))
                s.set("b", (b"b1", {"v": 1}))
                _kill_named(raw, s.client_name)
            outcome = "committed"
        except StorekeeperError as exc:
            outcome = type(exc).__name__
        state = (s.to_bytes("a"), s.exists("b"), sorted(s.query_keys(v=1)))
        if outcome == "committed":
            assert state == (b"a1", True, ["a", "b"])
        else:
            assert state == (b"a0", False, [])
        s.set("c", (b"", {}))
        assert s.exists("c")
    finally:
        raw.close()
        s.disconnect()


def test_main_connection_killed_between_calls_recovers(base):
    from storekeeper.backends.redis import RedisStore

    s = RedisStore(SERVER, prefix=base, events=False)
    raw = _raw()
    try:
        s.connect()
        s.set("a", (b"1", {}))
        assert _kill_named(raw, s.client_name) >= 1
        try:
            value = s.to_bytes("a")
        except StorekeeperError:
            value = s.to_bytes("a")
        assert value == b"1"
    finally:
        raw.close()
        s.disconnect()


def test_huge_integers_exact_in_queries(store):
    values = [2**1000, 2**1000 + 1, -(2**1000), 2**1024, 1e308, float(2**1000), 10**400]
    records = {f"k{i}": {"x": v} for i, v in enumerate(values)}
    store.multiset(list(records), [(b"", md) for md in records.values()])
    for k, md in records.items():
        assert store.get_metadata(k) == md
        assert type(store.get_metadata(k)["x"]) is type(md["x"])
    terms = [
        2**1000,
        float(2**1000),
        2**1000 + 1,
        Range(2**1000, None),
        Range(1e308, None),
        Range(None, -1e308),
        Range(2**1000 + 1, 10**400, include_high=True),
        In([10**400, -(2**1000)]),
    ]
    failures = []
    for term in terms:
        got = sorted(store.query_keys(x=term))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    assert failures == []


@pytest.mark.parametrize("exponent", [1000, 1010, 1023])
def test_range_with_high_bound_matches_integers_near_double_max(store, exponent):
    store.set("k", (b"", {"x": 2**exponent}))
    assert store.query_keys(x=Range(None, 2 ** (exponent + 1))) == ["k"]
    assert store.query_keys(x=Range(2**exponent, 2**exponent + 1)) == ["k"]
    assert store.query_keys(x=Range(None, 2**exponent, include_high=True)) == ["k"]


@pytest.mark.parametrize("exponent", [1000, 1020])
def test_range_with_low_bound_matches_negative_integers_near_double_max(store, exponent):
    store.set("k", (b"", {"x": -(2**exponent)}))
    assert store.query_keys(x=Range(-(2 ** (exponent + 1)), 0)) == ["k"]
    assert store.query_keys(x=Range(-1e308, None)) == ["k"]


def _num(rng, exponents):
    e = rng.choice(exponents)
    v = (2**e + rng.choice([-1, 0, 1])) * rng.choice([1, -1])
    return float(v) if rng.random() < 0.3 else v


def test_numeric_ranges_fuzz_below_2_pow_1000_match_model(store):
    rng = random.Random(11)
    exps = [0, 1, 10, 52, 53, 54, 63, 64, 65, 300, 900, 999]
    records = {f"k{i}": {"x": _num(rng, exps)} for i in range(80)}
    store.multiset(list(records), [(b"", m) for m in records.values()])
    failures = []
    for _ in range(200):
        a, b = sorted([_num(rng, exps), _num(rng, exps)])
        term = rng.choice(
            [
                Range(a, b),
                Range(a, None),
                Range(None, b),
                Range(a, b, include_low=False, include_high=True),
                a,
                In([a, b]),
            ]
        )
        got = sorted(store.query_keys(x=term))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    assert failures == []


def test_database_out_of_range_clear_error(base):
    t0 = time.monotonic()
    with pytest.raises(StorekeeperError), open_store(f"redis://127.0.0.1:6379/999?prefix={base}"):
        pass
    assert time.monotonic() - t0 < 5


def test_string_terms_fuzz_match_model(store):
    rng = random.Random(13)
    alphabet = [
        "",
        "a",
        "b",
        "\x00",
        "\x7f",
        "\x80",
        "\u00e9",
        "e\u0301",
        "\uffff",
        "\U00010000",
        ":",
        "*",
        "1",
    ]

    def word():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))

    records = {f"k{i}": {"x": word()} for i in range(80)}
    records["num"] = {"x": 1}
    store.multiset(list(records), [(b"", m) for m in records.values()])
    failures = []
    for _ in range(200):
        a, b = sorted([word(), word()])
        term = rng.choice(
            [
                Range(a, b),
                Range(a, None),
                Range(None, b, include_high=True),
                Range(a, b, include_low=False),
                Prefix(a),
                a,
                In([a, b]),
            ]
        )
        got = sorted(store.query_keys(x=term))
        want = _model(records, "x", term)
        if got != want:
            failures.append((term, got, want))
    assert failures == []


def test_remote_delete_event_carries_previous_metadata(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        writer.set("k", (b"", {"before": 1}))
        writer.delete("k")
        events = rcol.wait(2)
        assert [(e.action, e.metadata) for e in events] == [
            ("set", {"before": 1}),
            ("delete", {"before": 1}),
        ]
    finally:
        writer.disconnect()
        reader.disconnect()


def test_conflicted_chunked_transaction_applies_and_leaks_nothing(base):
    raw = _raw()
    try:
        with (
            open_store(_url(base, inline_limit=100, chunk_size=100, grace=1)) as s,
            open_store(_url(base)) as other,
        ):
            s.set("a", (b"", {}))
            time.sleep(1.2)
            baseline = set(raw.scan_iter(match=f"*{base}*", count=1000))
            with pytest.raises(ConflictError), s.transaction():
                s.get("a")
                s.set("big", (iter([b"x" * 700, b"y" * 700]), {"big": 1}))
                other.set("a", (b"", {"changed": 1}))
            assert not other.exists("big")
            assert other.query_keys(big=1) == []
            other.set("a", (b"", {}))
            time.sleep(1.5)
            leaked = set(raw.scan_iter(match=f"*{base}*", count=1000)) - baseline
            assert leaked == set()
    finally:
        raw.close()


@pytest.mark.parametrize("op", ["set_metadata", "set_data", "delete", "update_metadata"])
def test_conditional_variants_one_winner_of_8_threads(store, op):
    version = store.set("k", (b"0", {"m": 0}))
    barrier = threading.Barrier(8)
    wins = []

    def run(i):
        barrier.wait()
        try:
            if op == "set_metadata":
                store.set_metadata("k", {"m": i}, if_version=version)
            elif op == "set_data":
                store.set_data("k", str(i).encode(), if_version=version)
            elif op == "delete":
                store.delete("k", if_version=version)
            else:
                store.update_metadata("k", {"u": i}, if_version=version)
            wins.append(i)
        except (ConflictError, KeyNotFoundError):
            pass

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_multiget_values_consistent_under_overwrite(base):
    with open_store(_url(base, inline_limit=512, chunk_size=512)) as s:
        s.multiset(["a", "b"], [(b"A" * 4000, {"c": "A"}), (b"A" * 100, {"c": "A"})])
        stop = threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                c = "BCDEF"[i % 5]
                s.multiset(
                    ["a", "b"], [(c.encode() * 4000, {"c": c}), (c.encode() * 100, {"c": c})]
                )
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        bad = []
        try:
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                for v in s.multiget(["a", "b"]):
                    data = v.data.read()
                    if set(data) != {ord(v.metadata["c"])}:
                        bad.append((set(data), v.metadata))
        finally:
            stop.set()
            t.join()
        assert bad == []


@pytest.mark.parametrize("read", ["query", "list"])
def test_no_write_skew_through_queries_or_listings(base, read):
    for round_ in range(4):
        stores = [open_store(_url(base, events="false")) for _ in range(2)]
        barrier = threading.Barrier(2)

        def run(i, s, round_=round_, barrier=barrier):
            try:
                with s.transaction():
                    if read == "query":
                        seen = s.query_keys(slot=round_)
                    else:
                        seen = list(s.list_keys(f"L{round_}/"))
                    barrier.wait()
                    if not seen:
                        s.set(f"L{round_}/{i}", (b"", {"slot": round_}))
            except ConflictError:
                pass

        threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert len(stores[0].query_keys(slot=round_)) == 1
        finally:
            for s in stores:
                s.disconnect()


def test_large_metadata_event_crosses_processes(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        big = {"blob": "z" * 2_000_000, "n": list(range(1000))}
        writer.set("k", (b"", big))
        events = rcol.wait(1)
        assert len(events) == 1 and events[0].metadata == big
        assert reader.query_keys(blob=Prefix("zzz")) == ["k"]
    finally:
        writer.disconnect()
        reader.disconnect()


LEX_KEYS = [
    "-",
    "+",
    "(",
    "[",
    "-a",
    "+a",
    "(a",
    "[a",
    "a",
    "\x01",
    "\x7f",
    "\xff",
    "a::b",
    "a::c::d",
]


def test_lex_syntax_characters_in_keys_prefixes_and_globs(store):
    store.multiset(LEX_KEYS, [(b"", {"k": k}) for k in LEX_KEYS])
    assert list(store.list_keys()) == sorted(LEX_KEYS)
    for prefix in ["-", "+", "(", "[", "\x01", "\xff", "a::"]:
        want = sorted(k for k in LEX_KEYS if k.startswith(prefix))
        assert list(store.list_keys(prefix)) == want, prefix
        assert sorted(store.glob(prefix.replace("[", "[[]") + "*")) == want, prefix
    assert list(store.list_keys("a", "::")) == ["a", "a::"]
    assert list(store.list_keys("", "a")) == sorted(
        {k[: k.index("a") + 1] if "a" in k else k for k in LEX_KEYS}
    )
    assert store.query_keys(k=Prefix("-")) == ["-", "-a"] or sorted(
        store.query_keys(k=Prefix("-"))
    ) == ["-", "-a"]
    assert sorted(store.query_keys(k=Range("(", "["))) == sorted(
        k for k in LEX_KEYS if "(" <= k < "["
    )


def test_tls_url_against_plain_server_fails_fast(base):
    t0 = time.monotonic()
    with (
        pytest.raises(StorekeeperError),
        open_store(f"rediss://127.0.0.1:6379/0?prefix={base}&timeout=2"),
    ):
        pass
    assert time.monotonic() - t0 < 6


def _proc_same_key_writer(url, tag, barrier):
    with open_store(url) as s:
        barrier.wait()
        for i in range(25):
            s.set("shared", (b"", {"w": tag, "i": i}))


def test_same_key_commit_order_identical_for_all_readers(base):
    r1, c1 = _open_with_manager(_url(base))
    r2, c2 = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        barrier = FORK.Barrier(2)
        procs = [
            FORK.Process(target=_proc_same_key_writer, args=(_url(base), t, barrier)) for t in "xy"
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        e1 = [(e.metadata["w"], e.metadata["i"]) for e in c1.wait(50)]
        e2 = [(e.metadata["w"], e.metadata["i"]) for e in c2.wait(50)]
        assert len(e1) == 50 and e1 == e2
        for tag in "xy":
            assert [i for w, i in e1 if w == tag] == list(range(25))
        final = r1.get_metadata("shared")
        assert e1[-1] == (final["w"], final["i"])
    finally:
        r1.disconnect()
        r2.disconnect()


def test_resume_from_cursor_of_empty_stream_reports_no_gap(base):
    from storekeeper.backends.redis import RedisStore

    manager = EventManager()
    col = _Collector()
    manager.connect(StoreSetEvent, col)
    first = RedisStore(SERVER, prefix=base, event_manager=manager)
    with first:
        time.sleep(0.2)
        cursor = first.event_cursor
    with open_store(_url(base)) as writer:
        for i in range(3):
            writer.set("k", (b"", {"i": i}))
    again = RedisStore(SERVER, prefix=base, event_manager=manager, event_cursor=cursor)
    with again:
        events = col.wait(3)
        assert [e.metadata["i"] for e in events] == [0, 1, 2]
        time.sleep(0.2)
        assert again.event_gaps == 0


@pytest.mark.parametrize("cursor", ["garbage", ""])
def test_malformed_event_cursor_refused(base, cursor):
    from storekeeper.backends.redis import RedisStore

    with pytest.raises((InvalidArgumentError, ValueError)):
        s = RedisStore(SERVER, prefix=base, event_cursor=cursor)
        try:
            s.connect()
        finally:
            s.disconnect()


def test_asyncio_tasks_sharing_a_store_never_deadlock(store):
    import asyncio

    from storekeeper.errors import TransactionError

    store.set("n", (b"0", {}))

    async def task():
        with store.transaction():
            v = int(store.to_bytes("n"))
            await asyncio.sleep(0.01)
            store.set("n", (str(v + 1).encode(), {}))

    async def main():
        return await asyncio.gather(task(), task(), return_exceptions=True)

    out = {}
    t = threading.Thread(target=lambda: out.update(r=asyncio.run(main())), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "two asyncio tasks deadlocked on one store's transactions"
    failures = [r for r in out["r"] if r is not None]
    assert all(isinstance(r, TransactionError) for r in failures)
    assert store.to_bytes("n") == str(2 - len(failures)).encode()


def test_remote_event_version_is_the_written_version(base):
    writer, _ = _open_with_manager(_url(base))
    reader, rcol = _open_with_manager(_url(base))
    try:
        time.sleep(0.2)
        versions = [writer.set("k", (b"", {"i": i})) for i in range(3)]
        events = rcol.wait(3)
        assert [e.version for e in events] == versions
        assert reader.get("k").version == versions[-1]
    finally:
        writer.disconnect()
        reader.disconnect()


def test_self_copy_of_chunked_value(base):
    with open_store(_url(base, inline_limit=100, chunk_size=100)) as s:
        data = os.urandom(1000)
        s.set("a", (data, {"m": 1}))
        s.set("a", s.get("a"))
        assert s.to_bytes("a") == data and s.get_metadata("a") == {"m": 1}
        s.set_data("a", s.get_data("a"))
        assert s.to_bytes("a") == data
        with s.transaction():
            s.set("c", s.get("a"))
            s.set("a", (b"x", {}))
        assert s.to_bytes("c") == data and s.to_bytes("a") == b"x"
        s.from_bytes("a", data)
        s.set("a", (s.get_data_range("a", 50, 950), {}))
        assert s.to_bytes("a") == data[50:950]
