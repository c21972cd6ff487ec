"""Hostile probes of DynamicURLStore's optimistic transactions (read checks at commit),
the metadata ETag and ``POST /batch`` check entries, written from the public docs only.

Every test runs against an in-process server over a SqliteStore; the outcome is checked
through the backing store directly (a second path) wherever a write is involved.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storekeeper import SqliteStore, open_store
from storekeeper.backends.http import DynamicURLStore
from storekeeper.errors import ConflictError

pytest.importorskip("starlette")
pytest.importorskip("urllib3")

from storekeeper.server import ServerThread, create_app


class Served:
    def __init__(self, backing: SqliteStore, server: ServerThread) -> None:
        self.backing = backing
        self.server = server
        self.base = server.url + "/store"
        self.hostport = server.url.split("//", 1)[1]

    def client(self) -> DynamicURLStore:
        store = open_store(self.base)
        assert isinstance(store, DynamicURLStore)
        return store

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.hostport, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("hostile3") / "backing.db"
    backing = SqliteStore(str(path))
    backing.connect()
    server = ServerThread(create_app(backing))
    server.start()
    try:
        yield Served(backing, server)
    finally:
        server.stop()
        backing.disconnect()


@pytest.fixture
def ns() -> str:
    return f"h3-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def two(served: Served) -> Iterator[tuple[DynamicURLStore, DynamicURLStore]]:
    a, b = served.client(), served.client()
    try:
        yield a, b
    finally:
        a.disconnect()
        b.disconnect()


def fail() -> None:
    raise RuntimeError("roll this block back")


def commits(store: DynamicURLStore, body: Callable[[], object]) -> bool:
    """Run *body* in a transaction of *store*; True if it committed, False on conflict."""
    try:
        with store.transaction():
            body()
    except ConflictError:
        return False
    return True


# --- lost updates -----------------------------------------------------------------


def increment(store: DynamicURLStore, key: str) -> int:
    """Read-modify-write *key* in a transaction, retrying on ConflictError; the
    number of conflicts met."""
    conflicts = 0
    while True:
        try:
            with store.transaction():
                value = int(store.to_bytes(key))
                store.set(key, (str(value + 1).encode(), {}))
            return conflicts
        except ConflictError:
            conflicts += 1


def test_counter_threads_separate_clients_exact_total(served: Served, ns: str) -> None:
    key = ns + "counter"
    served.backing.set(key, (b"0", {}))
    clients = [served.client() for _ in range(4)]
    barrier = threading.Barrier(4)
    conflicts: list[int] = []

    def work(store: DynamicURLStore) -> None:
        barrier.wait()
        total = 0
        for _ in range(8):
            total += increment(store, key)
        conflicts.append(total)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.disconnect()
    assert served.backing.to_bytes(key) == b"32"
    assert len(conflicts) == 4


def test_counter_threads_one_shared_client_exact_total(served: Served, ns: str) -> None:
    key = ns + "counter"
    served.backing.set(key, (b"0", {}))
    store = served.client()
    threads = [
        threading.Thread(target=lambda: [increment(store, key) for _ in range(8)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    store.disconnect()
    assert served.backing.to_bytes(key) == b"32"


def test_forced_lost_update_is_refused(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key = ns + "k"
    a.set(key, (b"1", {}))

    def body() -> None:
        value = a.to_bytes(key)
        b.set(key, (b"100", {}))  # another client's update between read and commit
        a.set(key, (value + b"+1", {}))

    assert not commits(a, body)
    assert served.backing.to_bytes(key) == b"100"


CHILD = r"""
import sys
from storekeeper import open_store
from storekeeper.errors import ConflictError
url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(url)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for _ in range(n):
    while True:
        try:
            with store.transaction():
                v = int(store.to_bytes(key))
                store.set(key, (str(v + 1).encode(), {}))
            break
        except ConflictError:
            pass
store.disconnect()
"""


def test_counter_processes_exact_total(served: Served, ns: str) -> None:
    key = ns + "counter"
    served.backing.set(key, (b"0", {}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, served.base, key, "10"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline() == b"ready\n"
    for p in procs:  # start them together
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(30) == 0
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
        p.stdout.close()
    assert served.backing.to_bytes(key) == b"30"
    with served.client() as fresh:
        assert fresh.to_bytes(key) == b"30"


# --- write skew -------------------------------------------------------------------


def test_write_skew_at_most_one_commits(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    x, y = ns + "x", ns + "y"
    a.set(x, (b"on", {}))
    a.set(y, (b"on", {}))
    outcome = {}
    try:
        with a.transaction():
            assert a.to_bytes(x) == b"on" and a.to_bytes(y) == b"on"
            with b.transaction():  # another client, same reads, commits first
                assert b.to_bytes(x) == b"on" and b.to_bytes(y) == b"on"
                b.set(y, (b"off", {}))
            outcome["b"] = True
            a.set(x, (b"off", {}))
        outcome["a"] = True
    except ConflictError:
        outcome["a"] = False
    assert outcome == {"b": True, "a": False}
    assert served.backing.to_bytes(x) == b"on"
    assert served.backing.to_bytes(y) == b"off"


def test_write_skew_threads_barrier(served: Served, ns: str) -> None:
    x, y = ns + "x", ns + "y"
    served.backing.set(x, (b"on", {}))
    served.backing.set(y, (b"on", {}))
    barrier = threading.Barrier(2)
    results: dict[str, bool] = {}

    def doctor(name: str, mine: str) -> None:
        store = served.client()
        try:
            with store.transaction():
                on = [store.to_bytes(x), store.to_bytes(y)].count(b"on")
                barrier.wait(10)  # both have read both keys before either commits
                if on == 2:
                    store.set(mine, (b"off", {}))
            results[name] = True
        except ConflictError:
            results[name] = False
        finally:
            store.disconnect()

    threads = [
        threading.Thread(target=doctor, args=("a", x)),
        threading.Thread(target=doctor, args=("b", y)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results.values()) == [False, True]
    assert [served.backing.to_bytes(x), served.backing.to_bytes(y)].count(b"on") == 1


def test_write_skew_asyncio_tasks(served: Served, ns: str) -> None:
    x, y = ns + "x", ns + "y"
    served.backing.set(x, (b"on", {}))
    served.backing.set(y, (b"on", {}))
    a, b = served.client(), served.client()

    async def doctor(
        store: DynamicURLStore, mine: str, read: asyncio.Event, other: asyncio.Event
    ) -> bool:
        try:
            with store.transaction():
                store.to_bytes(x)
                store.to_bytes(y)
                read.set()
                await other.wait()
                store.set(mine, (b"off", {}))
            return True
        except ConflictError:
            return False

    async def main() -> list[bool]:
        ea, eb = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(doctor(a, x, ea, eb), doctor(b, y, eb, ea)))

    try:
        results = asyncio.run(main())
    finally:
        a.disconnect()
        b.disconnect()
    assert sorted(results) == [False, True]


# --- each read path, present and missing ------------------------------------------


def read_through(store: DynamicURLStore, path: str, key: str, tmp: Path) -> None:
    try:
        if path == "get":
            store.get(key)
        elif path == "get_data":
            store.get_data(key).close()
        elif path == "to_bytes":
            store.to_bytes(key)
        elif path == "get_metadata":
            store.get_metadata(key)
        elif path == "get_metadata_select":
            store.get_metadata(key, select=["n"])
        elif path == "get_metadata_select_absent_field":
            store.get_metadata(key, select=["no such field"])
        elif path == "exists":
            store.exists(key)
        elif path == "version_of":
            store.version_of(key)
        elif path == "get_data_range":
            store.get_data_range(key, 0, 1).close()
        elif path == "multiget":
            store.multiget([key])
        elif path == "multiget_metadata":
            store.multiget_metadata([key])
        elif path == "to_file":
            store.to_file(key, tmp / "out")
        elif path == "mapping":
            store.as_mapping()[key]
        else:
            raise AssertionError(path)
    except KeyError:
        pass


READ_PATHS = [
    "get",
    "get_data",
    "to_bytes",
    "get_metadata",
    "get_metadata_select",
    "get_metadata_select_absent_field",
    "exists",
    "version_of",
    "get_data_range",
    "multiget",
    "multiget_metadata",
    "to_file",
    "mapping",
]


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_present_key_then_changed_fails_commit(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str, path: str, tmp_path: Path
) -> None:
    a, b = two
    key, out = ns + "read", ns + "out"
    a.set(key, (b"v1", {"n": 1}))

    def body() -> None:
        read_through(a, path, key, tmp_path)
        b.set(key, (b"v2", {"n": 1}))
        a.set(out, (b"written", {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)
    # and unchanged, the same transaction commits
    assert commits(a, lambda: (read_through(a, path, key, tmp_path), a.set(out, (b"w", {}))))
    assert served.backing.to_bytes(out) == b"w"


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_missing_key_then_created_fails_commit(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str, path: str, tmp_path: Path
) -> None:
    a, b = two
    key, out = ns + "missing", ns + "out"

    def body() -> None:
        read_through(a, path, key, tmp_path)
        b.set(key, (b"created", {}))
        a.set(out, (b"written", {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)


def test_read_missing_created_then_deleted_still_missing_commits(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    # "still missing" is what the README asks for: a create+delete in between is fine
    a, b = two
    key, out = ns + "missing", ns + "out"

    def body() -> None:
        assert not a.exists(key)
        b.set(key, (b"x", {}))
        b.delete(key)
        a.set(out, (b"w", {}))

    assert commits(a, body)
    assert served.backing.to_bytes(out) == b"w"


def test_key_read_deleted_by_other_client(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {}))

    def body() -> None:
        a.get(key)
        b.delete(key)
        a.set(out, (b"w", {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)
    assert not served.backing.exists(key)


@pytest.mark.parametrize("op", ["set", "set_data", "set_metadata", "update_metadata", "delete"])
def test_read_then_write_same_key_conflicts(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str, op: str
) -> None:
    a, b = two
    key = ns + "k"
    a.set(key, (b"1", {"n": 1}))

    def body() -> None:
        a.get_metadata(key)
        b.set(key, (b"other", {"n": 2}))
        if op == "set":
            a.set(key, (b"mine", {}))
        elif op == "set_data":
            a.set_data(key, b"mine")
        elif op == "set_metadata":
            a.set_metadata(key, {"mine": True})
        elif op == "update_metadata":
            a.update_metadata(key, {"mine": True})
        else:
            a.delete(key)

    assert not commits(a, body)
    assert served.backing.to_bytes(key) == b"other"
    assert served.backing.get_metadata(key) == {"n": 2}


def test_read_missing_then_create_conflicts_with_other_creator(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key = ns + "lock"

    def body() -> None:
        if not a.exists(key):
            b.set(key, (b"b", {}))
            a.set(key, (b"a", {}))

    assert not commits(a, body)
    assert served.backing.to_bytes(key) == b"b"


# --- ABA --------------------------------------------------------------------------


def test_aba_change_and_change_back_conflicts(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    # Value.version "changes on every write of the key": same bytes again is a new version
    a, b = two
    key, out = ns + "aba", ns + "out"
    a.set(key, (b"A", {"m": 1}))
    before = served.backing.get(key).version

    def body() -> None:
        a.get(key)
        b.set(key, (b"B", {"m": 1}))
        b.set(key, (b"A", {"m": 1}))
        a.set(out, (b"w", {}))

    assert not commits(a, body)
    assert served.backing.get(key).version != before
    assert not served.backing.exists(out)


def test_aba_delete_and_recreate_conflicts(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "aba", ns + "out"
    a.set(key, (b"A", {}))

    def body() -> None:
        a.version_of(key)
        b.delete(key)
        b.set(key, (b"A", {}))
        a.set(out, (b"w", {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)


# --- nested transactions ----------------------------------------------------------


def test_read_in_rolled_back_nested_block_still_checked(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {}))
    seen: list[bytes] = []

    def body() -> None:
        try:
            with a.transaction():
                seen.append(a.to_bytes(key))  # the outer block goes on using it
                fail()
        except RuntimeError:
            pass
        b.set(key, (b"2", {}))
        a.set(out, (seen[0], {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)


def test_rolled_back_nested_write_not_applied_outer_applied(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, _ = two
    inner, outer = ns + "inner", ns + "outer"

    def body() -> None:
        a.set(outer, (b"o", {}))
        try:
            with a.transaction():
                a.set(inner, (b"i", {}))
                a.set(outer, (b"changed", {}))
                assert a.to_bytes(inner) == b"i"
                fail()
        except RuntimeError:
            pass
        assert not a.exists(inner)
        assert a.to_bytes(outer) == b"o"

    assert commits(a, body)
    assert not served.backing.exists(inner)
    assert served.backing.to_bytes(outer) == b"o"


# --- ownership: other threads / tasks do not add to the check set -------------------


def test_other_thread_reads_do_not_join_check_set(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {}))

    def body() -> None:
        t = threading.Thread(target=lambda: a.get(key))  # same store object, other thread
        t.start()
        t.join(10)
        b.set(key, (b"2", {}))
        a.set(out, (b"w", {}))

    assert commits(a, body)
    assert served.backing.to_bytes(out) == b"w"


def test_child_task_reads_do_not_join_check_set(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {}))

    async def main() -> None:
        async def reader() -> None:
            a.get(key)

        with a.transaction():
            await asyncio.create_task(reader())  # not part of the transaction
            b.set(key, (b"2", {}))
            a.set(out, (b"w", {}))

    asyncio.run(main())
    assert served.backing.to_bytes(out) == b"w"


def test_other_thread_sees_only_committed_data(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, _ = two
    key = ns + "k"
    a.set(key, (b"old", {}))
    seen: list[bytes] = []
    with a.transaction():
        a.set(key, (b"new", {}))
        t = threading.Thread(target=lambda: seen.append(a.to_bytes(key)))
        t.start()
        t.join(10)
        assert a.to_bytes(key) == b"new"
    assert seen == [b"old"]
    assert served.backing.to_bytes(key) == b"new"


# --- what the transaction reads of its own writes ---------------------------------


def test_transaction_reads_its_own_writes(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, _ = two
    key = ns + "k"
    a.set(key, (b"server", {"s": 1}))
    with a.transaction():
        a.set(key, (b"mine", {"a": 1, "b": 2}))
        assert a.to_bytes(key) == b"mine"
        assert a.get_metadata(key, select=["a"]) == {"a": 1}
        assert a.exists(key)
        a.set_metadata(key, {"c": 3})
        assert a.get(key).metadata == {"c": 3}
        assert a.to_bytes(key) == b"mine"
        a.update_metadata(key, {"d": 4})
        assert a.get_metadata(key) == {"c": 3, "d": 4}
        a.delete(key)
        assert not a.exists(key)
        with pytest.raises(KeyError):
            a.get(key)
        assert served.backing.to_bytes(key) == b"server"  # nothing applied yet
        a.set(key, (b"again", {}))
    assert served.backing.to_bytes(key) == b"again"
    assert served.backing.get_metadata(key) == {}


def test_blind_write_then_read_own_write_commits_over_other_change(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    # reading one's own overlay is not a read of the server: nothing to check
    a, b = two
    key = ns + "k"
    a.set(key, (b"1", {}))

    def body() -> None:
        a.set(key, (b"mine", {}))
        assert a.to_bytes(key) == b"mine"
        b.set(key, (b"theirs", {}))

    assert commits(a, body)
    assert served.backing.to_bytes(key) == b"mine"


def test_conditional_write_inside_transaction_with_returned_version(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    # set() returns None inside a transaction (the server gives the version at the
    # commit), so generic code that chains it as if_version writes unconditionally;
    # a precondition naming a version of a key the transaction wrote fails cleanly.
    a, _ = two
    key = ns + "k"
    before = a.set(key, (b"0", {}))
    with a.transaction():
        version = a.set(key, (b"1", {}))
        assert version is None
        a.set(key, (b"2", {}), if_version=version)
        a.set(key, (b"3", {}), if_version=a.get(key).version)
        a.set_data(key, b"4", if_exists=True)
        for stale in (before, "made-up"):
            with pytest.raises(ConflictError) as caught:
                a.set(key, (b"x", {}), if_version=stale)
            assert "\x00" not in str(caught.value)
            assert "commit" in str(caught.value)
        with pytest.raises(ConflictError) as caught:
            a.set_metadata(key, {}, if_exists=False)
        assert "\x00" not in str(caught.value)
        assert a.to_bytes(key) == b"4"
    assert served.backing.to_bytes(key) == b"4"


def test_version_of_own_write_inside_transaction(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, _ = two
    key = ns + "k"
    with a.transaction():
        returned = a.set(key, (b"1", {}))
        assert a.version_of(key) == returned == a.get(key).version
    assert a.version_of(key) == a.get(key).version == served.backing.get(key).version


def test_version_returned_in_transaction_usable_after_commit(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    # after the commit the reads give the server's version, which pins writes of any
    # client, and a stale one is refused
    a, b = two
    key = ns + "k"
    with a.transaction():
        a.set(key, (b"1", {}))
    version = a.version_of(key)
    assert version is not None and version == served.backing.get(key).version
    b.set(key, (b"other", {}), if_version=version)
    with pytest.raises(ConflictError):
        a.set(key, (b"2", {}), if_version=version)
    assert served.backing.to_bytes(key) == b"other"


# --- read-only transactions -------------------------------------------------------


def test_read_only_transaction_with_read_skew_fails(
    two: tuple[DynamicURLStore, DynamicURLStore], ns: str
) -> None:
    a, b = two
    x, y = ns + "x", ns + "y"
    a.set(x, (b"100", {}))
    a.set(y, (b"0", {}))

    def body() -> None:
        seen_x = int(a.to_bytes(x))
        with b.transaction():  # transfer 50 from x to y, atomically
            b.set(x, (b"50", {}))
            b.set(y, (b"50", {}))
        seen_y = int(a.to_bytes(y))
        assert seen_x + seen_y == 150  # an inconsistent view was read

    assert not commits(a, body)


# --- hostile keys in checks -------------------------------------------------------

HOSTILE = [
    "ünï/çødé ñ",
    "a/b/c",
    "a+b",
    "100%",
    "%2F",
    "with space ",
    "a/../b",
    "tab\there",
    "line\nbreak",
    "q?x#y&z=1",
    "\u202eevil",
    "😀/🙃",
    "L" * 3000,
]


@pytest.mark.parametrize("suffix", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_keys_in_checks(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str, suffix: str
) -> None:
    a, b = two
    key, out = ns + suffix, ns + "out"
    a.set(key, (b"1", {}))
    # unchanged: the check passes
    assert commits(a, lambda: (a.get(key), a.set(out, (b"1", {}))))
    # changed: the check fails
    assert not commits(a, lambda: (a.get(key), b.set(key, (b"2", {})), a.set(out, (b"2", {}))))
    assert served.backing.to_bytes(out) == b"1"
    # missing and still missing
    served.backing.delete(key)
    assert commits(a, lambda: (a.exists(key), a.set(out, (b"3", {}))))
    assert not commits(a, lambda: (a.exists(key), b.set(key, (b"x", {})), a.set(out, (b"4", {}))))
    assert served.backing.to_bytes(out) == b"3"
    assert served.backing.to_bytes(key) == b"x"


# --- /batch with plain http.client ------------------------------------------------


def line(entry: object) -> bytes:
    return (json.dumps(entry) + "\n").encode()


def test_info_reports_batch_checks(served: Served) -> None:
    status, _, body = served.request("GET", "/info")
    assert status == 200
    info = json.loads(body)
    assert info["batch"] is True and info["batch_checks"] is True


def test_batch_passing_checks_apply(served: Served, ns: str) -> None:
    key, missing, out = ns + "k", ns + "missing", ns + "out"
    version = served.backing.set(key, (b"1", {}))
    assert version is not None
    body = b"".join(
        [
            line({"op": "check", "key": key, "if_version": version}),
            line({"op": "check", "key": missing, "if_exists": False}),
            line({"op": "set", "key": out, "metadata": {"m": 1}, "size": 3}),
            b"abc",
        ]
    )
    status, _, answer = served.request("POST", "/batch", body)
    assert status == 200
    versions = json.loads(answer)
    assert versions[:2] == [None, None]
    assert versions[2] == served.backing.get(out).version
    assert served.backing.to_bytes(out) == b"abc"


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("failing", ["stale_version", "exists", "deleted"])
def test_batch_failed_check_412_applies_nothing(
    served: Served, ns: str, where: str, failing: str
) -> None:
    key, out, gone = ns + "k", ns + "out", ns + "gone"
    old = served.backing.set(key, (b"1", {}))
    served.backing.set(gone, (b"g", {}))
    served.backing.set(key, (b"2", {}))
    if failing == "stale_version":
        check = {"op": "check", "key": key, "if_version": old}
    elif failing == "exists":
        check = {"op": "check", "key": key, "if_exists": False}
    else:
        check = {"op": "check", "key": ns + "never", "if_version": old}
    writes = [
        line({"op": "set", "key": out, "metadata": {}, "size": 2}),
        b"hi",
        line({"op": "delete", "key": gone}),
    ]
    parts = [line(check), *writes] if where == "before" else [*writes, line(check)]
    status, _, answer = served.request("POST", "/batch", b"".join(parts))
    assert status == 412, answer
    assert json.loads(answer)["error"] == "ConflictError"
    assert not served.backing.exists(out)
    assert served.backing.to_bytes(gone) == b"g"
    assert served.backing.to_bytes(key) == b"2"


MALFORMED: dict[str, object] = {
    "no_condition": {"op": "check", "key": "K"},
    "version_null": {"op": "check", "key": "K", "if_version": None},
    "version_int": {"op": "check", "key": "K", "if_version": 7},
    "version_list": {"op": "check", "key": "K", "if_version": ["v"]},
    "if_exists_string": {"op": "check", "key": "K", "if_exists": "false"},
    "if_exists_null": {"op": "check", "key": "K", "if_exists": None},
    "no_key": {"op": "check", "if_version": "1"},
    "key_int": {"op": "check", "key": 5, "if_version": "1"},
    "key_empty": {"op": "check", "key": "", "if_version": "1"},
    "not_object": ["check", "K", "1"],
    "op_typo": {"op": "chek", "key": "K", "if_version": "1"},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_batch_malformed_check_400_applies_nothing(served: Served, ns: str, name: str) -> None:
    key, out = ns + "k", ns + "out"
    version = served.backing.set(key, (b"1", {}))
    entry = json.loads(json.dumps(MALFORMED[name]).replace('"K"', json.dumps(key)))
    body = b"".join(
        [line({"op": "set", "key": out, "metadata": {}, "size": 2}), b"hi", line(entry)]
    )
    status, _, answer = served.request("POST", "/batch", body)
    assert status == 400, answer
    assert "error" in json.loads(answer)
    assert not served.backing.exists(out)
    assert served.backing.get(key).version == version


def test_batch_truncated_after_check_applies_nothing(served: Served, ns: str) -> None:
    key, out = ns + "k", ns + "out"
    version = served.backing.set(key, (b"1", {}))
    body = b"".join(
        [
            line({"op": "check", "key": key, "if_version": version}),
            line({"op": "set", "key": out, "metadata": {}, "size": 10}),
            b"short",
        ]
    )
    status, _, _ = served.request("POST", "/batch", body)
    assert status == 400
    assert not served.backing.exists(out)


def test_batch_check_with_data_is_malformed(served: Served, ns: str) -> None:
    key, out = ns + "k", ns + "out"
    version = served.backing.set(key, (b"1", {}))
    body = b"".join(
        [
            line({"op": "check", "key": key, "if_version": version, "size": 2}),
            b"xx",
            line({"op": "set", "key": out, "metadata": {}, "size": 2}),
            b"hi",
        ]
    )
    status, _, _ = served.request("POST", "/batch", body)
    assert status == 400
    assert not served.backing.exists(out)


# --- metadata ETag ----------------------------------------------------------------


def path_of(key: str) -> str:
    from storekeeper.backends.http_protocol import quote_key

    return "/store/" + quote_key(key)


@pytest.mark.parametrize("suffix", ["plain", "ü/x y+z%"])
def test_metadata_etag_equals_data_etag_and_conditionals(
    served: Served, ns: str, suffix: str
) -> None:
    key = ns + suffix
    served.backing.set(key, (b"data", {"a": 1}))
    base = path_of(key)
    status, head, _ = served.request("HEAD", base + "/data")
    assert status == 200
    data_tag = head["etag"]
    status, meta_headers, body = served.request("GET", base + "/metadata")
    assert status == 200 and json.loads(body) == {"a": 1}
    assert meta_headers["etag"] == data_tag
    assert data_tag.strip('"') == served.backing.get(key).version

    status, _, body = served.request("GET", base + "/metadata", headers={"If-None-Match": data_tag})
    assert status == 304 and body == b""
    status, _, _ = served.request(
        "GET", base + "/metadata", headers={"If-None-Match": "W/" + data_tag}
    )
    assert status == 304  # weak comparison for If-None-Match
    status, _, _ = served.request("GET", base + "/metadata", headers={"If-Match": "W/" + data_tag})
    assert status == 412  # strong comparison for If-Match
    status, _, body = served.request("GET", base + "/metadata", headers={"If-Match": data_tag})
    assert status == 200 and json.loads(body) == {"a": 1}

    served.backing.update_metadata(key, {"b": 2})  # a metadata write changes the tag
    status, headers2, body = served.request(
        "GET", base + "/metadata", headers={"If-None-Match": data_tag}
    )
    assert status == 200 and json.loads(body) == {"a": 1, "b": 2}
    assert headers2["etag"] != data_tag
    status, _, _ = served.request("GET", base + "/metadata", headers={"If-Match": data_tag})
    assert status == 412
    status, head2, _ = served.request("HEAD", base + "/data")
    assert head2["etag"] == headers2["etag"]


def test_metadata_of_missing_key_404(served: Served, ns: str) -> None:
    status, _, _ = served.request("GET", path_of(ns + "nope") + "/metadata")
    assert status == 404
    status, _, _ = served.request(
        "GET", path_of(ns + "nope") + "/metadata", headers={"If-None-Match": "*"}
    )
    assert status == 404


# --- encore-compatible paths unchanged --------------------------------------------


def test_head_data_encore_compatible(served: Served, ns: str) -> None:
    key = ns + "enc/ore key"
    served.backing.set(key, (b"12345", {"x": 1}))
    status, headers, body = served.request("HEAD", path_of(key) + "/data")
    assert status == 200 and body == b""
    assert headers["content-length"] == "5"
    assert email.utils.parsedate_to_datetime(headers["last-modified"]) is not None
    assert headers["last-modified"].endswith("GMT")
    status, headers, body = served.request("GET", path_of(key) + "/data")
    assert status == 200 and body == b"12345"
    assert headers["content-length"] == "5"
    assert "chunked" not in headers.get("transfer-encoding", "")
    status, _, _ = served.request("HEAD", path_of(ns + "missing") + "/data")
    assert status == 404
    status, _, body = served.request("GET", path_of(key) + "/metadata")
    assert json.loads(body) == {"x": 1}


def test_fresh_client_sees_committed_transaction(served: Served, ns: str) -> None:
    keys = [ns + "a", ns + "b"]
    with served.client() as a:
        with a.transaction():
            for k in keys:
                a.set(k, (k.encode(), {"k": k}))
    with served.client() as fresh:
        assert [fresh.to_bytes(k) for k in keys] == [k.encode() for k in keys]
        assert fresh.query_keys(k=keys[0]) == [keys[0]]


def test_version_returned_in_transaction_is_the_committed_version(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key = ns + "k"
    with a.transaction():
        version = a.set(key, (b"1", {}))
    committed = served.backing.get(key).version
    assert version in (None, committed)  # None: what DynamicURLStore.set's docstring promises
    assert a.get(key).version == a.version_of(key) == committed
    b.set(key, (b"2", {}), if_version=committed)
    assert served.backing.to_bytes(key) == b"2"


# --- more read-set attacks --------------------------------------------------------


def test_reread_after_other_change_still_conflicts(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    # the first version read counts: a re-read at the new version does not launder it
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {}))

    def body() -> None:
        first = a.to_bytes(key)
        b.set(key, (b"2", {}))
        second = a.to_bytes(key)
        a.set(out, (first + second, {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)

    def missing_then_present() -> None:
        assert not a.exists(ns + "m")
        b.set(ns + "m", (b"x", {}))
        assert a.exists(ns + "m")
        a.set(out, (b"w", {}))

    assert not commits(a, missing_then_present)
    assert not served.backing.exists(out)


def test_check_set_does_not_outlive_its_transaction(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {}))
    with pytest.raises(RuntimeError), a.transaction():
        a.get(key)
        fail()
    b.set(key, (b"2", {}))
    assert commits(a, lambda: a.set(out, (b"after rollback", {})))
    assert not commits(a, lambda: (a.get(key), b.set(key, (b"3", {})), a.set(out, (b"x", {}))))
    b.set(key, (b"4", {}))
    assert commits(a, lambda: a.set(out, (b"after conflict", {})))
    assert served.backing.to_bytes(out) == b"after conflict"


def test_metadata_only_change_by_other_client_conflicts(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "k", ns + "out"
    a.set(key, (b"1", {"m": 1}))

    def body() -> None:
        a.to_bytes(key)  # read the data only
        b.update_metadata(key, {"m": 2})
        a.set(out, (b"w", {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)


@pytest.mark.parametrize("mine", ["update_metadata", "set_data", "set_metadata"])
def test_partial_write_never_loses_other_clients_change(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str, mine: str
) -> None:
    a, b = two
    key = ns + "k"
    a.set(key, (b"orig", {"x": 1}))

    def body() -> None:
        if mine == "update_metadata":
            a.update_metadata(key, {"mine": 1})
            b.update_metadata(key, {"theirs": 1})
        elif mine == "set_data":
            a.set_data(key, b"mine")
            b.set_metadata(key, {"theirs": 1})
        else:
            a.set_metadata(key, {"mine": 1})
            b.set_data(key, b"theirs")

    committed = commits(a, body)
    data, metadata = served.backing.to_bytes(key), served.backing.get_metadata(key)
    if mine == "update_metadata":
        assert metadata.get("theirs") == 1
        assert metadata.get("mine") == (1 if committed else None)
    elif mine == "set_data":
        assert metadata == {"theirs": 1}
        assert data == (b"mine" if committed else b"orig")
    else:
        assert data == b"theirs"
        assert metadata == ({"mine": 1} if committed else {"x": 1})


def test_failed_commit_emits_no_modification_events(served: Served, ns: str) -> None:
    from storekeeper import EventManager
    from storekeeper.store import StoreModificationEvent, StoreTransactionEndEvent

    events = EventManager()
    got: list[object] = []
    events.connect(StoreModificationEvent, lambda e: got.append(("mod", e.key)), priority=10)
    events.connect(StoreTransactionEndEvent, lambda e: got.append(("end", e.state)), priority=10)
    a = DynamicURLStore(served.base, event_manager=events)
    a.connect()
    b = served.client()
    key, out = ns + "k", ns + "out"
    try:
        a.set(key, (b"1", {}))
        got.clear()
        assert not commits(a, lambda: (a.get(key), b.set(key, (b"2", {})), a.set(out, (b"x", {}))))
        assert got == [("end", "failed")]
    finally:
        a.disconnect()
        b.disconnect()


def test_sibling_task_same_thread_reads_committed_and_cannot_write(served: Served, ns: str) -> None:
    from storekeeper.errors import TransactionError

    a = served.client()
    b = served.client()
    key, other = ns + "k", ns + "s"
    a.set(other, (b"1", {}))
    seen: list[object] = []

    async def main() -> None:
        opened, done = asyncio.Event(), asyncio.Event()

        async def txn() -> None:
            with a.transaction():
                a.set(key, (b"in tx", {}))
                opened.set()
                await done.wait()
                b.set(other, (b"2", {}))  # changes what the sibling task read

        async def sibling() -> None:
            await opened.wait()
            seen.append(a.exists(key))
            seen.append(a.to_bytes(other))
            with pytest.raises(TransactionError):
                a.set(ns + "u", (b"1", {}))
            done.set()

        await asyncio.gather(txn(), sibling())

    try:
        asyncio.run(main())  # commits: the sibling's read is not in the check set
    finally:
        a.disconnect()
        b.disconnect()
    assert seen == [False, b"1"]
    assert served.backing.to_bytes(key) == b"in tx"
    assert not served.backing.exists(ns + "u")


# --- more metadata ETag -------------------------------------------------------------


def test_metadata_if_none_match_star_and_lists(served: Served, ns: str) -> None:
    key = ns + "k"
    version = served.backing.set(key, (b"1", {"a": 1}))
    tag = f'"{version}"'
    path = path_of(key) + "/metadata"
    status, headers, _ = served.request("GET", path, headers={"If-None-Match": "*"})
    assert status == 304 and headers["etag"] == tag
    status, _, _ = served.request("GET", path, headers={"If-None-Match": f'"other", {tag}'})
    assert status == 304
    status, _, body = served.request("GET", path, headers={"If-Match": f'"other", {tag}'})
    assert status == 200 and json.loads(body) == {"a": 1}
    status, _, _ = served.request("GET", path, headers={"If-Match": '"other"'})
    assert status == 412


def test_head_metadata_like_get(served: Served, ns: str) -> None:
    key = ns + "k"
    version = served.backing.set(key, (b"1", {"a": 1}))
    status, headers, body = served.request("HEAD", path_of(key) + "/metadata")
    assert status == 200 and body == b""
    assert headers["etag"] == f'"{version}"'
    status, _, _ = served.request("HEAD", path_of(ns + "missing") + "/metadata")
    assert status == 404


# --- size ---------------------------------------------------------------------------


def test_many_reads_one_changed_fails_whole_commit(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    keys = [f"{ns}many/{i:03d}" for i in range(150)]
    with a.transaction():
        for k in keys:
            a.set(k, (b"0", {}))
    outs = [f"{ns}outs/{i}" for i in range(5)]

    def body() -> None:
        for i, k in enumerate(keys):
            a.get_metadata(k)
            if i == 120:
                b.set(k, (b"changed", {}))
        for o in outs:
            a.set(o, (b"x" * 1000, {}))

    assert not commits(a, body)
    assert not any(served.backing.exists(o) for o in outs)
    assert commits(a, lambda: ([a.exists(k) for k in keys], [a.set(o, (b"y", {})) for o in outs]))
    assert all(served.backing.to_bytes(o) == b"y" for o in outs)


def test_large_value_read_is_checked(
    two: tuple[DynamicURLStore, DynamicURLStore], served: Served, ns: str
) -> None:
    a, b = two
    key, out = ns + "big", ns + "out"
    a.set(key, (b"x" * (3 << 20), {}))  # beyond the inline limit: a temporary file

    def body() -> None:
        value = a.get(key)
        with value.data as stream:
            assert stream.read(1) == b"x"
        b.set(key, (b"small", {}))
        a.set(out, (b"y" * (2 << 20), {}))

    assert not commits(a, body)
    assert not served.backing.exists(out)


# --- checks under authentication: no oracle for hidden keys ---------------------------


def test_batch_checks_do_not_reveal_hidden_keys(tmp_path: Path) -> None:
    import base64

    from storekeeper.composite import SimpleAuthStore, make_encoder

    shared = SqliteStore(str(tmp_path / "auth.db"))
    shared.connect()
    auth = SimpleAuthStore(shared, make_encoder(b"hostile3 secret"))
    auth.add_user("alice", "pw-alice")
    auth.add_user("bob", "pw-bob")
    with ServerThread(create_app(shared, auth=auth)) as server:
        bob = DynamicURLStore(server.url + "/store")
        bob.connect({"username": "bob", "password": "pw-bob"})
        bob.set("bob/secret", (b"s", {}))
        version = shared.get("bob/secret").version
        assert version is not None
        bob.disconnect()
        hostport = server.url.split("//", 1)[1]
        basic = "Basic " + base64.b64encode(b"alice:pw-alice").decode()

        def batch(entry: dict[str, object]) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(hostport, timeout=10)
            try:
                conn.request("POST", "/batch", body=line(entry), headers={"Authorization": basic})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        hidden = batch({"op": "check", "key": "bob/secret", "if_exists": False})
        absent = batch({"op": "check", "key": "bob/nothing", "if_exists": False})
        assert hidden[0] == absent[0] == 200
        status, body = batch({"op": "check", "key": "bob/secret", "if_version": "1"})
        assert status == 412 and version.encode() not in body
        status, _ = batch({"op": "check", "key": "bob/secret", "if_version": version})
        assert status == 412  # alice cannot confirm a guessed version either

        alice = DynamicURLStore(server.url + "/store")
        alice.connect({"username": "alice", "password": "pw-alice"})
        try:
            with alice.transaction():
                assert not alice.exists("bob/secret")
                alice.set("alice/out", (b"x", {}))
        finally:
            alice.disconnect()
    assert shared.to_bytes("alice/out") == b"x"
    shared.disconnect()
