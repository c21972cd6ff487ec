"""Hostile tests of ``list_info``, ``storekeeper.store.transfer`` and ``storekeeper sync/cp/ls``.

Written from the README, the docstrings and the issue text only (no implementation read).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import open_store
from storekeeper.composite import (
    CachedStore,
    JoinedStore,
    MountedStore,
    SimpleAuthStore,
    make_encoder,
)
from storekeeper.errors import InvalidArgumentError, InvalidKeyError
from storekeeper.store import AbstractStore, KeyInfo
from storekeeper.store.transfer import Folder, transfer

PG = "postgresql://postgres@127.0.0.1:5432/test?table="
REDIS = "redis://127.0.0.1:6379/0?prefix="

# Keys that sort around each other and around a prefix's last character.
ODD_KEYS = [
    "a",
    "a b",
    "a-b",
    "a.b",
    "a/b",
    "a/b-c",
    "a/bc",
    "a/\U0010ffff",
    "a0",
    "aé",
    "a\U0010ffff",
    "a\t",
    "a\x7f",
    "A",
    "B/x",
    "b",
    "é/x",
    "a" * 300,
    "\U0010ffff",
]
PREFIXES = ["", "a", "a/", "a/b", "a.", "A", "é", "a\U0010ffff", "\U0010ffff", "zz"]


def _url(kind: str, tmp_path: Path, name: str = "") -> str:
    # a stable table/prefix per test (emptied afterwards), so runs leave no new tables behind
    tag = (
        "hc2_" + hashlib.sha1(name.encode()).hexdigest()[:10]
        if name
        else "hc2_" + uuid.uuid4().hex[:10]
    )
    return {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/s.db",
        "file": f"file://{tmp_path}/fs?create=true",
        "postgres": PG + tag,
        "redis": REDIS + tag,
    }[kind]


def _clear(store: AbstractStore) -> None:
    for key in list(store.list_keys()):
        store.delete(key)


@pytest.fixture(params=["memory", "sqlite", "file", "postgres", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = _url(request.param, tmp_path, request.node.nodeid)
    with open_store(url) as s:
        _clear(s)  # left over by a run that was killed
    yield url
    if request.param in ("postgres", "redis"):
        with open_store(url) as s:
            _clear(s)


def _fresh(url: str, first: AbstractStore) -> AbstractStore:
    """A second store object over the same storage (the same object for memory://)."""
    return first if url == "memory://" else open_store(url)


# ---------------------------------------------------------------------------------------
# list_info on the backends
# ---------------------------------------------------------------------------------------


def test_list_info_same_keys_and_order_as_list_keys_odd_keys(store_url: str) -> None:
    store = open_store(store_url)
    for key in ODD_KEYS:
        store.set(key, (key.encode(), {"k": key[:3]}))
    other = _fresh(store_url, store)
    for prefix in PREFIXES:
        expected = sorted(k for k in ODD_KEYS if k.startswith(prefix))
        assert list(store.list_keys(prefix)) == expected, prefix
        assert [k for k, _ in store.list_info(prefix)] == expected, prefix
        assert [k for k, _ in other.list_info(prefix, metadata=True)] == expected, prefix


def test_list_info_details_equal_get_through_fresh_store(store_url: str) -> None:
    store = open_store(store_url)
    store.set("big", (iter([b"x" * (1 << 20), b"y" * (1 << 20), b"zzz"]), {"b": 1}))
    store.set("empty", (b"", {}))
    store.set("re", (b"1", {"old": 1}))
    store.set("re", (b"123", {"z": None, "l": [1, "é"]}))
    store.set("meta", (b"12345", {"a": 1}))
    store.update_metadata("meta", {"a": 2})
    other = _fresh(store_url, store)
    plain = dict(other.list_info(""))
    detailed = dict(other.list_info("", metadata=True))
    assert list(plain) == ["big", "empty", "meta", "re"]
    for key, plain_info in plain.items():
        value = store.get(key)
        for info in (plain_info, detailed[key]):
            assert isinstance(info, KeyInfo)
            assert info.size == value.size == len(store.to_bytes(key))
            assert info.version == value.version
            assert info.modified == value.modified
            assert info.created == value.created
        assert plain_info.metadata is None  # only when asked
        assert detailed[key].metadata == dict(value.metadata)
    assert detailed["meta"].metadata == {"a": 2}
    assert detailed["re"].metadata == {"z": None, "l": [1, "é"]}


def test_list_info_in_another_process_agrees(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/fs?create=true"
    store = open_store(url)
    store.set("k/1", (b"abc", {"x": 1}))
    store.set("k/2", (b"", {}))
    code = (
        "import json,sys; from storekeeper import open_store\n"
        f"s = open_store({url!r})\n"
        "print(json.dumps([[k, i.size, i.version, i.modified, i.metadata]"
        " for k, i in s.list_info('k/', metadata=True)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout)
    mine = [
        [k, i.size, i.version, i.modified, i.metadata]
        for k, i in store.list_info("k/", metadata=True)
    ]
    assert theirs == mine
    assert [row[0] for row in theirs] == ["k/1", "k/2"]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file"])
def test_list_info_writes_and_deletes_while_consuming(kind: str, tmp_path: Path) -> None:
    store = open_store(_url(kind, tmp_path))
    keys = [f"p/{i:03d}" for i in range(40)]
    for key in keys:
        store.set(key, (b"v", {}))
    store.set("q/outside", (b"v", {}))
    seen: list[str] = []
    it = store.list_info("p/")
    for _ in range(10):
        seen.append(next(it)[0])
    # writes and deletes from another thread while the iterator is half consumed
    deleted = {"p/020", "p/039", "p/005"}

    def mutate() -> None:
        for key in deleted:
            store.delete(key)
        store.set("p/0205", (b"new", {}))
        store.set("p/000a", (b"new", {}))
        store.set("p/", (b"new", {}))
        store.set("p0", (b"outside", {}))

    t = threading.Thread(target=mutate)
    t.start()
    t.join()
    rest = list(it)
    seen += [k for k, _ in rest]
    assert len(seen) == len(set(seen)), "a key listed twice"
    assert seen == sorted(seen)
    assert all(k.startswith("p/") for k in seen)
    allowed = set(keys) | {"p/0205", "p/000a", "p/"}
    assert set(seen) <= allowed, "an invented key"
    throughout = set(keys) - deleted
    assert throughout <= set(seen), "a key present throughout was not listed"
    for key, info in rest:
        assert info.size == len(store.to_bytes(key)) if store.exists(key) else True


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((5,), {}, InvalidArgumentError),
        ((None,), {}, InvalidArgumentError),
        ((b"a",), {}, InvalidArgumentError),
        (("\ud800",), {}, InvalidKeyError),
        (("", True), {}, TypeError),
        (("",), {"delimiter": "/"}, TypeError),
    ],
)
def test_list_info_bad_arguments_raise_at_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    for store in (open_store("memory://"), _joined()):
        with pytest.raises(error):
            store.list_info(*args, **kwargs)  # not only at the first next()
        assert issubclass(error, (TypeError, ValueError))


def _joined() -> JoinedStore:
    j = JoinedStore([open_store("memory://"), open_store("memory://")])
    j.connect()
    return j


# ---------------------------------------------------------------------------------------
# list_info on composites
# ---------------------------------------------------------------------------------------


def _composites(tmp_path: Path) -> Iterator[tuple[str, AbstractStore]]:
    lower, upper = open_store("memory://"), open_store("memory://")
    for i in range(6):
        lower.set(f"k/{i}", (b"L" * i, {"i": i}))
    joined = JoinedStore([upper, lower])
    joined.connect()
    yield "joined", joined
    back, mnt = open_store("memory://"), open_store("memory://")
    for i in range(6):
        back.set(f"k/{i}", (b"B" * i, {"i": i}))
    mounted = MountedStore("k/", mnt, back)
    mounted.connect()
    yield "mounted", mounted
    src = open_store(f"sqlite:///{tmp_path}/src.db")
    for i in range(6):
        src.set(f"k/{i}", (b"S" * i, {"i": i}))
    cached = CachedStore(src, open_store("memory://"))
    cached.connect()
    cached.get("k/1")
    src.set("k/1", (b"changed!", {"fresh": True}))  # the cache's copy is stale now
    yield "cached", cached


def test_list_info_composites_hide_whiteouts_and_agree_with_get(tmp_path: Path) -> None:
    for name, store in _composites(tmp_path):
        store.set("k/2", (b"overlaid", {"top": 1}))
        store.delete("k/3")
        listed = list(store.list_info("k/", metadata=True))
        assert [k for k, _ in listed] == ["k/0", "k/1", "k/2", "k/4", "k/5"], name
        assert [k for k, _ in listed] == list(store.list_keys("k/")), name
        for key, info in listed:
            value = store.get(key)
            assert (info.size, info.version, info.modified) == (
                value.size,
                value.version,
                value.modified,
            ), name
            assert info.metadata == dict(value.metadata), name
        info2 = dict(listed)
        assert info2["k/2"].size == len(b"overlaid")
        if name == "cached":
            assert info2["k/1"].size == len(b"changed!") and info2["k/1"].metadata == {
                "fresh": True
            }
        # a key deleted between its listing and its details is left out
        it = store.list_info("k/")
        assert next(it)[0] == "k/0"
        store.delete("k/5")
        assert [k for k, _ in it] == ["k/1", "k/2", "k/4"], name


def _auth_pair() -> tuple[SimpleAuthStore, SimpleAuthStore]:
    shared = open_store("memory://")
    alice = SimpleAuthStore(shared, make_encoder(b"k"))
    alice.add_user("alice", "pw")
    alice.add_user("bob", "pw")
    alice.connect({"username": "alice", "password": "pw"})
    bob = SimpleAuthStore(shared, make_encoder(b"k"))
    bob.connect({"username": "bob", "password": "pw"})
    return alice, bob


def test_auth_list_info_hides_keys_the_user_may_not_see() -> None:
    alice, bob = _auth_pair()
    alice.set("n/secret", (b"top secret data", {"s": "hidden"}))
    alice.set("n/read", (b"readable", {"r": 1}))
    alice.update_permissions("n/read", {"get": {"bob"}})
    listed = list(bob.list_info("", metadata=True))
    assert [k for k, _ in listed] == list(bob.list_keys("")) == ["n/read"]
    assert listed[0][1].metadata == {"r": 1}
    assert listed[0][1].size == 8
    assert all(not k.startswith(".user_") for k, _ in bob.list_info(""))
    assert [k for k, _ in alice.list_info("n/")] == ["n/read", "n/secret"]


def test_auth_list_info_with_exists_only_key_lists_without_leaking() -> None:
    alice, bob = _auth_pair()
    alice.set("n/exists", (b"exists-only", {"s": "not for bob"}))
    alice.set("n/read", (b"readable", {"r": 1}))
    alice.update_permissions("n/exists", {"exists": {"bob"}})
    alice.update_permissions("n/read", {"get": {"bob"}})
    assert list(bob.list_keys("n/")) == ["n/exists", "n/read"]
    listed = dict(bob.list_info("n/", metadata=True))  # AuthorizationError today
    assert list(listed) == ["n/exists", "n/read"]
    assert listed["n/exists"].metadata != {"s": "not for bob"}
    assert listed["n/read"].metadata == {"r": 1}


# ---------------------------------------------------------------------------------------
# transfer / sync / cp
# ---------------------------------------------------------------------------------------


def _make_tree(root: Path, keys: list[str]) -> None:
    for key in keys:
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(key.encode() * 3)


TREE_KEYS = [
    "a-b",
    "a.b",
    "a/b",
    "a/c/d",
    "a/c-d",
    "a0",
    "aé",
    "A",
    "a b",
    "a/bc",
    "a/b-c",
    "B/x",
    "b",
    "a\U0010ffff",
]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file", "postgres", "redis"])
def test_sync_delete_never_deletes_a_source_key(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src, TREE_KEYS)
    url = _url(kind, tmp_path, f"sync-delete-{kind}")
    target = open_store(url)
    _clear(target)
    try:
        for extra in ["a/", "a/b/extra", "zz", "a.b/c", "a-b/c", "a", "é"]:
            target.set(extra, (b"x", {}))
        target.set("a.b", (b"old", {"keep": 1}))
        report = transfer(Folder(src), target, delete=True)
        deleted = {a.key for a in report.actions if a.action == "delete"}
        assert deleted == {"a/", "a/b/extra", "zz", "a.b/c", "a-b/c", "a", "é"}
        fresh = _fresh(url, target)
        assert list(fresh.list_keys()) == sorted(TREE_KEYS)
        for key in TREE_KEYS:
            assert fresh.to_bytes(key) == key.encode() * 3
        again = transfer(Folder(src), target, delete=True)
        assert (again.copied, again.deleted, again.skipped) == (0, 0, len(TREE_KEYS))
        # and back out to a folder, mirrored, then idempotent
        out = tmp_path / "out"
        transfer(target, Folder(out), delete=True)
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert files == sorted(TREE_KEYS)
        assert transfer(target, Folder(out), delete=True).copied == 0
    finally:
        if kind in ("postgres", "redis"):
            _clear(target)


def test_store_to_store_second_run_copies_nothing_and_keeps_metadata(tmp_path: Path) -> None:
    a = open_store(f"sqlite:///{tmp_path}/a.db")
    b = open_store(f"file://{tmp_path}/b?create=true")
    for i in range(30):
        a.set(f"k/{i:02d}", (bytes([i]) * i, {"i": i, "é": [i]}))
    first = transfer(a, b)
    assert first.copied == 30
    assert transfer(a, b).copied == 0
    b2 = open_store(f"file://{tmp_path}/b")
    assert dict(b2.list_info("", metadata=True))["k/07"].metadata == {"i": 7, "é": [7]}
    # a metadata-only change on either side is found by the quick compare
    a.update_metadata("k/03", {"new": True})
    b.set_metadata("k/04", {"tampered": True})
    again = transfer(a, b)
    assert sorted((x.key, x.reason) for x in again.actions) == [
        ("k/03", "metadata"),
        ("k/04", "metadata"),
    ]
    assert b2.get_metadata("k/04") == {"i": 4, "é": [4]}
    assert transfer(a, b).copied == 0


def test_same_size_change_with_mtime_preserved_is_missed_quick_found_by_checksum(
    tmp_path: Path,
) -> None:
    """The module doc: quick compares size, metadata, then modified times; checksum reads."""
    src = tmp_path / "src"
    _make_tree(src, ["f"])
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    assert transfer(Folder(src), store).copied == 1
    st = os.stat(src / "f")
    (src / "f").write_bytes(b"FFF")  # same size as b"f"*3
    os.utime(src / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    quick = transfer(Folder(src), store)
    assert quick.copied == 0  # documented: time and size unchanged, so not seen
    assert store.to_bytes("f") == b"fff"
    checked = transfer(Folder(src), store, compare="checksum")
    assert [(a.key, a.reason) for a in checked.actions] == [("f", "checksum")]
    assert store.to_bytes("f") == b"FFF"
    assert transfer(Folder(src), store, compare="checksum").copied == 0


def test_cli_checksum_option_detects_same_size_same_mtime(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src, ["x/f"])
    url = f"sqlite:///{tmp_path}/t.db"
    assert _cli("sync", str(src), url).returncode == 0
    st = os.stat(src / "x/f")
    (src / "x/f").write_bytes(b"X/F" * 3)
    os.utime(src / "x/f", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _cli("sync", str(src), url)
    assert "copied 0 keys" in r.stdout + r.stderr
    r = _cli("sync", str(src), url, "--checksum", "--json")
    assert r.returncode == 0
    actions = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [(x["key"], x["reason"]) for x in actions if x.get("action") == "copy"] == [
        ("x/f", "checksum")
    ]
    assert open_store(url).to_bytes("x/f") == b"X/F" * 3


def test_keys_that_cannot_be_files_are_refused_before_writing(tmp_path: Path) -> None:
    for key in ["../evil", "a/../../evil", "/abs", "a//b", "./x", ".", ".."]:
        s = open_store("memory://")
        s.set(key, (b"z", {}))
        out = tmp_path / ("o" + hashlib.sha1(key.encode()).hexdigest()[:8])
        with pytest.raises(InvalidKeyError):
            transfer(s, Folder(out))
    assert not (tmp_path.parent / "evil").exists()
    s = open_store("memory://")
    s.set("a", (b"1", {}))
    s.set("a/b", (b"2", {}))
    with pytest.raises(InvalidKeyError):
        transfer(s, Folder(tmp_path / "conflict"))
    assert not (tmp_path / "conflict").exists() or not any((tmp_path / "conflict").rglob("*"))


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------


def _cli_process(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The installed command in a fresh process."""
    env = dict(os.environ)
    env.pop("STOREKEEPER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "storekeeper", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        **kw,
    )


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command through click's runner (in this process, for speed)."""
    from click.testing import CliRunner

    from storekeeper.cli.main import cli

    result = CliRunner().invoke(cli, list(args), input=stdin, env={"STOREKEEPER_URL": None})
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def _sqlite_dump(db: Path) -> list[Any]:
    con = sqlite3.connect(db)
    try:
        return sorted(
            con.execute(
                "select key, metadata, modified, version, size, blob, data from store"
            ).fetchall()
        )
    finally:
        con.close()


def test_cli_dry_run_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src, ["x", "d/y"])
    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    open_store(url).set("gone", (b"old", {"m": 1}))
    before = _sqlite_dump(db)
    r = _cli("sync", str(src), url, "--delete", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    planned = sorted(
        (x["action"], x["key"], x["done"]) for x in map(json.loads, r.stdout.splitlines())
    )
    assert planned == [("copy", "d/y", False), ("copy", "x", False), ("delete", "gone", False)]
    assert _sqlite_dump(db) == before
    out = tmp_path / "never"
    r = _cli("sync", url, str(out), "--delete", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    r = _cli("cp", str(src), url, "--dry-run", "--all")
    assert r.returncode == 0, r.stderr
    assert _sqlite_dump(db) == before


def test_cli_ls_long_json_agrees_with_list_info(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    for key in ["n/a", "n/a b", "n/é", "n/\U0010ffff", "n0", "m"]:
        store.set(key, (key.encode() * 2, {"k": 1}))
    r = _cli_process("ls", url, "--prefix", "n/", "--long", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    infos = list(open_store(url).list_info("n/"))
    assert [row["key"] for row in rows] == [k for k, _ in infos]
    for row, (_, info) in zip(rows, infos, strict=True):
        assert row["size"] == info.size
        assert str(row["version"]) == str(info.version)
        assert row["modified"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.modified))
    r = _cli("ls", url, "--prefix", "n/", "--long")
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    assert [line.split()[0] for line in lines] == [str(i.size) for _, i in infos]


def test_cli_exit_codes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    assert _cli("put", f"{url}#k", "-", stdin="v").returncode == 0
    r = _cli("put", f"{url}#k", "-", "--create-only", stdin="w")
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1
    assert _cli("put", f"{url}#k", "-", "--if-version", "1", stdin="w").returncode == 4
    r = _cli_process("cat", f"{url}#nope")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert _cli("ls", "bogus://x").returncode == 2
    assert _cli("ls", url, "--nope").returncode == 2
    assert _cli("sync", url, url).returncode == 2
    assert _cli("sync", str(tmp_path / "missing"), url).returncode in (1, 3)
    assert _cli("ls", "memory://foo").returncode == 2
    assert _cli("sync", f"{url}?durabel=false", str(tmp_path / "o")).returncode == 2
    assert open_store(url).to_bytes("k") == b"v"


def _count_rows(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=0.05)
        try:
            return int(con.execute("select count(*) from store").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_cli_sync_killed_midway_then_rerun_is_identical(tmp_path: Path) -> None:
    n = 700
    src_url = f"sqlite:///{tmp_path}/src.db"
    src = open_store(src_url)
    with src.transaction():
        for i in range(n):
            src.set(f"k/{i:05d}", (os.urandom(300), {"i": i}))
    src.set("k/a.b", (b"dot", {}))
    src.set("k/a-b", (b"dash", {}))
    src.set("k/a/b", (b"slash", {}))
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("STOREKEEPER_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "storekeeper", "sync", src_url, str(out), "--delete"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and sum(1 for _ in out.rglob("*")) > 20:
            break
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sync finished before it could be killed"
    partial = sum(1 for p in out.rglob("*") if p.is_file())
    assert 0 < partial < n
    r = _cli_process("sync", src_url, str(out), "--delete")
    assert r.returncode == 0, r.stderr
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expected = {k: src.to_bytes(k) for k in src.list_keys()}
    assert files == expected
    r = _cli("sync", src_url, str(out), "--delete")
    assert "copied 0 keys" in r.stdout + r.stderr

    # the other way: the folder into a fresh SQLite store, killed after its first commit
    db = tmp_path / "t.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "storekeeper", "sync", str(out), f"sqlite:///{db}", "--delete"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None and _count_rows(db) == 0:
        pass
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sync finished before it could be killed"
    assert 0 < _count_rows(db) < len(expected)
    assert _cli("cp", str(out), f"sqlite:///{db}").returncode == 0
    rows = _sqlite_dump(db)
    assert len(rows) == len({row[0] for row in rows}) == len(expected)
    target = open_store(f"sqlite:///{db}")
    assert {k: target.to_bytes(k) for k in target.list_keys()} == expected


# ---------------------------------------------------------------------------------------
# second batch
# ---------------------------------------------------------------------------------------


def test_source_changed_while_copied_is_copied_again(tmp_path: Path) -> None:
    from storekeeper import EventManager
    from storekeeper.events import ProgressEvent

    for url in ["memory://", f"sqlite:///{tmp_path}/s.db"]:
        src, dst = open_store(url), open_store("memory://")
        big = os.urandom(3 << 20)
        src.set("big", (big, {"v": 1}))
        src.set("z", (b"z", {}))
        events = EventManager()
        seen = {"n": 0}

        def change_mid_copy(
            event: object,
            src: AbstractStore = src,
            size: int = len(big),
            seen: dict[str, int] = seen,
        ) -> None:
            seen["n"] += 1
            if seen["n"] == 2:  # a progress step of the big key's copy
                src.set("big", (b"Q" * size, {"v": 1}))  # same size, same metadata

        events.connect(ProgressEvent, change_mid_copy)
        report = transfer(src, dst, event_manager=events)
        assert seen["n"] > 2
        assert ("big", "changed") in [(a.key, a.reason) for a in report.actions]
        assert report.unsettled == []
        assert dst.to_bytes("big") == b"Q" * len(big)
        assert transfer(src, dst).copied == 0


def test_prefix_not_on_boundary_with_delete(tmp_path: Path) -> None:
    src, dst = open_store("memory://"), open_store("memory://")
    for key in ["a", "ab", "a/b", "b", "a-"]:
        src.set(key, (key.encode(), {}))
    for key in ["ax", "a/x", "bx", "`", "b", "a.", "a\U0010ffff"]:
        dst.set(key, (b"?", {}))
    report = transfer(src, dst, "a", delete=True)
    assert sorted(a.key for a in report.actions if a.action == "delete") == [
        "a.",
        "a/x",
        "ax",
        "a\U0010ffff",
    ]
    assert list(dst.list_keys()) == ["`", "a", "a-", "a/b", "ab", "b", "bx"]
    assert dst.to_bytes("b") == b"?"  # outside the prefix: untouched
    tree = tmp_path / "tree"
    _make_tree(tree, ["a/b/x", "a/b-c", "a/bc", "a/a", "a/b"[:3] + "0"])
    target = open_store("memory://")
    target.set("a/b/zz", (b"?", {}))
    target.set("a/a", (b"keep", {}))
    report = transfer(Folder(tree), target, "a/b", delete=True)
    assert sorted((a.action, a.key) for a in report.actions) == [
        ("copy", "a/b-c"),
        ("copy", "a/b/x"),
        ("copy", "a/b0"),
        ("copy", "a/bc"),
        ("delete", "a/b/zz"),
    ]
    assert target.to_bytes("a/a") == b"keep"


def test_copy_from_folder_keeps_the_target_keys_metadata(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _make_tree(tree, ["k"])
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    store.set("k", (b"older", {"keep": 1}))
    report = transfer(Folder(tree), store)
    assert [(a.key, a.reason) for a in report.actions] == [("k", "size")]
    fresh = open_store(f"sqlite:///{tmp_path}/t.db")
    assert fresh.to_bytes("k") == b"kkk"
    assert fresh.get_metadata("k") == {"keep": 1}
    assert transfer(Folder(tree), store).copied == 0


def test_abandoned_iter_transfer_stops_after_the_group_and_resumes() -> None:
    from storekeeper.store.transfer import iter_transfer

    src, dst = open_store("memory://"), open_store("memory://")
    for i in range(10):
        src.set(f"k{i}", (b"x" * i, {"i": i}))
    it = iter_transfer(src, dst, batch_keys=2)
    first = next(it)
    assert (first.key, first.done) == ("k0", True)
    it.close()
    assert list(dst.list_keys()) == ["k0", "k1"]
    rest = transfer(src, dst)
    assert rest.copied == 8 and rest.skipped == 2
    assert {k: dst.to_bytes(k) for k in dst.list_keys()} == {
        k: src.to_bytes(k) for k in src.list_keys()
    }


def test_transfer_out_of_an_auth_view_sees_only_visible_keys() -> None:
    alice, bob = _auth_pair()
    alice.set("n/secret", (b"secret", {"s": 1}))
    alice.set("n/read", (b"read", {"r": 1}))
    alice.update_permissions("n/read", {"get": {"bob"}})
    bob.set("n/bob", (b"bobs", {}))
    out = open_store("memory://")
    report = transfer(bob, out, delete=True)
    assert list(out.list_keys()) == ["n/bob", "n/read"]
    assert out.get_metadata("n/read") == {"r": 1}
    assert "n/secret" not in [a.key for a in report.actions]


def test_transfer_onto_the_same_database_opened_twice_is_refused(tmp_path: Path) -> None:
    a = open_store(f"sqlite:///{tmp_path}/t.db")
    b = open_store(f"sqlite:///{tmp_path}/t.db")
    a.set("q", (b"1", {}))
    version = a.get("q").version
    try:
        with pytest.raises(InvalidArgumentError):
            transfer(a, b, delete=True)
    finally:
        assert a.get("q").version == version


def test_cli_sync_same_store_two_spellings_writes_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    store.set("a", (b"hello", {}))
    store.set("b", (os.urandom(2 << 20), {"m": 1}))
    before = _sqlite_dump(tmp_path / "t.db")
    r1 = _cli_process("sync", "sqlite:///t.db", "sqlite:///./t.db", "--delete", cwd=tmp_path)
    r2 = _cli_process("sync", "sqlite:///t.db", f"sqlite:///{tmp_path}/t.db", cwd=tmp_path)
    assert _sqlite_dump(tmp_path / "t.db") == before  # versions and times unchanged
    for r in (r1, r2):
        assert r.returncode == 2 or "copied 0 keys" in r.stdout + r.stderr


def test_cli_sync_into_folder_conflicting_keys_exit_2_nothing_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    store.set("a", (b"1", {}))
    store.set("a/b", (b"2", {}))
    r = _cli("sync", url, str(tmp_path / "out"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    r = _cli("--debug", "sync", url, str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_cli_ls_json_escapes_control_characters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    for key in ["x\ny", "tab\there", 'q"uote', "\x7f", "é\U0010ffff"]:
        store.set(key, (b"1", {}))
    r = _cli("ls", url, "--json", "--long")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["key"] for row in rows] == [k for k, _ in store.list_info("")]
    assert len(r.stdout.splitlines()) == 5


def test_list_info_inside_a_transaction_sees_its_writes_others_do_not(store_url: str) -> None:
    store = open_store(store_url)
    store.set("t/keep", (b"1", {}))
    store.set("t/del", (b"22", {}))
    store.set("t/chg", (b"333", {"a": 1}))
    outside: dict[str, Any] = {}
    with store.transaction():
        store.set("t/new", (b"4444", {"n": 1}))
        store.delete("t/del")
        store.set("t/chg", (b"55555", {"a": 2}))
        inside = {k: (i.size, i.metadata) for k, i in store.list_info("t/", metadata=True)}
        assert inside == {"t/chg": (5, {"a": 2}), "t/keep": (1, {}), "t/new": (4, {"n": 1})}

        def other() -> None:
            outside.update({k: i.size for k, i in store.list_info("t/")})

        t = threading.Thread(target=other)
        t.start()
        t.join(5)
        assert not t.is_alive()
    assert outside == {"t/chg": 3, "t/del": 2, "t/keep": 1}
    fresh = _fresh(store_url, store)
    after = {k: (i.size, i.version) for k, i in fresh.list_info("t/")}
    assert after == {
        k: (store.get(k).size, store.get(k).version) for k in ["t/chg", "t/keep", "t/new"]
    }


def test_list_info_merges_composite_key_spaces_in_order() -> None:
    back, mnt = open_store("memory://"), open_store("memory://")
    for key in ["k", "k.x", "k/0", "k0", "k/zz", "k-", "k/\U0010ffff", "j", "l"]:
        back.set(key, (b"B" + key.encode(), {}))
    for key in ["0", "1", "\U0010ffff", "a/b", "é"]:
        mnt.set(key, (b"M" + key.encode(), {}))
    mounted = MountedStore("k/", mnt, back)
    mounted.connect()
    expected = [
        "j",
        "k",
        "k-",
        "k.x",
        "k/0",
        "k/1",
        "k/a/b",
        "k/zz",
        "k/é",
        "k/\U0010ffff",
        "k0",
        "l",
    ]
    for prefix in ["", "k", "k/", "k/\U0010ffff", "k/a", "l", "m"]:
        listed = list(mounted.list_info(prefix))
        assert [k for k, _ in listed] == [k for k in expected if k.startswith(prefix)], prefix
        for key, info in listed:
            assert info.size == len(mounted.to_bytes(key)), key
    assert dict(mounted.list_info("k/0"))["k/0"].size == len(b"M0")  # the mount wins
    upper, lower = open_store("memory://"), open_store("memory://")
    for key in ["a", "a/b", "a\U0010ffff", "é"]:
        upper.set(key, (b"u", {}))
    for key in ["a-b", "a/b", "a.b", "\U0010ffff", "A"]:
        lower.set(key, (b"ll", {}))
    joined = JoinedStore([upper, lower])
    joined.connect()
    listed = dict(joined.list_info("a"))
    assert list(listed) == ["a", "a-b", "a.b", "a/b", "a\U0010ffff"]
    assert listed["a/b"].size == 1 and listed["a-b"].size == 2


def test_second_sync_copies_nothing_for_a_file_with_a_future_mtime(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _make_tree(tree, ["cam/img1", "cam/img2"])
    future = time.time() + 86400  # a camera with a wrong clock, a tar with future stamps
    os.utime(tree / "cam/img1", (future, future))
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    assert transfer(Folder(tree), store).copied == 2
    version = store.get("cam/img1").version
    again = transfer(Folder(tree), store)
    assert [(a.key, a.reason) for a in again.actions] == []  # today: [("cam/img1", "newer")]
    assert store.get("cam/img1").version == version


def test_keys_vanishing_mid_transfer_are_left_out(tmp_path: Path) -> None:
    from storekeeper import EventManager
    from storekeeper.events import ProgressEvent

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a_big").write_bytes(os.urandom(3 << 20))
    (tree / "b_vanish").write_bytes(b"x")
    (tree / "c").write_bytes(b"c")
    store = open_store("memory://")
    store.set("a_big", ((tree / "a_big").read_bytes(), {}))
    store.set("b_vanish", (b"x", {}))
    store.set("c", (b"c", {}))

    def vanish_from_folder(event: object) -> None:
        if (tree / "b_vanish").exists():
            os.unlink(tree / "b_vanish")

    def vanish_from_store(event: object) -> None:
        if store.exists("b_vanish"):
            store.delete("b_vanish")

    for source, hook in ((Folder(tree), vanish_from_folder), (store, vanish_from_store)):
        events = EventManager()
        events.connect(ProgressEvent, hook)
        target = open_store("memory://")
        report = transfer(source, target, event_manager=events)
        assert [(a.key, a.reason) for a in report.actions] == [("a_big", "new"), ("c", "new")]
        assert list(target.list_keys()) == ["a_big", "c"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compare": "bogus"},
        {"prefix": 5},
        {"prefix": "\ud800"},
        {"batch_keys": 0},
        {"batch_bytes": -1},
    ],
)
def test_transfer_bad_arguments(kwargs: dict[str, Any]) -> None:
    src, dst = open_store("memory://"), open_store("memory://")
    src.set("k", (b"v", {}))
    with pytest.raises((InvalidArgumentError, InvalidKeyError)):
        transfer(src, dst, **kwargs)
    assert list(dst.list_keys()) == []


def test_cached_store_list_info_follows_the_source() -> None:
    src = open_store("memory://")
    for i in range(3):
        src.set(f"k/{i}", (b"x" * i, {"i": i}))
    cached = CachedStore(src, open_store("memory://"))
    cached.connect()
    for i in range(3):
        cached.get(f"k/{i}")
    src.delete("k/1")  # behind the cache's back
    src.set("k/2", (b"longer now", {"i": 22}))
    listed = dict(cached.list_info("k/", metadata=True))
    assert list(listed) == ["k/0", "k/2"]
    assert listed["k/2"].size == 10 and listed["k/2"].metadata == {"i": 22}


@pytest.mark.parametrize(
    ("old", "new"),
    [(["a", "z"], ["a/b", "z"]), (["a/b", "a/c/d", "z"], ["a", "z"])],
    ids=["file-became-folder", "folder-became-file"],
)
def test_sync_delete_into_folder_when_a_key_became_a_folder(
    tmp_path: Path, old: list[str], new: list[str]
) -> None:
    store = open_store("memory://")
    for key in old:
        store.set(key, (key.encode(), {}))
    out = tmp_path / "out"
    transfer(store, Folder(out), delete=True)
    for key in old:
        store.delete(key)
    for key in new:
        store.set(key, (b"NEW" + key.encode(), {}))
    try:
        transfer(store, Folder(out), delete=True)
    finally:
        files = {
            p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }
        assert files == {key: b"NEW" + key.encode() for key in new}


@pytest.mark.parametrize("meta", [False, True])
def test_list_info_another_writer_deletes_and_rewrites_mid_listing(
    store_url: str, meta: bool
) -> None:
    store = open_store(store_url)
    writer = _fresh(store_url, store)
    n = 60
    for i in range(n):
        store.set(f"p/{i:04d}", (b"x" * (i % 7), {"i": i}))
    it = store.list_info("p/", metadata=meta)
    first = next(it)
    for i in range(1, n, 2):
        writer.delete(f"p/{i:04d}")
    for i in range(0, n, 3):
        writer.set(f"p/{i:04d}", (b"yy" * 20, {"j": i}))
    rest = list(it)
    keys = [first[0]] + [k for k, _ in rest]
    assert len(keys) == len(set(keys)) and keys == sorted(keys)
    assert set(keys) <= {f"p/{i:04d}" for i in range(n)}
    assert {f"p/{i:04d}" for i in range(0, n, 2)} <= set(keys)  # present throughout
    for key, info in rest:
        i = int(key[2:])
        assert info.size in (i % 7, 40), key  # the old value or the new one, nothing else
        if meta:
            assert info.metadata in ({"i": i}, {"j": i}), key
