"""Hostile probes of S3Store, written from its documentation only.

Each test states a promise of the README, the docstrings or the issue. A passing test is a
promise kept; a broken one is asserted as it should be and marked ``xfail(strict=True)``
with the reason ``BUG: ...``. Every test runs against a moto server started here on a
random loopback port; a small counting proxy in front of it measures requests.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from storekeeper import open_store
from storekeeper.backends.s3 import S3Store
from storekeeper.errors import (
    AuthenticationError,
    BackendError,
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidURLError,
    InvalidValueError,
    KeyNotFoundError,
    NotConnectedError,
    StorekeeperError,
    TransactionError,
)

CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "hostile"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_moto(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, **CREDS, **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    old = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    proc, url = _start_moto()
    raw = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    raw.create_bucket(Bucket=BUCKET)
    raw.close()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def raw(endpoint: str) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    yield client
    client.close()


def _url(endpoint: str, prefix: str, **options: Any) -> str:
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    return f"s3://{BUCKET}/{prefix}?endpoint_url={endpoint}&region=us-east-1{extra}"


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def store(endpoint: str, prefix: str) -> Iterator[S3Store]:
    with open_store(_url(endpoint, prefix)) as s:
        yield s


# --------------------------------------------------------------- child processes


def _child_create(url: str, key: str, who: int, start: Any, out: Any) -> None:
    os.environ.update(CREDS)
    with open_store(url) as s:
        start.wait()
        try:
            s.set(key, (f"p{who}".encode(), {"who": who}), if_exists=False)
            out.put(("won", who))
        except ConflictError:
            out.put(("lost", who))
        except Exception as e:  # pragma: no cover - reported to the parent
            out.put(("error", repr(e)))


def _child_update(url: str, key: str, version: str, who: int, start: Any, out: Any) -> None:
    os.environ.update(CREDS)
    with open_store(url) as s:
        start.wait()
        try:
            s.set(key, (f"p{who}".encode(), {"who": who}), if_version=version)
            out.put(("won", who))
        except ConflictError:
            out.put(("lost", who))
        except Exception as e:  # pragma: no cover
            out.put(("error", repr(e)))


def _child_counter(url: str, n: int, start: Any, out: Any) -> None:
    os.environ.update(CREDS)
    done = 0
    try:
        with open_store(url) as s:
            start.wait()
            while done < n:
                value = s.get("counter")
                current = int(_data(value))
                try:
                    s.set(
                        "counter",
                        (str(current + 1).encode(), {"n": current + 1}),
                        if_version=value.version,
                    )
                    done += 1
                except ConflictError:
                    pass
        out.put(("ok", done))
    except Exception as e:  # pragma: no cover
        out.put(("error", repr(e)))


def _child_indexer(url: str, who: int, start: Any, out: Any) -> None:
    os.environ.update(CREDS)
    try:
        with open_store(url) as s:
            s.query_keys(group="g")  # this process's store has an index before others write
            start.wait()
            for i in range(12):
                s.set(f"w{who}/k{i:02d}", (b"x", {"group": "g", "who": who, "i": i}))
            s.update_metadata(f"w{who}/k00", {"group": "moved"})
            s.delete(f"w{who}/k01")
        out.put(("ok", who))
    except Exception as e:  # pragma: no cover
        out.put(("error", repr(e)))


def _child_update_metadata(url: str, who: int, start: Any, out: Any) -> None:
    os.environ.update(CREDS)
    retries = 0
    try:
        with open_store(url) as s:
            start.wait()
            for i in range(3):
                while True:
                    try:
                        s.update_metadata("doc", {f"p{who}_{i}": i})
                        break
                    except (ConflictError, TransactionError):
                        retries += 1
        out.put(("ok", retries))
    except Exception as e:  # pragma: no cover
        out.put(("error", repr(e)))


def _run_children(target: Any, args_list: list[tuple[Any, ...]]) -> list[tuple[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, out)) for a in args_list]
    for p in procs:
        p.start()
    time.sleep(0.2)
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def _data(value: Any) -> bytes:
    data, _ = value
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    with data as stream:
        return bytes(stream.read())


# --------------------------------------------------------------- conditional writes


def test_capabilities_as_documented(store: S3Store) -> None:
    caps = store.capabilities
    assert caps.conditional_writes is True
    assert caps.atomic_transactions is False
    assert caps.isolated_transactions is True
    assert caps.cross_process is True
    assert caps.ranges is True
    assert caps.persistent is True


def test_create_race_8_threads_one_winner(store: S3Store) -> None:
    barrier = threading.Barrier(8)
    results: list[str] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.set("lock", (f"t{i}".encode(), {"who": i}), if_exists=False)
            results.append(f"won{i}")
        except ConflictError:
            results.append("lost")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(results) == 8 and len(winners) == 1
    who = int(winners[0][3:])
    value = store.get("lock")
    assert _data(value) == f"t{who}".encode() and value.metadata == {"who": who}


def test_update_race_8_threads_one_winner(store: S3Store) -> None:
    version = store.set("k", (b"base", {}))
    barrier = threading.Barrier(8)
    results: list[int] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.set("k", (f"t{i}".encode(), {}), if_version=version)
            results.append(i)
        except ConflictError:
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1
    assert _data(store.get("k")) == f"t{results[0]}".encode()


def test_create_and_update_race_4_processes(endpoint: str, prefix: str, store: S3Store) -> None:
    url = _url(endpoint, prefix)
    results = _run_children(_child_create, [(url, "pk", i) for i in range(4)])
    assert not [r for r in results if r[0] == "error"], results
    assert sorted(r[0] for r in results) == ["lost", "lost", "lost", "won"]
    winner = next(r[1] for r in results if r[0] == "won")
    assert store.get("pk").metadata == {"who": winner}
    version = store.version_of("pk")
    results = _run_children(_child_update, [(url, "pk", version, i) for i in range(4)])
    assert sorted(r[0] for r in results) == ["lost", "lost", "lost", "won"], results
    winner = next(r[1] for r in results if r[0] == "won")
    assert _data(store.get("pk")) == f"p{winner}".encode()


def test_cas_counter_three_processes_exact(endpoint: str, prefix: str, store: S3Store) -> None:
    store.set("counter", (b"0", {"n": 0}))
    results = _run_children(_child_counter, [(_url(endpoint, prefix), 8) for _ in range(3)])
    assert [r[0] for r in results] == ["ok"] * 3, results
    value = store.get("counter")
    assert _data(value) == b"24" and value.metadata == {"n": 24}


def test_conditional_preconditions(store: S3Store) -> None:
    with pytest.raises(ConflictError):
        store.set("missing", (b"x", {}), if_exists=True)
    with pytest.raises(ConflictError):
        store.set("missing", (b"x", {}), if_version="nope")
    assert not store.exists("missing")
    v1 = store.set("a", (b"1", {}))
    assert store.get("a").version == v1 == store.version_of("a")
    v2 = store.set("a", (b"2", {}), if_version=v1)
    assert v2 != v1
    with pytest.raises(ConflictError):
        store.set("a", (b"3", {}), if_version=v1)
    with pytest.raises(ConflictError):
        store.set("a", (b"3", {}), if_exists=False)
    with pytest.raises(ConflictError):
        store.delete("a", if_version=v1)
    assert _data(store.get("a")) == b"2"
    # the same bytes written again is a new version (the write tag), so an ABA is caught
    v3 = store.set("a", (b"2", {}))
    assert v3 != v2
    with pytest.raises(ConflictError):
        store.set("a", (b"4", {}), if_version=v2)
    store.delete("a", if_version=v3)
    with pytest.raises(KeyNotFoundError):
        store.delete("a")


# --------------------------------------------------------------- queries and the index


def test_index_exact_after_concurrent_process_writers(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    url = _url(endpoint, prefix)
    store.set("seed", (b"s", {"group": "g", "who": -1}))
    assert store.query_keys(group="g") == ["seed"]
    results = _run_children(_child_indexer, [(url, w) for w in range(3)])
    assert [r[0] for r in results] == ["ok"] * 3, results
    expected = sorted(["seed"] + [f"w{w}/k{i:02d}" for w in range(3) for i in range(2, 12)])
    assert sorted(store.query_keys(group="g")) == expected  # the store that had an index
    assert sorted(store.query_keys(group="moved")) == [f"w{w}/k00" for w in range(3)]
    with open_store(url) as fresh:  # a new store object: from the snapshot plus listing
        assert sorted(fresh.query_keys(group="g")) == expected
        assert sorted(k for k, _ in fresh.query(["who"], who=1)) == ["w1/k00"] + [
            f"w1/k{i:02d}" for i in range(2, 12)
        ]
        # one more change seen by the other store object
        fresh.delete("w2/k05")
        fresh.set("w2/k06", (b"y", {"group": "h"}))
    expected.remove("w2/k05")
    expected.remove("w2/k06")
    assert sorted(store.query_keys(group="g")) == expected
    assert store.query_keys(group="h") == ["w2/k06"]


def test_index_sees_same_size_rewrite_by_other_store(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    store.set("k", (b"aaaa", {"v": 1}))
    assert store.query_keys(v=1) == ["k"]
    with open_store(_url(endpoint, prefix)) as other:
        other.set("k", (b"bbbb", {"v": 2}))
    assert store.query_keys(v=1) == []
    assert store.query_keys(v=2) == ["k"]


class _CountingProxy:
    """A reverse proxy that forwards to the moto server and counts requests by method."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        counts: dict[str, int] = {}
        lock = threading.Lock()
        proxy = self
        self.fail_next = 0  # answer this many next requests with 503 SlowDown

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                with lock:
                    counts[self.command] = counts.get(self.command, 0) + 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    throttle = proxy.fail_next > 0
                    proxy.fail_next -= throttle
                if throttle:
                    error = (
                        b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(error)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self.counts = counts
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fill(store: S3Store, n: int) -> None:
    for i in range(n):
        store.set(f"k{i:04d}", (b"", {"even": i % 2 == 0, "i": i}))


def _count(proxy: _CountingProxy, call: Any) -> tuple[Any, int]:
    proxy.reset()
    result = call()
    return result, proxy.total()


N_KEYS = 200


def test_query_over_many_keys_costs_few_requests(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    """Once a store object has brought the index up to date from the bucket, a new
    store object starts from the snapshot: a query costs a listing, not a request per key;
    a repeated query costs ~1 LIST, a changed key one HEAD more."""
    _fill(store, N_KEYS)
    proxy = _CountingProxy(endpoint)
    try:
        with open_store(_url(proxy.url, prefix)) as warm:
            assert warm.query_keys(i=3) == ["k0003"]  # pays; keeps a snapshot
        with open_store(_url(proxy.url, prefix)) as fresh:
            keys, first = _count(proxy, lambda: fresh.query_keys(i=7))
            assert keys == ["k0007"]
            keys, again = _count(proxy, lambda: fresh.query_keys(even=True))
            assert len(keys) == N_KEYS // 2
            store.set("k0007", (b"", {"even": False, "i": 7000}))
            keys, changed = _count(proxy, lambda: (fresh.query_keys(i=7000), fresh.query_keys(i=7)))
            assert keys == (["k0007"], [])
    finally:
        proxy.close()
    assert first < N_KEYS // 10, first
    assert again <= 3, again
    assert changed <= 6, changed


def test_fresh_store_uses_snapshot_of_writer_that_queried(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    _fill(store, N_KEYS)
    assert store.query_keys(i=3) == ["k0003"]
    proxy = _CountingProxy(endpoint)
    try:
        with open_store(_url(proxy.url, prefix)) as fresh:
            keys, first = _count(proxy, lambda: fresh.query_keys(i=7))
    finally:
        proxy.close()
    assert keys == ["k0007"]
    assert first < N_KEYS // 10, first


def test_first_query_after_plain_writers_costs_few_requests(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    _fill(store, N_KEYS)
    proxy = _CountingProxy(endpoint)
    try:
        with open_store(_url(proxy.url, prefix)) as fresh:
            keys, first = _count(proxy, lambda: fresh.query_keys(i=7))
    finally:
        proxy.close()
    assert keys == ["k0007"]
    assert first < N_KEYS // 10, first


# --------------------------------------------------------------- transactions


def test_transaction_conflict_leaves_nothing_written(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    """A move whose source changed meanwhile: the commit checks every key first, so
    nothing of the transaction is written (README: "checks them all first")."""
    store.set("src", (b"1", {"v": 1}))
    store.set("other", (b"o", {}))
    with open_store(_url(endpoint, prefix)) as intruder:
        with pytest.raises((ConflictError, TransactionError)):
            with store.transaction():
                seen = _data(store.get("src"))
                store.set("dst", (seen, {"copied": True}))
                store.set("other", (b"changed", {}))
                store.delete("src")
                intruder.set("src", (b"2", {"v": 2}))
        assert not intruder.exists("dst")
        assert _data(intruder.get("other")) == b"o"
        assert _data(intruder.get("src")) == b"2"
    assert not store.exists("dst")
    assert store.query_keys(copied=True) == []


def test_transaction_read_only_keys_are_not_validated(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    """Documented: only keys the transaction writes are checked at commit (not
    serializable: a key only read may have changed; write skew is possible)."""
    store.set("src", (b"1", {}))
    with open_store(_url(endpoint, prefix)) as intruder:
        with store.transaction():
            seen = _data(store.get("src"))
            store.set("dst", (seen, {}))
            intruder.set("src", (b"2", {}))
    assert _data(store.get("dst")) == b"1"


def test_transaction_writes_invisible_before_commit(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    with open_store(_url(endpoint, prefix)) as other:
        with store.transaction():
            store.set("a", (b"1", {"t": 1}))
            store.set("b", (b"2", {"t": 1}))
            assert _data(store.get("a")) == b"1"
            assert list(store.list_keys()) == ["a", "b"]
            assert not other.exists("a")
            assert other.query_keys(t=1) == []
        assert sorted(other.query_keys(t=1)) == ["a", "b"]


def test_transaction_rollback_on_exception(store: S3Store) -> None:
    store.set("a", (b"0", {}))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.set("a", (b"1", {}))
            store.delete("a")
            store.set("b", (b"1", {}))
            raise RuntimeError("boom")
    assert _data(store.get("a")) == b"0"
    assert not store.exists("b")


def test_transaction_lost_update_is_prevented(endpoint: str, prefix: str, store: S3Store) -> None:
    """Read-modify-write in a transaction never loses a concurrent update (isolated)."""
    store.set("n", (b"0", {}))
    with open_store(_url(endpoint, prefix)) as other:
        with pytest.raises((ConflictError, TransactionError)):
            with store.transaction():
                n = int(_data(store.get("n")))
                other.set("n", (b"100", {}))
                store.set("n", (str(n + 1).encode(), {}))
    assert _data(store.get("n")) == b"100"


# --------------------------------------------------------------- metadata


def test_sidecar_metadata_never_mismatched_for_concurrent_reader(store: S3Store) -> None:
    pad = "x" * 3000
    store.set("m", (b"0", {"n": 0, "pad": pad}))
    stop = threading.Event()
    bad: list[Any] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                value = store.get("m")
                data = _data(value)
                if str(value.metadata["n"]).encode() != data:
                    bad.append((data, value.metadata["n"]))
            except KeyNotFoundError as e:
                bad.append(("missing", repr(e)))
            except StorekeeperError as e:
                bad.append(("error", repr(e)))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 25):
            # alternate big (sidecar) and small (inline) metadata
            meta = {"n": n, "pad": pad} if n % 2 else {"n": n}
            store.set("m", (str(n).encode(), meta))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []
    assert store.get_metadata("m") == {"n": 24}


def test_hostile_metadata_round_trips(store: S3Store) -> None:
    meta = {
        "Year": 1,
        "year": 2,
        "YEAR": "three",
        "with space": " padded ",
        "dash-name": "a",
        "dash_name": "b",
        "ünïcødé 名前": "値 \u2028 \n\r\t",
        "": "empty name",
        "emoji": "\U0001f600",
        "nested": {"a": [1, 2.5, None, True, {"b": "c"}]},
        "big": 2**70,
        "neg": -0.0,
        "float": 1e-300,
        "quote": "\"'\\",
        "x-amz-meta-sneaky": "h",
        "Content-Type": "text/evil",
    }
    store.set("m", (b"d", meta))
    assert store.get("m").metadata == meta
    assert store.get_metadata("m") == meta
    assert store.get_metadata("m", ["Year", "year", "nope"]) == {"Year": 1, "year": 2}
    assert store.query_keys(Year=1) == ["m"]
    assert store.query_keys(year=2) == ["m"]
    assert store.query_keys({"ünïcødé 名前": "値 \u2028 \n\r\t"}) == ["m"]


def test_non_json_metadata_rejected(store: S3Store) -> None:
    for bad in ({"a": object()}, {1: "x"}, {"a": float("nan")}, ["a"], "meta"):
        with pytest.raises(InvalidMetadataError):
            store.set("k", (b"x", bad))
    assert not store.exists("k")


def test_metadata_exactly_around_2kb_limit(store: S3Store) -> None:
    for size in range(1900, 2200, 37):
        meta = {"p": "é" * (size // 2), "n": size}
        store.set("edge", (b"d", meta))
        assert store.get("edge").metadata == meta
        assert store.get_metadata("edge") == meta


# --------------------------------------------------------------- ranges and big values


def test_ranges_end_exclusive(store: S3Store) -> None:
    data = bytes(range(256)) * 4
    store.set("r", (data, {}))

    def rng(start: int | None, end: int | None) -> bytes:
        with store.get_data_range("r", start, end) as s:
            return bytes(s.read())

    assert rng(0, 10) == data[0:10]
    assert rng(10, 11) == data[10:11]
    assert rng(None, 5) == data[:5]
    assert rng(1000, None) == data[1000:]
    assert rng(None, None) == data
    assert rng(0, 5000) == data
    assert rng(5, 5) == b""
    assert rng(2000, 3000) == b""
    with pytest.raises(KeyNotFoundError):
        store.get_data_range("nope", 0, 1)


def test_range_of_empty_value(store: S3Store) -> None:
    store.set("e", (b"", {}))
    with store.get_data_range("e", 0, 10) as s:
        assert s.read() == b""
    with store.get_data_range("e") as s:
        assert s.read() == b""
    assert _data(store.get("e")) == b""


def test_40mib_streamed_in_and_out_bounded_memory(endpoint: str, prefix: str) -> None:
    size = 40 * 1024 * 1024
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    with open_store(
        _url(endpoint, prefix, part_size=5 * 1024 * 1024, inline_limit=1024 * 1024)
    ) as s:
        tracemalloc.start()
        try:
            s.set("big", (chunks(), {"size": size}))
            _, peak_in = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            total = 0
            with s.get_data("big") as stream:
                while True:
                    block = stream.read(1024 * 1024)
                    if not block:
                        break
                    if total == 0:
                        assert block[:256] == bytes(range(256))
                    total += len(block)
            _, peak_out = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == size
        assert s.get_metadata("big") == {"size": size}
        with s.get_data_range("big", size - 10, None) as r:
            assert r.read() == chunk[-10:]
    assert peak_in < 24 * 1024 * 1024, peak_in
    assert peak_out < 16 * 1024 * 1024, peak_out


def test_failing_data_source_keeps_old_value(store: S3Store) -> None:
    store.set("k", (b"old", {"v": 1}))

    def broken() -> Iterator[bytes]:
        yield b"new"
        raise OSError("disk gone")

    with pytest.raises(Exception):
        store.set("k", (broken(), {"v": 2}))
    value = store.get("k")
    assert _data(value) == b"old" and value.metadata == {"v": 1}


# --------------------------------------------------------------- hostile keys

HOSTILE_KEYS = [
    "plain",
    "a/b/c",
    "a/b/",
    "/leading",
    "trailing/",
    "double//slash",
    "..",
    "../escape",
    "a/../b",
    ".",
    "./x",
    "%",
    "%2F",
    "%00",
    "100%",
    "a%2Fb",
    "space key",
    " ",
    "tab\tkey",
    "new\nline",
    "ünïcødé/ключ/鍵",
    "\U0001f600",
    "Case",
    "case",
    "CASE",
    "a?b#c&d=e+f",
    "back\\slash",
    "~tilde",
    "\u2028",
    "key.__meta__",
    "key.sidecar",
]


def test_hostile_keys_round_trip_and_list_in_order(store: S3Store, prefix: str) -> None:
    room = 1024 - len(prefix.encode())  # S3's 1024-byte object-name limit, less the prefix
    keys = [*HOSTILE_KEYS, "L" * 1000, "é" * (room // 2), "z" * room, "鍵" * (room // 3)]
    for i, key in enumerate(keys):
        store.set(key, (key.encode(), {"i": i}))
    for i, key in enumerate(keys):
        value = store.get(key)
        assert _data(value) == key.encode(), key
        assert value.metadata == {"i": i}
    assert list(store.list_keys()) == sorted(keys)
    assert sorted(store.query_keys()) == sorted(keys)
    assert list(store.list_keys("a/")) == sorted(k for k in keys if k.startswith("a/"))
    assert list(store.list_keys("%")) == sorted(k for k in keys if k.startswith("%"))
    assert store.glob("[Cc]ase") == ["Case", "case"]


def test_list_keys_order_with_control_characters(store: S3Store) -> None:
    keys = [" ", "~", "\x7f", "a~", "a\x7f", "a\x7fb/c", "\x01", "\x1f", "new\nline", "new line"]
    for key in keys:
        store.set(key, (b"", {}))
    assert list(store.list_keys()) == sorted(keys)
    assert list(store.list_keys("a")) == sorted(k for k in keys if k.startswith("a"))
    assert list(store.list_keys("", "/")) == sorted(
        {k.split("/")[0] + "/" if "/" in k else k for k in keys}
    )


def test_list_keys_with_delimiter(store: S3Store) -> None:
    keys = ["a/b/c", "a/b/", "a/x", "a/", "a", "a-b", "a.b", "b", "ä/x", "a0", "/x", "//y"]
    for key in keys:
        store.set(key, (b"", {}))

    def folded(prefix: str, delim: str) -> list[str]:
        out: list[str] = []
        for key in sorted(keys):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            item = prefix + rest[: rest.index(delim) + len(delim)] if delim in rest else key
            if item not in out:
                out.append(item)
        return out

    for prefix, delim in [
        ("", "/"),
        ("a/", "/"),
        ("a", "/"),
        ("", "-"),
        ("", "."),
        ("a", "b"),
        ("", "//"),
        ("", "ä"),
    ]:
        assert list(store.list_keys(prefix, delim)) == folded(prefix, delim), (prefix, delim)


def test_invalid_keys_rejected(store: S3Store) -> None:
    for key in ["", "a\x00b", "\ud800", "x\udfffy"]:
        with pytest.raises(InvalidKeyError):
            store.set(key, (b"x", {}))
        with pytest.raises(InvalidKeyError):
            store.get(key)
    for key in [None, 5, b"bytes"]:
        with pytest.raises(InvalidKeyError):
            store.set(key, (b"x", {}))  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        list(store.list_keys("\ud800"))
    assert list(store.list_keys()) == []


def test_over_long_key_is_a_clear_error(store: S3Store) -> None:
    """A key whose object name cannot fit S3's 1024-byte limit: a storekeeper error."""
    key = "k" * 5000
    try:
        store.set(key, (b"x", {}))
    except StorekeeperError:
        return
    assert _data(store.get(key)) == b"x"
    assert list(store.list_keys("kkk")) == [key]


# --------------------------------------------------------------- foreign objects, listing


def test_foreign_objects_under_prefix(store: S3Store, raw: Any, prefix: str) -> None:
    store.set("mine", (b"m", {"o": 1}))
    raw.put_object(Bucket=BUCKET, Key=prefix + "foreign.txt", Body=b"hello")
    raw.put_object(Bucket=BUCKET, Key=prefix + "dir/", Body=b"")
    raw.put_object(
        Bucket=BUCKET, Key=prefix + "mine-raw", Body=b"x", Metadata={"weird": "{not json"}
    )
    keys = list(store.list_keys())
    assert "mine" in keys
    for key in keys:
        with contextlib.suppress(StorekeeperError):
            store.get(key)
    assert store.query_keys(o=1) == ["mine"]
    assert _data(store.get("mine")) == b"m"


def test_delete_while_listing(store: S3Store) -> None:
    keep = [f"keep{i:03d}" for i in range(30)]
    gone = [f"gone{i:03d}" for i in range(30)]
    for key in keep + gone:
        store.set(key, (b"", {}))
    seen: list[str] = []
    it = store.list_keys()
    for n, key in enumerate(it):
        seen.append(key)
        if n == 2:
            for g in gone[5:]:
                store.delete(g)
    assert [k for k in seen if k.startswith("keep")] == keep
    assert len(seen) == len(set(seen))


# --------------------------------------------------------------- connection errors


def test_missing_bucket_is_clear_and_quick(endpoint: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(StorekeeperError) as info:
        open_store(
            f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p?endpoint_url={endpoint}&region=us-east-1"
        )
    assert time.monotonic() - t0 < 10
    assert "no-such-bucket" in str(info.value)


def test_wrong_endpoint_is_clear_and_quick() -> None:
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(BackendError):
        open_store(
            f"s3://{BUCKET}/p?endpoint_url=http://127.0.0.1:{port}&region=us-east-1&max_attempts=2"
        )
    assert time.monotonic() - t0 < 15


def test_unroutable_endpoint_does_not_hang() -> None:
    t0 = time.monotonic()
    with pytest.raises(BackendError):
        open_store(
            f"s3://{BUCKET}/p?endpoint_url=http://10.255.255.1:9&region=us-east-1&max_attempts=1"
        )
    assert time.monotonic() - t0 < 30


def test_bad_credentials_are_authentication_error() -> None:
    proc, url = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        t0 = time.monotonic()
        store = S3Store(
            BUCKET,
            "p",
            endpoint_url=url,
            region="us-east-1",
            credentials={"aws_access_key_id": "AKIAWRONG", "aws_secret_access_key": "wrong"},
        )
        with pytest.raises(StorekeeperError) as info:
            store.connect()
        assert time.monotonic() - t0 < 10
        assert "wrong" not in str(info.value).replace("AKIAWRONG", "")  # secret never shown
        assert isinstance(info.value, AuthenticationError), repr(info.value)
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_url_options(endpoint: str) -> None:
    with pytest.raises(InvalidURLError):
        open_store(f"s3://{BUCKET}/p?endpoint_url={endpoint}&regoin=x")
    with pytest.raises(InvalidURLError):
        open_store(f"s3://{BUCKET}/p?endpoint_url={endpoint}&part_size=0")
    with pytest.raises(InvalidURLError):
        open_store(f"s3://{BUCKET}/p?endpoint_url={endpoint}&aws_secret_access_key=leak")
    with pytest.raises(InvalidURLError):
        open_store("s3:///nobucket")


def test_prefix_isolation(endpoint: str, prefix: str, store: S3Store) -> None:
    store.set("k", (b"1", {"z": 1}))
    with open_store(_url(endpoint, prefix.rstrip("/"))) as sibling:
        # "t-xxx" without the slash: keys under "t-xxx" are different objects
        assert not sibling.exists("k") or sibling.exists("/k") is False
    with open_store(_url(endpoint, prefix + "sub/")) as nested:
        nested.set("n", (b"2", {"z": 1}))
        assert list(nested.list_keys()) == ["n"]
    assert store.query_keys(z=1) == ["k"] or sorted(store.query_keys(z=1)) == ["k", "sub/n"]


# --------------------------------------------------------------- lifecycle and arguments


def test_use_after_disconnect(endpoint: str, prefix: str) -> None:
    s = open_store(_url(endpoint, prefix))
    s.set("k", (b"v", {}))
    value = s.get("k")
    s.disconnect()
    assert not s.is_connected()
    for call in (
        lambda: s.get("k"),
        lambda: s.set("k", (b"x", {})),
        lambda: s.delete("k"),
        lambda: list(s.list_keys()),
        lambda: s.query_keys(a=1),
        lambda: s.exists("k"),
        lambda: s.version_of("k"),
    ):
        with pytest.raises(NotConnectedError):
            call()
    del value
    s.connect()
    assert _data(s.get("k")) == b"v"
    s.disconnect()
    s.disconnect()  # twice is harmless


def test_wrong_argument_types(store: S3Store) -> None:
    store.set("k", (b"v", {}))
    with pytest.raises(InvalidArgumentError):
        store.set("k", (b"x", {}), if_version=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.set("k", (b"x", {}), if_exists="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        list(store.list_keys(5))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.list_keys("", "")
    with pytest.raises(InvalidArgumentError):
        store.query("sel")
    with pytest.raises(InvalidArgumentError):
        store.glob(5)  # type: ignore[arg-type]
    for bad in (5, "text", [b"a", 5], None):
        with pytest.raises(InvalidValueError):
            store.set("k", (bad, {}))
    with pytest.raises((InvalidValueError, InvalidArgumentError, TypeError)):
        store.set("k", b"not a pair")  # type: ignore[arg-type]
    with pytest.raises(InvalidMetadataError):
        store.query_keys(a=object())
    assert _data(store.get("k")) == b"v"


def test_data_source_kinds(store: S3Store) -> None:
    store.set("f", (io.BytesIO(b"file-like"), {}))
    store.set("g", (iter([b"a", b"", b"bc"]), {}))
    store.set("b", (bytearray(b"ba"), {}))
    store.set("m", (memoryview(b"mv"), {}))
    assert [_data(store.get(k)) for k in "fgbm"] == [b"file-like", b"abc", b"ba", b"mv"]


def test_data_is_fresh_stream_each_time(store: S3Store) -> None:
    store.set("k", (b"hello", {}))
    value = store.get("k")
    with value.data as s1:
        assert s1.read() == b"hello"
    with value.data as s2:
        assert s2.read() == b"hello"


def test_update_metadata_race_8_threads_loses_nothing(store: S3Store) -> None:
    store.set("k", (b"v", {}))
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.update_metadata("k", {f"t{i}": i})
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get_metadata("k") == {f"t{i}": i for i in range(8)}
    assert _data(store.get("k")) == b"v"


def test_versions_are_per_key_not_per_content(store: S3Store) -> None:
    va = store.set("a", (b"same", {"m": 1}))
    vb = store.set("b", (b"same", {"m": 1}))
    assert va != vb
    with pytest.raises(ConflictError):
        store.set("b", (b"x", {}), if_version=va)
    with pytest.raises(ConflictError):
        store.delete("b", if_version=va)


def test_small_value_read_before_overwrite_stays_readable(store: S3Store) -> None:
    store.set("k", (b"old", {"v": 1}))
    value = store.get("k")
    store.set("k", (b"new", {"v": 2}))
    assert _data(value) == b"old" and value.metadata == {"v": 1}


def test_internal_looking_keys_are_ordinary_keys(store: S3Store) -> None:
    store.set("big", (b"d", {"pad": "x" * 3000, "q": 1}))
    store.query_keys(q=1)  # an index and its snapshot may now exist
    keys = ["\x01~sk/m/x", "\x01~sk/", "~sk/m/y", "\x01", "\x01\x01"]
    for key in keys:
        store.set(key, (key.encode(), {"q": 2}))
    for key in keys:
        assert _data(store.get(key)) == key.encode()
    assert sorted(store.list_keys()) == sorted([*keys, "big"])
    assert sorted(store.query_keys(q=2)) == sorted(keys)
    assert store.get_metadata("big") == {"pad": "x" * 3000, "q": 1}
    for key in keys:
        store.delete(key)
    assert list(store.list_keys()) == ["big"]
    assert store.get_metadata("big")["q"] == 1
    assert store.query_keys(q=1) == ["big"]


def test_foreign_objects_with_escape_like_names(store: S3Store, raw: Any, prefix: str) -> None:
    store.set("mine", (b"m", {"o": 1}))
    for name in ["\x01", "\x01zz", "\x01~sk/m/garbage", "\x01~sk/unknown", "plain-foreign"]:
        raw.put_object(Bucket=BUCKET, Key=prefix + name, Body=b"junk", Metadata={"x": "y"})
    keys = list(store.list_keys())  # must not raise a non-storekeeper error
    assert "mine" in keys
    for key in keys:
        try:
            store.get(key)
            store.get_metadata(key)
        except StorekeeperError:
            pass
    assert store.query_keys(o=1) == ["mine"]
    assert _data(store.get("mine")) == b"m"


def test_sidecar_cleaned_up_and_hidden(store: S3Store, raw: Any, prefix: str) -> None:
    store.set("big", (b"d", {"pad": "x" * 3000}))
    assert list(store.list_keys()) == ["big"]
    store.set("big", (b"d", {"pad": "x"}))
    store.set("big", (b"e", {"pad": "y" * 3000}))
    store.delete("big")
    assert list(store.list_keys()) == []
    left = raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    # only store bookkeeping (an index snapshot) may remain; no sidecar of a deleted key
    assert all("/m/" not in o["Key"] for o in left), left


def test_multiset_and_events(endpoint: str, prefix: str) -> None:
    from storekeeper import EventManager
    from storekeeper.store import StoreSetEvent

    seen: list[str] = []
    events = EventManager()
    events.connect(StoreSetEvent, lambda e: seen.append(e.key))
    store = S3Store(BUCKET, prefix, endpoint_url=endpoint, region="us-east-1", event_manager=events)
    with store:
        store.multiset(["a", "b", "c"], [(b"1", {}), (b"2", {}), (b"3", {})])
        assert sorted(seen) == ["a", "b", "c"]
        assert [_data(v) for v in store.multiget(["c", "a"])] == [b"3", b"1"]


def test_transaction_read_of_absence_is_checked(endpoint: str, prefix: str, store: S3Store) -> None:
    """Create-if-absent in a transaction: a key created meanwhile by another process is
    not overwritten (the transaction read it as missing)."""
    with open_store(_url(endpoint, prefix)) as intruder:
        try:
            with store.transaction():
                if not store.exists("lock"):
                    intruder.set("lock", (b"intruder", {}))
                    store.set("lock", (b"mine", {}))
        except (ConflictError, TransactionError):
            pass
        assert _data(intruder.get("lock")) == b"intruder"


def test_transaction_get_of_missing_then_create(endpoint: str, prefix: str, store: S3Store) -> None:
    with open_store(_url(endpoint, prefix)) as intruder:
        with pytest.raises((ConflictError, TransactionError)):
            with store.transaction():
                with pytest.raises(KeyNotFoundError):
                    store.get("lock")
                intruder.set("lock", (b"intruder", {}))
                store.set("lock", (b"mine", {}))
        assert _data(intruder.get("lock")) == b"intruder"


def test_transaction_partial_apply_is_reported(endpoint: str, prefix: str, store: S3Store) -> None:
    """An intruder that writes a key while the commit is applying: either the whole
    transaction applied before it, or the commit raised naming what was not written;
    never a silent half-apply, never a lost intruder write."""
    keys = [f"k{i:02d}" for i in range(24)]
    for key in keys:
        store.set(key, (b"0", {"v": 0}))
    done = threading.Event()
    intruded: list[str] = []

    def intruder() -> None:
        with open_store(_url(endpoint, prefix)) as other:
            while not done.is_set():
                if any(other.get_metadata(k)["v"] == 1 for k in keys[:3]):
                    for key in reversed(keys):
                        value = other.get(key)
                        if value.metadata["v"] == 0:
                            try:
                                other.set(key, (b"x", {"v": "intruder"}), if_version=value.version)
                                intruded.append(key)
                            except ConflictError:
                                pass
                            return
                    return

    thread = threading.Thread(target=intruder)
    thread.start()
    error: BaseException | None = None
    try:
        with store.transaction():
            for key in keys:
                n = int(_data(store.get(key)))
                store.set(key, (str(n + 1).encode(), {"v": n + 1}))
    except (ConflictError, TransactionError) as e:
        error = e
    finally:
        done.set()
        thread.join()
    final = {k: store.get_metadata(k)["v"] for k in keys}
    for key in intruded:
        assert final[key] == "intruder"  # the intruder's write is never lost
    if error is None:
        assert intruded == [] and set(final.values()) == {1}
    else:
        assert intruded, "a conflict with no concurrent write"
        written = [k for k in keys if final[k] == 1]
        if written:  # half-applied: it must say so, naming the key not written
            assert isinstance(error, TransactionError)
            assert intruded[0] in str(error)
    # the index agrees with the bucket after the half-applied commit
    assert sorted(store.query_keys(v=1)) == [k for k in keys if final[k] == 1]
    assert store.query_keys(v="intruder") == intruded


def test_queries_agree_with_memory_store(store: S3Store) -> None:
    from storekeeper.backends import DictMemoryStore
    from storekeeper.store import Exists, In, Prefix, Range

    values: list[dict[str, Any]] = [
        {"n": 1},
        {"n": True},
        {"n": 1.0},
        {"n": 0},
        {"n": False},
        {"n": None},
        {"n": "1"},
        {"n": [1]},
        {"n": {"a": 1}},
        {"n": 2**60 + 1},
        {"n": -5, "s": "abc"},
        {"s": "abd"},
        {"s": "ab"},
        {"s": "ä"},
        {"s": ""},
        {},
        {"pad": "x" * 2500, "n": 3, "s": "sidecar"},
    ]
    memory = DictMemoryStore()
    with memory:
        for i, meta in enumerate(values):
            memory.set(f"k{i:02d}", (b"", meta))
            store.set(f"k{i:02d}", (b"", meta))
        queries: list[dict[str, Any]] = [
            {"n": 1},
            {"n": True},
            {"n": 0},
            {"n": False},
            {"n": None},
            {"n": "1"},
            {"n": [1]},
            {"n": {"a": 1}},
            {"n": 2**60 + 1},
            {"n": 2**60},
            {"n": Range(0, 3)},
            {"n": Range(None, 0)},
            {"n": In([1, "1", None])},
            {"n": Exists()},
            {"s": Prefix("ab")},
            {"s": Range("ab", "abd")},
            {"s": Prefix("")},
            {"s": "sidecar", "n": 3},
            {"nope": Exists()},
        ]
        for q in queries:
            assert sorted(store.query_keys(q)) == sorted(memory.query_keys(q)), q
            assert sorted(store.query(["n"], q)) == sorted(memory.query(["n"], q)), q


def _range_cases() -> list[tuple[Any, Any]]:
    return [(0, 3), (5, 2), (-3, None), (None, -2), (-100, 4), (8, 100), (0, 0), (10, None)]


def test_ranges_agree_with_memory_store(store: S3Store) -> None:
    from storekeeper.backends import DictMemoryStore

    with DictMemoryStore() as memory:
        for s in (store, memory):
            s.set("k", (b"0123456789", {}))
        for start, end in _range_cases():
            with (
                store.get_data_range("k", start, end) as a,
                memory.get_data_range("k", start, end) as b,
            ):
                assert a.read() == b.read(), (start, end)


def test_range_with_bool_offset_like_other_backends(store: S3Store) -> None:
    from storekeeper.backends import DictMemoryStore

    with DictMemoryStore() as memory:
        for s in (store, memory):
            s.set("k", (b"0123456789", {}))
        with memory.get_data_range("k", True, 3) as b:
            expected = b.read()
        try:
            with store.get_data_range("k", True, 3) as a:
                got = a.read()
        except InvalidArgumentError:
            return
        assert got == expected


def _race(n: int, call: Any) -> list[str]:
    barrier = threading.Barrier(n)
    results: list[str] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            call(i)
            results.append("ok")
        except StorekeeperError as e:
            results.append(type(e).__name__)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def test_conditional_delete_race_one_winner(store: S3Store) -> None:
    version = store.set("d", (b"", {}))
    results = _race(8, lambda i: store.delete("d", if_version=version))
    assert results.count("ok") == 1
    assert set(results) <= {"ok", "KeyNotFoundError", "ConflictError"}
    assert not store.exists("d")


def test_set_metadata_create_race_one_winner(store: S3Store) -> None:
    results = _race(8, lambda i: store.set_metadata("sm", {"i": i}, if_exists=False))
    assert results == ["ConflictError"] * 7 + ["ok"]
    assert set(store.get_metadata("sm")) == {"i"}


def test_missing_key_preconditions_like_memory_store(store: S3Store) -> None:
    from storekeeper.backends import DictMemoryStore

    def outcome(s: Any, call: Any) -> str:
        try:
            call(s)
        except StorekeeperError as e:
            return type(e).__name__
        return "ok"

    calls = [
        lambda s: s.delete("x", if_version="v"),
        lambda s: s.set_metadata("x", {"a": 1}, if_exists=True),
        lambda s: s.update_metadata("x", {"a": 1}),
        lambda s: s.update_metadata("x", {"a": 1}, if_version="zz"),
        lambda s: s.get_metadata("x"),
        lambda s: s.get_data_range("x", 0, 1),
    ]
    with DictMemoryStore() as memory:
        for call in calls:
            assert outcome(store, call) == outcome(memory, call)
    with pytest.raises(KeyNotFoundError):
        store.version_of("x")


def test_unicode_edge_keys_round_trip_in_order(store: S3Store) -> None:
    keys = [
        "\uffff",
        "\ufffe",
        "\U0010ffff",
        "\ud7ff",
        "\ue000",
        "a\r\nb",
        "a\rb",
        "a\nb",
        "\x85",
        "\u2029",
        "é",
        "e\u0301",  # the same text, NFD: a different key
        "\ufeffbom",
        "x\u200by",
        "\uff0f",
        "a\uff0fb",
    ]
    for key in keys:
        store.set(key, (key.encode(), {"k": key}))
    for key in keys:
        value = store.get(key)
        assert _data(value) == key.encode() and value.metadata == {"k": key}
        assert store.query_keys(k=key) == [key]
    assert list(store.list_keys()) == sorted(keys)
    assert list(store.list_keys("a", "\r")) == ["a\nb", "a\r", "a\uff0fb"]
    assert sorted(store.query_keys()) == sorted(keys)


def _sidecars(raw: Any, prefix: str) -> list[str]:
    objects = raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in objects if "/m/" in o["Key"][len(prefix) :]]


def test_failed_conditional_write_leaves_no_sidecar(store: S3Store, raw: Any, prefix: str) -> None:
    big = {"pad": "x" * 3000}
    store.set("k", (b"1", {}))
    for _ in range(3):
        with pytest.raises(ConflictError):
            store.set("k", (b"2", big), if_exists=False)
        with pytest.raises(ConflictError):
            store.set("new", (b"2", big), if_version="nope")
    assert store.get_metadata("k") == {}
    assert not store.exists("new")
    assert _sidecars(raw, prefix) == []


def test_conflicting_transaction_leaves_no_sidecar(
    endpoint: str, prefix: str, store: S3Store, raw: Any
) -> None:
    store.set("src", (b"1", {}))
    with open_store(_url(endpoint, prefix)) as intruder:
        with pytest.raises((ConflictError, TransactionError)):
            with store.transaction():
                store.get("src")
                store.set("big", (b"b", {"pad": "y" * 3000}))
                store.set("src", (b"3", {"pad": "z" * 3000}))
                intruder.set("src", (b"2", {}))
    assert not store.exists("big")
    assert store.get_metadata("src") == {}
    assert _sidecars(raw, prefix) == []


def test_inner_block_rollback_like_memory_store(store: S3Store) -> None:
    from storekeeper.backends import DictMemoryStore

    def run(s: Any) -> list[tuple[str, bytes]]:
        s.set("a", (b"0", {}))
        with s.transaction():
            s.set("a", (b"1", {}))
            with contextlib.suppress(RuntimeError), s.transaction():
                s.set("b", (b"1", {}))
                s.delete("a")
                raise RuntimeError("inner")
            s.set("c", (b"1", {}))
        return [(k, _data(s.get(k))) for k in s.list_keys()]

    with DictMemoryStore() as memory:
        assert run(store) == run(memory)


def test_transaction_delete_conflicts_with_concurrent_rewrite(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    store.set("k", (b"1", {}))
    with open_store(_url(endpoint, prefix)) as intruder:
        with pytest.raises((ConflictError, TransactionError)):
            with store.transaction():
                store.get("k")
                store.delete("k")
                intruder.set("k", (b"2", {}))
        assert _data(intruder.get("k")) == b"2"


def test_update_metadata_from_processes_with_sidecar_exact(
    endpoint: str, prefix: str, store: S3Store
) -> None:
    """Read-modify-write of one key's (sidecar-sized) metadata from three processes:
    every update lands (retrying on conflict), none is lost."""
    pad = "x" * 3000
    store.set("doc", (b"body", {"pad": pad}))
    results = _run_children(_child_update_metadata, [(_url(endpoint, prefix), w) for w in range(3)])
    assert [r[0] for r in results] == ["ok"] * 3, results
    expected = {"pad": pad, **{f"p{w}_{i}": i for w in range(3) for i in range(3)}}
    value = store.get("doc")
    assert value.metadata == expected and _data(value) == b"body"
    assert store.query_keys(p2_2=2) == ["doc"]


def test_throttling_is_retried(endpoint: str, prefix: str, store: S3Store) -> None:
    store.set("k", (b"v", {"a": 1}))
    proxy = _CountingProxy(endpoint)
    try:
        with open_store(_url(proxy.url, prefix)) as s:
            proxy.fail_next = 1  # transient: retried with backoff, then served
            assert _data(s.get("k")) == b"v"
            proxy.fail_next = 1
            s.set("k", (b"w", {"a": 2}))
            assert _data(s.get("k")) == b"w"
    finally:
        proxy.close()


def test_throttling_bounded_by_max_attempts(endpoint: str, prefix: str, store: S3Store) -> None:
    store.set("k", (b"v", {}))
    proxy = _CountingProxy(endpoint)
    try:
        with open_store(_url(proxy.url, prefix, max_attempts=1)) as s:
            proxy.fail_next = 1000  # persistent
            proxy.reset()
            t0 = time.monotonic()
            with pytest.raises(BackendError):
                s.get("k")
            assert time.monotonic() - t0 < 10
            attempts = proxy.total()
            proxy.fail_next = 0
            assert _data(s.get("k")) == b"v"
    finally:
        proxy.close()
    assert attempts == 1, attempts


READS = {
    "get": lambda s, k: s.get(k),
    "get_metadata": lambda s, k: s.get_metadata(k),
    "get_data": lambda s, k: s.get_data(k).close(),
    "get_data_range": lambda s, k: s.get_data_range(k, 0, 1).close(),
    "to_bytes": lambda s, k: s.to_bytes(k),
    "exists": lambda s, k: s.exists(k),
    "version_of": lambda s, k: s.version_of(k),
    "multiget": lambda s, k: s.multiget([k]),
}


@pytest.mark.parametrize("read", list(READS))
def test_transaction_read_then_write_of_existing_key_is_checked(
    endpoint: str, prefix: str, store: S3Store, read: str
) -> None:
    """Whatever read method a transaction used on a key it then writes, a concurrent
    write to that key between the read and the commit is never overwritten unseen."""
    store.set("k", (b"1", {"v": 1}))
    with open_store(_url(endpoint, prefix)) as intruder:
        try:
            with store.transaction():
                READS[read](store, "k")
                intruder.set("k", (b"2", {"v": 2}))
                store.set("k", (b"3", {"v": 3}))
        except (ConflictError, TransactionError):
            pass
        assert _data(intruder.get("k")) == b"2"


def test_documented_request_counts(endpoint: str, prefix: str, store: S3Store) -> None:
    store.set("small", (b"0123456789", {"a": 1}))
    store.set("side", (b"0123456789", {"pad": "x" * 3000}))
    proxy = _CountingProxy(endpoint)
    try:
        with open_store(_url(proxy.url, prefix)) as s:

            def counted(call: Any) -> dict[str, int]:
                proxy.reset()
                call()
                return dict(proxy.counts)

            assert counted(lambda: _data(s.get("small"))) == {"GET": 1}
            assert counted(lambda: _data(s.get("side"))) == {"GET": 2}
            assert counted(lambda: s.get_metadata("small")) == {"HEAD": 1}
            assert counted(lambda: s.exists("small")) == {"HEAD": 1}
            assert counted(lambda: s.version_of("small")) == {"HEAD": 1}
            assert counted(lambda: s.get_data_range("small", 2, 5).close()) == {"GET": 1}
            assert counted(lambda: s.set("small", (b"x", {"a": 2}))) == {"PUT": 1}
    finally:
        proxy.close()
