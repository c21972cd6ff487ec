"""What S3Store promises beyond the conformance suite: its object layout, errors,
conditional writes under forced interleavings, its index, and several processes."""

from __future__ import annotations

import http.server
import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import botocore.exceptions
import pytest

from s3_server import S3Server, raw_read, raw_write, shared
from storekeeper.backends._s3_client import MissingObjectError, PreconditionError, translate
from storekeeper.backends.s3 import S3Store
from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    InvalidKeyError,
    InvalidURLError,
    TransactionError,
)
from storekeeper.store import open_store

pytestmark = [pytest.mark.service, pytest.mark.s3]

_CONTEXT = multiprocessing.get_context("forkserver")


@pytest.fixture
def server() -> S3Server:
    return shared()


@pytest.fixture
def store(server: S3Server) -> Iterator[S3Store]:
    with server.store(server.prefix()) as opened:
        yield opened


def _names(server: S3Server, store: S3Store) -> list[str]:
    pages = (
        server.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=store.bucket, Prefix=store.prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", ())]


class _Hooked:
    """A client whose named calls first run the hooks queued for them (one per call):
    a way to put another writer's request between two of the store's requests."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.hooks: dict[str, list[Callable[[], None]]] = {}
        self.calls: list[str] = []

    def before(self, operation: str, *hooks: Callable[[], None]) -> None:
        self.hooks.setdefault(operation, []).extend(hooks)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("_") or name == "meta":
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            queued = self.hooks.get(name)
            if queued:
                queued.pop(0)()
            return attribute(*args, **kwargs)

        return call


def _hook(store: S3Store) -> _Hooked:
    hooked = _Hooked(store._objects.client)
    store._objects.client = hooked
    return hooked


# -- URLs, layout, errors -------------------------------------------------------------------
def test_open_store_url(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    if server.credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.credentials["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.credentials["aws_secret_access_key"])
    prefix = server.prefix()
    endpoint = f"&endpoint_url={server.endpoint_url}" if server.endpoint_url else ""
    url = f"s3://{server.bucket}/{prefix}?region={server.region}{endpoint}&part_size=300000"
    with open_store(url) as store:
        assert isinstance(store, S3Store)
        assert (store.prefix, store.part_size) == (prefix, 300000)
        store.set("k", (b"v", {"a": 1}))
    assert raw_read(server, store, "k") == (b"v", {"a": 1})
    with pytest.raises(InvalidURLError, match="valid options"):
        open_store(f"s3://{server.bucket}/x?endpoint={server.endpoint_url}")
    with pytest.raises(InvalidURLError, match="no credentials"):
        open_store("s3://key:secret@bucket/x")


def test_missing_bucket_is_refused_at_connect(server: S3Server) -> None:
    store = server.store("x/", bucket="storekeeper-no-such-bucket")
    with pytest.raises(BackendError):
        store.connect()


def test_sdk_errors_are_translated() -> None:
    def error(code: str, status: int) -> botocore.exceptions.ClientError:
        response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return botocore.exceptions.ClientError(response, "GetObject")  # type: ignore[arg-type]

    cases: list[tuple[str, int, type[Exception]]] = [
        ("NoSuchKey", 404, MissingObjectError),
        ("PreconditionFailed", 412, PreconditionError),
        ("AccessDenied", 403, AuthorizationError),
        ("InvalidAccessKeyId", 403, AuthenticationError),
        ("SlowDown", 503, BackendUnavailableError),
        ("NoSuchBucket", 404, BackendError),
        ("InternalError", 500, BackendUnavailableError),
    ]
    for code, status, expected in cases:
        with pytest.raises(expected) as info:
            translate("thing", error(code, status))
        assert isinstance(info.value.__cause__, botocore.exceptions.ClientError)
    with pytest.raises(BackendError) as raised:
        translate("thing", error("NoSuchBucket", 404))
    assert not isinstance(raised.value, KeyError)  # a missing bucket is not a missing key


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers 503 SlowDown to the first ``failures`` requests, then 200."""

    failures = 0
    seen = 0

    def _answer(self) -> None:
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            body = b"<Error><Code>SlowDown</Code><Message>Slow down</Message></Error>"
            self.send_response(503)
        else:
            body = b""
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET = do_PUT = _answer  # noqa: N815 - http.server's method names

    def log_message(self, *args: Any) -> None:
        return


@pytest.mark.parametrize(("failures", "succeeds"), [(2, True), (100, False)])
def test_throttling_is_retried_with_a_bound(failures: int, succeeds: bool) -> None:
    handler = type("Handler", (_Throttling,), {"failures": failures, "seen": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        store = S3Store(
            "bucket",
            endpoint_url=f"http://127.0.0.1:{httpd.server_address[1]}",
            region="us-east-1",
            credentials={"aws_access_key_id": "a", "aws_secret_access_key": "b"},
            max_attempts=3,
        )
        if succeeds:
            store.connect()
            assert handler.seen == 3
            store.disconnect()
        else:
            with pytest.raises(BackendUnavailableError, match="retries"):
                store.connect()
            # Bounded: max_attempts=3 attempts (botocore sent one more for a bare 503
            # to HEAD in every run here), then the error, instead of retrying for ever.
            assert 3 <= handler.seen <= 4
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_object_layout(server: S3Server, store: S3Store) -> None:
    store.set("dir/line\nbreak\x7f", (b"data", {"é": "ü"}))
    [name] = _names(server, store)
    assert name == store.prefix + "dir/line\x01\x2abreak\x01\x40"
    head = server.client().head_object(Bucket=store.bucket, Key=name)
    assert head["ContentLength"] == 4 + 16  # the data, then the write tag
    assert json.loads(head["Metadata"]["sk-m"]) == {"é": "ü"}
    assert head["Metadata"]["sk-m"].isascii()
    assert list(store.list_keys()) == ["dir/line\nbreak\x7f"]
    with pytest.raises(InvalidKeyError, match="too long for S3"):
        store.set("é" * 600, (b"", {}))


def test_objects_written_by_other_tools_read_as_plain_data(
    server: S3Server, store: S3Store
) -> None:
    server.client().put_object(Bucket=store.bucket, Key=store.prefix + "foreign", Body=b"raw")
    value = store.get("foreign")
    assert store.to_bytes("foreign") == b"raw" and value.metadata == {} and value.size == 3
    store.set("foreign", (b"mine", {"a": 1}), if_version=value.version)
    assert store.get_metadata("foreign") == {"a": 1}


def test_metadata_over_the_header_limit_lives_in_a_sidecar(
    server: S3Server, store: S3Store
) -> None:
    big = {"text": "é" * 1500, "n": list(range(300))}
    store.set("k", (b"data", big))
    assert store.get("k").metadata == big and store.get_metadata("k") == big
    assert raw_read(server, store, "k") == (b"data", big)
    sidecars = [name for name in _names(server, store) if "\x01~sk/m/" in name]
    assert len(sidecars) == 1
    assert store.query(n=big["n"]) == [("k", big)]
    store.set("k", (b"data", {"small": True}))  # the old sidecar goes
    assert [n for n in _names(server, store) if "\x01~sk/m/" in n] == []
    store.set("k", (b"again", big))
    store.delete("k")
    assert [n for n in _names(server, store) if "\x01~sk/m/" in n] == []


def test_a_reader_of_an_overwritten_sidecar_reads_the_new_value(
    server: S3Server, store: S3Store
) -> None:
    store.set("k", (b"old", {"pad": "o" * 3000}))
    other = server.store(store.prefix)
    other.connect()
    hooked = _hook(store)
    # Between the reader's GET of the object and its GET of the sidecar, a writer
    # replaces the value (and deletes the old sidecar).
    hooked.before("get_object", lambda: None, lambda: other.set("k", (b"new", {"pad": "n" * 3000})))
    value = store.get("k")
    assert value.metadata == {"pad": "n" * 3000}
    with value.data as stream:
        assert stream.read() == b"new"
    other.disconnect()


def test_values_of_an_unversioned_bucket(server: S3Server) -> None:
    if server.plain_bucket is None:
        pytest.skip("needs an unversioned bucket (only on the test session's own server)")
    with server.store(server.prefix(), bucket=server.plain_bucket, inline_limit=10) as store:
        store.set("small", (b"0123456789", {}))
        store.set("large", (b"a" * 100, {}))
        small, large = store.get("small"), store.get("large")
        with large.range(90, None) as stream:
            assert stream.read() == b"a" * 10
        store.set("small", (b"new", {}))
        store.set("large", (b"b" * 100, {}))
        assert small.data.read() == b"0123456789"
        with large.data as stream:  # the first reader streams the GET that read the headers
            assert stream.read() == b"a" * 100
        with pytest.raises(ConflictError, match="data is gone"):
            large.range(0, 5)  # a new request: the old object is gone


# -- conditional writes under forced interleavings -------------------------------------------
def test_conditional_set_loses_to_a_write_between_its_check_and_its_put(
    server: S3Server, store: S3Store
) -> None:
    version = store.set("k", (b"1", {}))
    other = server.store(store.prefix)
    other.connect()
    hooked = _hook(store)
    hooked.before("put_object", lambda: other.set("k", (b"theirs", {"by": "other"})))
    with pytest.raises(ConflictError):
        store.set("k", (b"mine", {}), if_version=version)
    assert raw_read(server, store, "k") == (b"theirs", {"by": "other"})
    # Without the cached version the store looks first (HEAD), then writes: the same.
    store._objects.remember("k", None)
    version = store.version_of("k")
    store._objects.remember("k", None)
    hooked.before("put_object", lambda: other.set("k", (b"again", {})))
    with pytest.raises(ConflictError):
        store.set("k", (b"mine", {}), if_version=version)
    assert raw_read(server, store, "k") == (b"again", {})
    other.disconnect()


def test_create_only_set_loses_to_a_create_between_its_check_and_its_put(
    server: S3Server, store: S3Store
) -> None:
    other = server.store(store.prefix)
    other.connect()
    hooked = _hook(store)
    hooked.before("put_object", lambda: other.set("k", (b"first", {})))
    with pytest.raises(ConflictError):
        store.set("k", (b"second", {}), if_exists=False)
    assert raw_read(server, store, "k") == (b"first", {})
    other.disconnect()


def test_plain_set_that_loses_a_race_tries_again_and_keeps_created(
    server: S3Server, store: S3Store
) -> None:
    store.set("k", (b"1", {}))
    created = store.get("k").created
    other = server.store(store.prefix)
    other.connect()
    hooked = _hook(store)
    hooked.before("put_object", lambda: other.set("k", (b"theirs", {})))
    store.set("k", (b"mine", {"m": 1}))
    assert hooked.calls.count("put_object") == 2 and "head_object" in hooked.calls
    value = store.get("k")
    assert store.to_bytes("k") == b"mine" and value.created == created
    other.disconnect()


def test_conditional_delete_spares_a_write_made_after_its_check(
    server: S3Server, store: S3Store
) -> None:
    version = store.set("k", (b"1", {}))
    other = server.store(store.prefix)
    other.connect()
    hooked = _hook(store)
    hooked.before("delete_object", lambda: other.set("k", (b"theirs", {})))
    with pytest.raises(ConflictError):
        store.delete("k", if_version=version)
    assert raw_read(server, store, "k") == (b"theirs", {})
    other.disconnect()


def test_eight_threads_creating_one_key_at_the_same_moment(store: S3Store) -> None:
    barrier = threading.Barrier(8)
    hooked = _hook(store)
    hooked.before("put_object", *[barrier.wait] * 8)  # all eight PUTs leave together
    winners: list[int] = []

    def create(number: int) -> None:
        try:
            store.set("race", (str(number).encode(), {"n": number}), if_exists=False)
        except ConflictError:
            return
        winners.append(number)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(winners) == 1
    assert store.get_metadata("race") == {"n": winners[0]}


def test_commit_refuses_a_key_changed_since_the_transaction_read_it(
    server: S3Server, store: S3Store
) -> None:
    store.multiset(["a", "b"], [(b"a0", {}), (b"b0", {})])
    other = server.store(store.prefix)
    other.connect()
    with pytest.raises(ConflictError), store.transaction("both"):
        store.set("a", (store.to_bytes("a") + b"+", {}))
        store.set("b", (store.to_bytes("b") + b"+", {}))
        other.set("b", (b"theirs", {}))
    assert (raw_read(server, store, "a")[0], raw_read(server, store, "b")[0]) == (b"a0", b"theirs")
    other.disconnect()


def test_commit_that_fails_half_way_says_so(server: S3Server, store: S3Store) -> None:
    store.multiset(["a", "b"], [(b"a0", {}), (b"b0", {})])
    other = server.store(store.prefix)
    other.connect()
    hooked = _hook(store)
    # After the commit's check of both keys and its write of "a", another writer
    # changes "b": the write of "b" must fail and the error must say what was written.
    hooked.before("put_object", lambda: None, lambda: other.set("b", (b"theirs", {})))
    with pytest.raises(TransactionError, match=r"written \['a'\], not written \['b'\]"):
        with store.transaction("both"):
            store.set("a", (store.to_bytes("a") + b"+", {}))
            store.set("b", (store.to_bytes("b") + b"+", {}))
    assert raw_read(server, store, "a")[0] == b"a0+"
    assert raw_read(server, store, "b")[0] == b"theirs"  # no lost update
    other.disconnect()


# -- the index and listing costs -------------------------------------------------------------
def _count_requests(store: S3Store) -> list[str]:
    seen: list[str] = []
    store._objects.client.meta.events.register(
        "before-call.s3", lambda model, **_: seen.append(model.name)
    )
    return seen


def test_queries_cost_a_listing_not_a_read_of_every_key(server: S3Server, store: S3Store) -> None:
    count = 150
    for number in range(count):
        raw_write(server, store, f"k{number:05d}", b"", {"n": number % 10, "i": number})
    seen = _count_requests(store)
    assert len(store.query(n=3)) == count // 10  # cold: each key read once
    assert seen.count("HeadObject") == count
    seen.clear()
    assert sorted(store.query_keys(n=7)) == [f"k{i:05d}" for i in range(7, count, 10)]
    assert seen == ["ListObjectsV2"]  # one page of the listing, no read of any key
    raw_write(server, store, "k00003", b"", {"n": 7, "i": 3})  # changed by someone else
    store.delete("k00017")
    seen.clear()
    assert sorted(store.query_keys(n=7)) == sorted(
        [f"k{i:05d}" for i in range(7, count, 10) if i != 17] + ["k00003"]
    )
    assert seen.count("HeadObject") == 1 and seen.count("ListObjectsV2") == 1
    with server.store(store.prefix) as fresh:  # a new object starts from the snapshot
        seen = _count_requests(fresh)
        assert len(fresh.query(n=3)) == count // 10 - 1
        assert seen.count("HeadObject") <= 2 and seen.count("GetObject") == 1


# -- several processes -----------------------------------------------------------------------
def _cas_worker(opener: Callable[[], S3Store], times: int) -> int:
    conflicts = 0
    with opener() as store:
        done = 0
        while done < times:
            value = store.get("counter")
            count = int(value.data.read())
            try:
                store.set("counter", (str(count + 1).encode(), {}), if_version=value.version)
            except ConflictError:
                conflicts += 1
                continue
            done += 1
    return conflicts


def test_compare_and_swap_counter_from_processes(server: S3Server, store: S3Store) -> None:
    store.set("counter", (b"0", {}))
    opener = server.opener(store.prefix)
    with ProcessPoolExecutor(3, mp_context=_CONTEXT) as pool:
        futures = [pool.submit(_cas_worker, opener, 8) for _ in range(3)]
        [future.result(timeout=180) for future in futures]
    assert raw_read(server, store, "counter")[0] == b"24"


def _create_worker(opener: Callable[[], S3Store], number: int, start: float) -> bool:
    with opener() as store:
        time.sleep(max(0.0, start - time.time()))
        try:
            store.set("race", (b"%d" % number, {"n": number}), if_exists=False)
        except ConflictError:
            return False
        return True


def test_one_winner_among_processes_creating_a_key(server: S3Server, store: S3Store) -> None:
    opener = server.opener(store.prefix)
    start = time.time() + 2  # every worker connected by then, so the PUTs leave together
    with ProcessPoolExecutor(4, mp_context=_CONTEXT) as pool:
        futures = [pool.submit(_create_worker, opener, n, start) for n in range(4)]
        won = [future.result(timeout=120) for future in futures]
    assert won.count(True) == 1
    assert store.get_metadata("race") == {"n": won.index(True)}


def _index_worker(opener: Callable[[], S3Store], owner: int) -> None:
    with opener() as store:
        for number in range(12):
            store.set(f"k{owner}-{number:02d}", (b"x", {"owner": owner, "n": number}))
        for number in range(0, 12, 3):
            store.update_metadata(f"k{owner}-{number:02d}", {"third": True})
        for number in range(1, 12, 4):
            store.delete(f"k{owner}-{number:02d}")


def test_index_is_exact_after_writers_in_other_processes(server: S3Server, store: S3Store) -> None:
    store.set("k0-00", (b"old", {"owner": 99}))
    # The same data and metadata a worker writes before it changes only the metadata:
    # only the write tag tells the index that the object changed.
    store.set("k0-03", (b"x", {"owner": 0, "n": 3}))
    assert store.query_keys(owner=99) == ["k0-00"]  # the index is warm and about to be stale
    opener = server.opener(store.prefix)
    with ProcessPoolExecutor(3, mp_context=_CONTEXT) as pool:
        for future in [pool.submit(_index_worker, opener, owner) for owner in range(3)]:
            future.result(timeout=180)
    expected = {
        f"k{owner}-{n:02d}": {"owner": owner, "n": n, **({"third": True} if n % 3 == 0 else {})}
        for owner in range(3)
        for n in range(12)
        if n % 4 != 1
    }
    for key, metadata in expected.items():  # the second path agrees with the model
        assert raw_read(server, store, key)[1] == metadata
    fresh = server.store(store.prefix)
    fresh.connect()
    for reader in (store, fresh):  # the warm index and a new one
        assert dict(reader.query()) == expected
        assert sorted(reader.query_keys(third=True)) == sorted(
            key for key, metadata in expected.items() if "third" in metadata
        )
        assert reader.query_keys(owner=99) == []
    fresh.disconnect()


def _overwriter(opener: Callable[[], S3Store], rounds: int) -> int:
    shapes = [(b"a", 10, 0), (b"b", 300_000, 0), (b"c", 20, 3000), (b"d", 70_000, 2500)]
    with opener() as store:
        for number in range(rounds):
            letter, size, pad = shapes[number % len(shapes)]
            store.set("x", (letter * size, {"letter": letter.decode(), "pad": "p" * pad}))
    return rounds


def test_readers_never_see_torn_values(server: S3Server, store: S3Store) -> None:
    store.set("x", (b"a" * 10, {"letter": "a", "pad": ""}))
    opener = server.opener(store.prefix)
    reads = 0
    with ProcessPoolExecutor(1, mp_context=_CONTEXT) as pool:
        writer = pool.submit(_overwriter, opener, 24)
        while not writer.done() or reads == 0:
            value = store.get("x")
            metadata = value.metadata
            with value.data as stream:
                data = stream.read()
            letter = metadata["letter"].encode()
            assert data and data == letter * len(data), "data and metadata of different writes"
            assert len(data) in (10, 300_000, 20, 70_000)
            reads += 1
        assert writer.result(timeout=120) == 24
    assert reads > 1


def test_streamed_set_holds_one_part_in_memory(store: S3Store) -> None:
    import tracemalloc

    part = store.part_size
    chunk = b"z" * 65536

    def produce() -> Iterator[bytes]:
        for _ in range(part * 6 // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        store.set("big", (produce(), {}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * part + 250_000, peak  # about 3 parts: one piece, its chunks, the request
    assert store.get("big").size == part * 6
    with store.get_data_range("big", part * 6 - 3, None) as stream:
        assert stream.read() == b"zzz"
    with store.get_data_range("big", part * 7, None) as stream:
        assert stream.read() == b""
