"""The ``storekeeper`` command, through click's runner: each command over SQLite and
filesystem stores (memory:// lives only for one invocation, so it gets the commands
that need one), the ``--json`` shapes, exit codes and bad input. What the commands
wrote is read back through the library on the same storage."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from storekeeper import AuthenticationError, open_store
from storekeeper.cli.listing import parse_term
from storekeeper.cli.main import cli
from storekeeper.store.query import Exists, In, Prefix, Range

Run = Callable[..., Result]


@pytest.fixture(params=["sqlite", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        made = f"sqlite:///{tmp_path / 'cli.db'}"
    else:
        made = (tmp_path / "cli-store").as_uri() + "?create=true"
    with open_store(made):  # a command only reading a store never creates it
        pass
    return made


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.delenv("STOREKEEPER_URL", raising=False)
    monkeypatch.delenv("STOREKEEPER_DEBUG", raising=False)
    runner = CliRunner()

    def invoke(*args: str, stdin: bytes | str | None = None, env: Any = None) -> Result:
        return runner.invoke(cli, list(args), input=stdin, env=env)

    return invoke


def lines(result: Result) -> list[Any]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


def fails(result: Result, code: int, text: str = "") -> str:
    """Check an error exit: *code*, one stderr line with *text*, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    error = result.stderr.strip().splitlines()
    assert error and text in error[-1], result.stderr
    assert "Traceback" not in result.stderr
    return error[-1]


def test_put_cat_get_head_round_trip(run: Run, url: str, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00binary\xff" * 1000)
    ok(run("put", f"{url}#docs/a.bin", str(source), "-m", "kind=doc", "-m", "year=2024"))
    ok(run("put", f"{url}#docs/b.txt", stdin=b"from stdin"))
    assert ok(run("cat", f"{url}#docs/b.txt")).stdout_bytes == b"from stdin"
    out = tmp_path / "out.bin"
    ok(run("get", f"{url}#docs/a.bin", "-o", str(out)))
    assert out.read_bytes() == source.read_bytes()
    assert ok(run("get", url, "--key", "docs/b.txt", "-o", "-")).stdout_bytes == b"from stdin"
    (head,) = lines(ok(run("head", f"{url}#docs/a.bin", "--json")))
    assert set(head) == {"key", "size", "created", "modified", "version", "metadata"}
    assert head["metadata"] == {"kind": "doc", "year": 2024} and head["size"] == 8000
    with open_store(url) as store:  # a second path: the library on the same storage
        assert store.to_bytes("docs/a.bin") == source.read_bytes()
        assert store.get_metadata("docs/b.txt") == {}
        assert store.get("docs/a.bin").version == head["version"]


def test_get_defaults_to_the_keys_name_in_the_working_directory(
    run: Run, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(run("put", f"{url}#deep/dir/name.txt", stdin=b"x"))
    monkeypatch.chdir(tmp_path)
    ok(run("get", f"{url}#deep/dir/name.txt"))
    assert (tmp_path / "name.txt").read_bytes() == b"x"
    ok(run("put", f"{url}#up/..", stdin=b"y"))
    fails(run("get", f"{url}#up/.."), 2, "-o FILE")


def test_put_without_metadata_keeps_it_and_with_it_replaces_it(run: Run, url: str) -> None:
    ok(run("put", f"{url}#k", "--meta", '{"a": 1, "b": [1, 2]}', stdin=b"one"))
    ok(run("put", f"{url}#k", stdin=b"two"))
    assert json.loads(ok(run("meta", "get", f"{url}#k")).stdout) == {"a": 1, "b": [1, 2]}
    ok(run("put", f"{url}#k", "-m", 'id="007"', "-m", "n=1.5", "-m", "s=word", stdin=b"3"))
    assert json.loads(run("meta", "get", f"{url}#k").stdout) == {"id": "007", "n": 1.5, "s": "word"}


def test_conditional_put(run: Run, url: str) -> None:
    ok(run("put", f"{url}#k", "--create-only", stdin=b"first"))
    fails(run("put", f"{url}#k", "--create-only", stdin=b"second"), 4, "exists")
    (written,) = lines(ok(run("put", f"{url}#k", "--meta", "{}", "--json", stdin=b"2")))
    fails(run("put", f"{url}#k", "--if-version", "nope", stdin=b"3"), 4)
    ok(run("put", f"{url}#k", "--if-version", written["version"], stdin=b"4"))
    assert run("cat", f"{url}#k").stdout_bytes == b"4"
    fails(run("put", f"{url}#k", "--if-version", "1", "--create-only", stdin=b""), 2)


def test_ls_shapes(run: Run, url: str) -> None:
    for key in ("a/1", "a/2", "a/sub/3", "b"):
        ok(run("put", f"{url}#{key}", stdin=key.encode()))
    assert ok(run("ls", url)).stdout.splitlines() == ["a/1", "a/2", "a/sub/3", "b"]
    assert lines(ok(run("ls", url, "--json", "--prefix", "a/", "--delimiter", "/"))) == [
        {"key": "a/1"},
        {"key": "a/2"},
        {"key": "a/sub/", "folder": True},
    ]
    long = lines(ok(run("ls", url, "--json", "--long")))
    assert [entry["size"] for entry in long] == [3, 3, 7, 1]
    assert all(set(entry) == {"key", "size", "modified", "version"} for entry in long)
    text = ok(run("ls", url, "-l")).stdout.splitlines()
    assert text[0].split()[0] == "3" and text[0].endswith(" a/1")


def test_ls_long_reads_one_listing_not_each_key(
    run: Run, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(url) as store:
        store.multiset([f"k{index:03}" for index in range(200)], [(b"abc", {})] * 200)
        expected = {key: (info.size, info.version) for key, info in store.list_info()}
    store_class = type(open_store(url))

    def no_get(self: Any, key: str) -> Any:
        raise AssertionError(f"ls --long looked up {key!r} by itself")

    monkeypatch.setattr(store_class, "get", no_get)
    listed = lines(ok(run("ls", url, "--json", "--long")))
    assert {entry["key"]: (entry["size"], entry["version"]) for entry in listed} == expected
    assert [entry["key"] for entry in listed] == sorted(expected)


def test_rm(run: Run, url: str) -> None:
    for key in ("keep", "tmp/1", "tmp/2", "x", "y"):
        ok(run("put", f"{url}#{key}", stdin=b"."))
    assert ok(run("rm", url, "--prefix", "tmp/", "--dry-run")).stdout.splitlines() == [
        "would remove tmp/1",
        "would remove tmp/2",
    ]
    assert lines(ok(run("rm", url, "--prefix", "tmp/", "--json"))) == [
        {"key": "tmp/1", "removed": True, "dry_run": False},
        {"key": "tmp/2", "removed": True, "dry_run": False},
    ]
    ok(run("rm", url, "x", f"{url}#y"))
    fails(run("rm", f"{url}#x"), 3, "x")
    ok(run("rm", f"{url}#x", "--force"))
    assert ok(run("ls", url)).stdout.split() == ["keep"]


def test_rm_every_key_needs_all(run: Run, url: str) -> None:
    for key in ("a", "b/c"):
        ok(run("put", f"{url}#{key}", stdin=b"."))
    fails(run("rm", url, "--prefix", ""), 2, "--all")
    assert ok(run("rm", url, "--prefix", "", "--dry-run")).stdout.split("\n")[:2] == [
        "would remove a",
        "would remove b/c",
    ]
    assert ok(run("ls", url)).stdout.split() == ["a", "b/c"]
    ok(run("rm", url, "--prefix", "", "--all"))
    assert ok(run("ls", url)).stdout == ""


def test_meta_commands(run: Run, url: str) -> None:
    ok(run("put", f"{url}#k", stdin=b"data"))
    ok(run("meta", "set", f"{url}#k", '{"title": "T", "n": 1}'))
    ok(run("meta", "update", url, "--key", "k", "-m", "n=2", "-m", "tags=[1]"))
    assert json.loads(run("meta", "get", f"{url}#k").stdout) == {"title": "T", "n": 2, "tags": [1]}
    assert json.loads(run("meta", "get", f"{url}#k", "--select", "n").stdout) == {"n": 2}
    assert run("cat", f"{url}#k").stdout_bytes == b"data"
    fails(run("meta", "update", f"{url}#missing", "-m", "a=1"), 3)
    fails(run("meta", "set", f"{url}#k", "[1, 2]"), 2, "JSON object")
    fails(run("meta", "set", f"{url}#k"), 2)
    fails(run("meta", "set", f"{url}#k", "-m", "a=1", "--if-version", "stale"), 4)


def test_query_and_glob(run: Run, url: str) -> None:
    items = {
        "p/1.jpg": {"kind": "photo", "year": 2019, "tag": "cat"},
        "p/2.jpg": {"kind": "photo", "year": 2021, "tag": "dog", "title": "Rex"},
        "p/3.png": {"kind": "photo", "year": 2025, "tag": "cow"},
        "n/1.txt": {"kind": "note", "id": "7"},
    }
    for key, metadata in items.items():
        ok(run("put", f"{url}#{key}", "--meta", json.dumps(metadata), stdin=b""))

    def keys(*terms: str) -> list[str]:
        return ok(run("query", url, *terms)).stdout.splitlines()

    assert keys("kind=photo", "year=range:2020..2025") == ["p/2.jpg"]
    assert keys("year=range:2020..=2025") == ["p/2.jpg", "p/3.png"]
    assert keys("tag=in:cat,cow") == ["p/1.jpg", "p/3.png"]
    assert keys("title=exists") == ["p/2.jpg"]
    assert keys("kind=photo", "title=!exists") == ["p/1.jpg", "p/3.png"]
    assert keys("tag=prefix:c") == ["p/1.jpg", "p/3.png"]
    assert keys("id=7") == []  # 7 is JSON: the number, not the string
    assert keys('id="7"') == ["n/1.txt"]
    assert keys() == sorted(items)
    assert lines(ok(run("query", url, "kind=photo", "--select", "tag,title", "--json"))) == [
        {"key": "p/1.jpg", "metadata": {"tag": "cat"}},
        {"key": "p/2.jpg", "metadata": {"tag": "dog", "title": "Rex"}},
        {"key": "p/3.png", "metadata": {"tag": "cow"}},
    ]
    assert ok(run("glob", url, "p/*.jpg")).stdout.splitlines() == ["p/1.jpg", "p/2.jpg"]
    assert lines(ok(run("glob", url, "*.txt", "--json"))) == [{"key": "n/1.txt"}]
    fails(run("query", url, "noequals"), 2, "name=value")


def test_parse_term_types() -> None:
    assert parse_term("n=5") == ("n", 5)
    assert parse_term('n="5"') == ("n", "5")
    assert parse_term("n=five") == ("n", "five")
    assert parse_term("n=in:1,a") == ("n", In([1, "a"]))
    assert parse_term("n=range:..5") == ("n", Range(None, 5))
    assert parse_term("n=range:a..b") == ("n", Range("a", "b"))
    assert parse_term("n=exists") == ("n", Exists())
    assert parse_term('n="exists"') == ("n", "exists")
    assert parse_term("n=prefix:x/") == ("n", Prefix("x/"))
    assert parse_term("a=b=c") == ("a", "b=c")


def test_default_store_from_the_environment(run: Run, url: str) -> None:
    env = {"STOREKEEPER_URL": url}
    ok(run("put", "notes/a", stdin=b"A", env=env))
    ok(run("put", "--key", "notes/b", stdin=b"B", env=env))
    ok(run("put", "#c:colon", stdin=b"C", env=env))
    assert ok(run("ls", env=env)).stdout.split() == ["c:colon", "notes/a", "notes/b"]
    assert ok(run("cat", "notes/a", "#notes/b", env=env)).stdout == "AB"
    assert ok(run("query", env=env)).stdout.split() == ["c:colon", "notes/a", "notes/b"]
    assert ok(run("glob", "notes/*", env=env)).stdout.split() == ["notes/a", "notes/b"]
    fails(run("ls"), 2, "STOREKEEPER_URL")
    fails(run("cat", "notes/a"), 2, "STOREKEEPER_URL")


def test_errors_are_one_line_with_exit_codes(run: Run, url: str, tmp_path: Path) -> None:
    fails(run("cat", f"{url}#missing"), 3, "missing")
    fails(run("head", f"{url}#missing"), 3)
    fails(run("get", f"{url}#missing", "-o", str(tmp_path / "never")), 3)
    assert not (tmp_path / "never").exists()
    fails(run("ls", "nosuchscheme:///x"), 2, "nosuchscheme")
    fails(run("ls", "sqlite:///x.db?bogus=1"), 2, "bogus")
    fails(run("ls", (tmp_path / "not-a-store").as_uri()), 3, "create=true")
    fails(run("put", f"{url}#k", str(tmp_path / "no-such-file")), 3, "no-such-file")
    fails(run("put", f"{url}#k", "--meta", "{oops"), 2, "JSON")
    fails(run("put", f"{url}#k", "-m", "novalue"), 2, "name=value")
    fails(run("put", f"{url}#k", "--meta", '{"n": NaN}'), 2, "JSON")
    fails(run("cat", url), 2, "no key")
    fails(run("nosuchcommand"), 2)
    with open_store(url) as store:
        assert list(store.list_keys()) == []


def test_debug_shows_the_traceback(run: Run, url: str) -> None:
    result = run("--debug", "cat", f"{url}#missing")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and result.stderr.strip().endswith("does not exist")


def test_info_and_memory_store(run: Run) -> None:
    (details,) = lines(ok(run("info", "memory://", "--json")))
    assert details["type"] == "DictMemoryStore" and details["readonly"] is False
    assert details["capabilities"]["persistent"] is False
    assert "capabilities:" in ok(run("info", "memory://")).stdout
    assert ok(run("ls", "memory://")).stdout == ""
    ok(run("put", "memory://#k", stdin=b"gone when the command ends"))
    assert ok(run("ls", "memory://")).stdout == ""  # a new store per invocation
    assert "copied 0 keys" in ok(run("sync", "memory://", "memory://", "--delete")).stderr


def test_cp_and_sync(run: Run, url: str, tmp_path: Path) -> None:
    folder = tmp_path / "tree"
    for name in ("a.txt", "sub/b.txt", "sub/deeper/c.bin"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode() * 100)
    first = lines(ok(run("cp", str(folder), url, "--json")))
    assert {(a["action"], a["key"], a["reason"], a["done"]) for a in first} == {
        ("copy", "a.txt", "new", True),
        ("copy", "sub/b.txt", "new", True),
        ("copy", "sub/deeper/c.bin", "new", True),
    }
    again = ok(run("sync", str(folder), url, "--json"))
    assert again.stdout == "" and "copied 0 keys" in again.stderr
    # A second store, then back out to a folder: the same bytes arrive.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    ok(run("cp", url, other, "--prefix", "sub/"))
    out = tmp_path / "out"
    ok(run("sync", other, str(out)))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "sub/b.txt",
        "sub/deeper/c.bin",
    ]
    assert (out / "sub/b.txt").read_bytes() == (folder / "sub/b.txt").read_bytes()
    # sync --delete removes what the source lost; --dry-run first changes nothing.
    (folder / "a.txt").unlink()
    planned = lines(ok(run("sync", str(folder), url, "--delete", "--dry-run", "--json")))
    assert planned == [
        {"action": "delete", "key": "a.txt", "reason": "extra", "size": None, "done": False}
    ]
    assert "a.txt" in ok(run("ls", url)).stdout
    ok(run("sync", str(folder), url, "--delete"))
    assert ok(run("ls", url)).stdout.split() == ["sub/b.txt", "sub/deeper/c.bin"]
    verbose = ok(run("cp", str(folder), url, "--all", "-v")).stdout.splitlines()
    assert verbose == ["copy sub/b.txt (always)", "copy sub/deeper/c.bin (always)"]
    assert ok(run("cp", str(folder), url, "--checksum", "--json")).stdout == ""


def test_large_files_in_and_out_arrive_whole(run: Run, url: str, tmp_path: Path) -> None:
    # Over the stores' inline limits: the files' bytes are copied inside the kernel.
    folder = tmp_path / "big"
    sizes = {"one.bin": (3 << 20) + 7, "sub/two.bin": (1 << 20) + 1}
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(os.urandom(size))
    copied = ok(run("cp", str(folder), url)).stderr
    assert f"copied 2 keys ({sum(sizes.values())} bytes)" in copied
    ok(run("put", f"{url}#put.bin", str(folder / "one.bin")))
    out = tmp_path / "out"
    ok(run("cp", url, str(out)))
    for name in sizes:
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    assert (out / "put.bin").read_bytes() == (folder / "one.bin").read_bytes()


def test_cp_keeps_metadata_between_stores(run: Run, url: str, tmp_path: Path) -> None:
    ok(run("put", f"{url}#k", "-m", "a=1", stdin=b"v"))
    other = (tmp_path / "other").as_uri() + "?create=true"
    ok(run("cp", url, other))
    with open_store(other) as store:
        assert (store.to_bytes("k"), store.get_metadata("k")) == (b"v", {"a": 1})


def test_cp_bad_locations(run: Run, url: str, tmp_path: Path) -> None:
    fails(run("cp", str(tmp_path / "missing-folder"), url), 3, "missing-folder")
    fails(run("cp", url, "nosuch:///x"), 2, "nosuch")
    ok(run("put", f"{url}#../up", stdin=b"x"))
    fails(run("cp", url, str(tmp_path / "out")), 2, "../up")
    assert not (tmp_path / "up").exists()


def test_users(run: Run, url: str) -> None:
    from storekeeper.composite.auth import SimpleAuthStore, make_encoder

    env = {"STOREKEEPER_AUTH_SECRET": "app-secret"}
    ok(
        run(
            "users",
            "add",
            url,
            "alice",
            "--tag",
            "staff",
            "--password-stdin",
            stdin="pw1\n",
            env=env,
        )
    )
    ok(run("users", "add", url, "bob", "--password-stdin", stdin="pw2\n", env=env))
    line = fails(run("users", "add", url, "bob", "--password-stdin", stdin="x\n", env=env), 4)
    assert line == "Error: user 'bob' already exists"  # not the record's key
    fails(run("users", "add", url, "carol", "--password-stdin", stdin="x\n"), 2, "secret")
    assert ok(run("users", "list", url)).stdout.split() == ["alice", "bob"]
    assert lines(ok(run("users", "list", url, "--json"))) == [
        {"username": "alice"},
        {"username": "bob"},
    ]
    # The application's own SimpleAuthStore, with the same secret, lets alice in.
    with open_store(url) as store:
        auth = SimpleAuthStore(store, make_encoder(b"app-secret"))
        auth.connect({"username": "alice", "password": "pw1"})
        assert auth.user_tag == "alice"
        with pytest.raises(AuthenticationError):
            SimpleAuthStore(store, make_encoder(b"app-secret")).connect(("bob", "wrong"))
    ok(run("users", "rm", url, "bob"))
    assert fails(run("users", "rm", url, "bob"), 3) == "Error: no user 'bob'"
    assert ok(run("users", "list", url)).stdout.split() == ["alice"]


def test_every_command_has_help_with_examples(run: Run) -> None:
    from storekeeper.cli.main import COMMANDS

    groups = {"meta": ["", "get", "set", "update"], "users": ["", "add", "rm", "list"]}
    for name in COMMANDS:
        for sub in groups.get(name, [""]):
            args = [name, sub, "--help"] if sub else [name, "--help"]
            text = ok(run(*args)).stdout
            assert "Examples:" in text and "storekeeper" in text, args


def test_completion_script(run: Run) -> None:
    assert "_STOREKEEPER_COMPLETE" in ok(run("completion", "bash")).stdout
    fails(run("completion", "tcsh"), 2)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(run: Run, url: str, tmp_path: Path) -> None:
    from storekeeper.cli.conventions import progress_events
    from storekeeper.store.transfer import Folder, transfer

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big").write_bytes(os.urandom(3 << 20))
    screen = Terminal()
    with open_store(url) as store, progress_events(screen) as manager:
        assert manager is not None
        transfer(Folder(tmp_path / "in"), store, event_manager=manager)
    drawn = screen.getvalue()
    assert "Copying 1 key" in drawn and "3.0 MiB" in drawn and "/s" in drawn
    with progress_events(io.StringIO()) as manager:
        assert manager is None
    result = ok(run("cp", str(tmp_path / "in"), f"sqlite:///{tmp_path / 'p.db'}"))
    assert result.stderr.splitlines() == ["copied 1 key (3145728 bytes), 0 unchanged"]
