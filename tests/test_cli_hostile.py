"""Hostile black-box probes of the ``storekeeper`` command, written from its user
documentation and ``--help`` only. A passing test is a promise that held; a broken
promise is a test of the correct behaviour marked ``xfail(strict=True, reason="BUG: ...")``.

Most probes go through click's runner (fast); those that need a real process (SIGKILL,
a closed pipe, a terminal, two processes at once, deep recursion) run the installed
``storekeeper`` script."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from storekeeper import open_store
from storekeeper.cli.main import cli

Run = Callable[..., Result]
SK = str(Path(sys.executable).with_name("storekeeper"))


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    monkeypatch.delenv("STOREKEEPER_URL", raising=False)
    monkeypatch.delenv("STOREKEEPER_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, stdin: bytes | str | None = None, env: Any = None) -> Result:
        return runner.invoke(cli, list(args), input=stdin, env=env)

    return invoke


@pytest.fixture(params=["sqlite", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'h.db'}"
    return (tmp_path / "h-store").as_uri() + "?create=true"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


def fails(result: Result, code: int, text: str = "") -> str:
    """An error exit: *code*, an ``Error:`` line holding *text*, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert text in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def jlines(text: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(o, dict) for o in out), text
    return out


def keys_of(run: Run, store: str, *extra: str) -> list[str]:
    return [o["key"] for o in jlines(ok(run("ls", store, "--json", *extra)).stdout)]


def value(run: Run, store: str, key: str) -> tuple[bytes, dict[str, Any]]:
    data = ok(run("cat", store, "--key", key)).stdout_bytes
    meta = json.loads(ok(run("meta", "get", store, "--key", key)).stdout)
    return data, meta


def sk(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER")}
    env.update(kw.pop("env", {}))
    return subprocess.run(
        [SK, *args], cwd=cwd, env=env, capture_output=True, timeout=120, check=False, **kw
    )


# --------------------------------------------------------------------------- keys

HOSTILE_KEYS = [
    "ключ/🔑.txt",
    "space key",
    "k#hash#2",
    "q?x=1&y",
    "pct%20%2F",
    "a/../b",
    "/lead",
    "trail/",
    "nl\nkey",
    "tab\tkey",
    "x" * 2000,
]


def test_hostile_keys_round_trip(run: Run, url: str) -> None:
    for i, key in enumerate(HOSTILE_KEYS):
        ok(run("put", url, "--key", key, "-m", f"i={i}", stdin=f"v{i}"))
    assert sorted(keys_of(run, url)) == sorted(HOSTILE_KEYS)
    for i, key in enumerate(HOSTILE_KEYS):
        assert value(run, url, key) == (f"v{i}".encode(), {"i": i})


def test_hash_inside_key_after_url_fragment(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#k#2", stdin="x"))
    assert keys_of(run, store) == ["k#2"]
    assert ok(run("cat", "#k#2", env={"STOREKEEPER_URL": store})).stdout == "x"
    # '?' and '%' after '#' are part of the key, not decoded
    ok(run("put", f"{store}#we?ird%20key", stdin="y"))
    assert "we?ird%20key" in keys_of(run, store)


def test_bare_key_with_hash_uses_env_store(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", store, "--key", "k#2", stdin="x"))
    assert ok(run("cat", "k#2", env={"STOREKEEPER_URL": store})).stdout == "x"


def test_empty_key_refused(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    fails(run("put", store, "--key", "", stdin="x"), 2, "non-empty")
    fails(run("put", f"{store}#", stdin="x"), 2)
    assert not (tmp_path / "a.db").exists()  # refused before the store was opened


def test_nul_and_unicode_in_metadata_round_trip(run: Run, url: str) -> None:
    meta = {"nul": "a\u0000b", "emoji": "🔑", "nested": {"l": [1, {"x": None}]}}
    ok(run("put", url, "--key", "k", "--meta", json.dumps(meta), stdin="d"))
    assert value(run, url, "k") == (b"d", meta)


# --------------------------------------------------------------------------- metadata

BAD_META = [
    ("--meta", "[1,2]"),
    ("--meta", '{"a": NaN}'),
    ("--meta", '{"a": Infinity}'),
    ("--meta", "{bad"),
    ("--meta", '"str"'),
    ("--meta", "null"),
    ("--meta", "5"),
    ("-m", "noequals"),
    ("-m", "=v"),
    ("--meta", "{" * 300 + "}" * 300),
    ("--meta", '{"a":' + "[" * 500 + "]" * 500 + "}"),
]


@pytest.mark.parametrize(("opt", "bad"), BAD_META, ids=lambda v: str(v)[:20])
def test_bad_metadata_is_usage_error_and_leaves_value(
    run: Run, tmp_path: Path, opt: str, bad: str
) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#k", "-m", "a=1", stdin="orig"))
    fails(run("put", f"{store}#k", opt, bad, stdin="new"), 2)
    fails(run("meta", "set", f"{store}#k", *([bad] if opt == "--meta" else [opt, bad])), 2)
    fails(run("meta", "update", f"{store}#k", *([bad] if opt == "--meta" else [opt, bad])), 2)
    assert value(run, store, "k") == (b"orig", {"a": 1})


def test_m_values_json_or_string(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    args = ["-m", "n=5", "-m", "b=true", "-m", "l=[1,2]", "-m", 's="007"', "-m", "z=007"]
    args += ["-m", "nan=NaN", "-m", "e=", "-m", "eq=a=b", "-m", "u=http://x"]
    ok(run("put", f"{store}#k", *args, stdin=""))
    _, meta = value(run, store, "k")
    assert meta == {
        "n": 5,
        "b": True,
        "l": [1, 2],
        "s": "007",
        "z": "007",
        "nan": "NaN",
        "e": "",
        "eq": "a=b",
        "u": "http://x",
    }


@pytest.mark.parametrize("opt", ["--meta", "-m"])
def test_very_deep_metadata_is_usage_error(tmp_path: Path, opt: str) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    assert sk("put", f"{store}#k", "-m", "a=1", cwd=tmp_path, input=b"orig").returncode == 0
    deep = "[" * 5000 + "]" * 5000
    arg = '{"a":' + deep + "}" if opt == "--meta" else "a=" + deep
    proc = sk("put", f"{store}#k", opt, arg, cwd=tmp_path, input=b"new")
    assert sk("cat", f"{store}#k", cwd=tmp_path).stdout == b"orig"
    assert b"Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert b"RecursionError" not in proc.stderr


def test_metadata_edge_values(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    huge = {"s": "x" * (4 << 20), "l": list(range(100_000))}
    ok(run("put", f"{store}#huge", "--meta", json.dumps(huge), stdin="d"))
    assert json.loads(ok(run("meta", "get", f"{store}#huge")).stdout) == huge
    wide = {f"n{i}": i for i in range(5000)}
    ok(run("put", f"{store}#wide", "--meta", json.dumps(wide), stdin="d"))
    assert ok(run("query", store, "n4999=4999")).stdout == "wide\n"
    ok(run("put", f"{store}#dup", "-m", "a=1", "-m", "a=2", stdin="d"))
    assert value(run, store, "dup")[1] == {"a": 2}
    ok(run("put", f"{store}#bigint", "-m", "n=123456789012345678901234567890", stdin="d"))
    assert value(run, store, "bigint")[1] == {"n": 123456789012345678901234567890}
    fails(run("put", f"{store}#inf", "--meta", '{"x": 1e999}', stdin="d"), 2, "JSON")
    fails(run("put", f"{store}#sur", "--meta", '{"\\ud800": 1}', stdin="d"), 2, "surrogate")
    fails(run("cat", f"{store}#inf"), 3)
    fails(run("cat", f"{store}#sur"), 3)


def test_debug_adds_traceback(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#k", stdin="x"))
    plain = run("cat", f"{store}#nope")
    fails(plain, 3, "nope")
    debug = run("--debug", "cat", f"{store}#nope")
    assert debug.exit_code == 3
    assert "Traceback" in debug.stderr


# --------------------------------------------------------------------------- conflicts


def _version(run: Run, key: str) -> str:
    return str(json.loads(ok(run("head", key, "--json")).stdout)["version"])


def test_conflicts_exit_4_and_leave_value(run: Run, url: str) -> None:
    ok(run("put", f"{url}#k", "-m", "a=1", stdin="orig"))
    v = _version(run, f"{url}#k")
    fails(run("put", f"{url}#k", "--create-only", stdin="new"), 4)
    fails(run("put", f"{url}#k", "--create-only", "-m", "a=2", stdin="new"), 4)
    for bad in ["123", "abc", "", v + "0"]:
        fails(run("put", f"{url}#k", "--if-version", bad, "-m", "b=2", stdin="new"), 4)
        fails(run("meta", "set", f"{url}#k", "-m", "b=2", "--if-version", bad), 4)
        fails(run("meta", "update", f"{url}#k", "-m", "b=2", "--if-version", bad), 4)
    assert value(run, url, "k") == (b"orig", {"a": 1})
    assert _version(run, f"{url}#k") == v
    # a missing key is not at any version, and is not created
    fails(run("put", f"{url}#nokey", "--if-version", "5", stdin="new"), 4)
    fails(run("cat", f"{url}#nokey"), 3)
    # the right version writes
    ok(run("put", f"{url}#k", "--if-version", v, stdin="new"))
    assert value(run, url, "k") == (b"new", {"a": 1})


def test_if_version_with_create_only_is_usage(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#k", stdin="orig"))
    fails(run("put", f"{store}#k", "--if-version", "1", "--create-only", stdin="new"), 2)
    assert value(run, store, "k") == (b"orig", {})


def test_put_json_reports_new_version(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    out = jlines(ok(run("put", f"{store}#k", "--json", stdin="x")).stdout)
    assert out[0]["version"] == _version(run, f"{store}#k")


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("store", "code", "text"),
    [
        ("bogus://x", 2, "bogus"),
        ("sqlite:///{d}/a.db?durabel=1", 2, "durabel"),
        ("sqlite:///{d}/a.db?durable=nope", 2, "durable"),
        ("sqlite:///{d}/a.db?durable", 2, "durable"),
        ("sqlite:///{d}/a.db?durable=false&durable=true", 2, "twice"),
        ("sqlite:///{d}/a.db?chunk_size=0", 2, "chunk_size"),
        ("sqlite:///{d}/a.db?timeout=nan", 2, "timeout"),
        ("memory://foo", 2, "memory"),
        ("sqlite:/x.db", 2, "sqlite"),
        ("file://host/tmp/x", 2, "host"),
        ("file://{d}/missing", 3, "not found"),
        ("nocolon", 2, "scheme"),
    ],
)
def test_bad_store_urls(run: Run, tmp_path: Path, store: str, code: int, text: str) -> None:
    store = store.format(d=tmp_path)
    fails(run("ls", store), code, text)
    if ":" in store:
        fails(run("put", store, "--key", "k", stdin="x"), code, text)


def test_store_url_with_fragment_is_refused_where_a_store_is_wanted(
    run: Run, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    fails(run("ls", f"{store}#k"), 2, "fragment")
    fails(run("cp", f"{store}#k", str(tmp_path / "out")), 2, "fragment")
    assert not (tmp_path / "out").exists()


def test_percent_encoded_hash_in_paths(run: Run, tmp_path: Path) -> None:
    d = tmp_path.as_uri()
    ok(run("put", f"{d}/h%23dir?create=true#k1", stdin="hi"))
    assert (tmp_path / "h#dir").is_dir()
    assert ok(run("cat", f"{d}/h%23dir#k1")).stdout == "hi"
    ok(run("put", f"sqlite:///{tmp_path}/h%23.db#k", stdin="x"))
    assert (tmp_path / "h#.db").is_file()
    # sqlite table names with hostile characters are quoted, not executed
    ok(run("put", f"sqlite:///{tmp_path}/t.db?table=a;drop#k", stdin="x"))
    assert keys_of(run, f"sqlite:///{tmp_path}/t.db?table=a;drop") == ["k"]


def test_storekeeper_url_default(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    env = {"STOREKEEPER_URL": store}
    ok(run("put", "notes/a", "-m", "a=1", stdin="A", env=env))
    ok(run("put", "--key", "notes/b", stdin="B", env=env))
    assert ok(run("cat", "notes/a", "#notes/b", env=env)).stdout == "AB"
    assert [o["key"] for o in jlines(ok(run("ls", "--json", env=env)).stdout)] == [
        "notes/a",
        "notes/b",
    ]
    fails(run("ls", env={"STOREKEEPER_URL": ""}), 2, "STOREKEEPER_URL")
    fails(run("cat", "k"), 2, "STOREKEEPER_URL")
    fails(run("ls", env={"STOREKEEPER_URL": f"{store}#k"}), 2, "fragment")


def test_reading_missing_sqlite_file_creates_nothing(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    res = run("ls", f"sqlite:///{missing}")
    run("cat", f"sqlite:///{missing}#k")
    run("rm", f"sqlite:///{missing}", "--prefix", "a", "--dry-run")
    assert sorted(os.listdir(tmp_path)) == []
    assert res.exit_code == 3


# --------------------------------------------------------------------------- arguments


def test_wrong_argument_combinations(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#k", stdin="orig"))
    fails(run("put", f"{store}#k", "--key", "other", stdin="x"), 2, "once")
    fails(run("put", "#k", "a", "b", env={"STOREKEEPER_URL": store}), 2)
    fails(run("put", store, "-", "-", stdin="x"), 2)
    fails(run("cat"), 2)
    fails(run("ls", store, "extra"), 2)
    fails(run("ls", "--bogus"), 2)
    fails(run("completion", "powershell"), 2)
    assert value(run, store, "k") == (b"orig", {})


def test_usage_error_is_one_line(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    res = run("put", f"{store}#k", "--meta", "[1]", stdin="x")
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_meta_positional_json_error_names_the_argument(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#k", stdin="x"))
    line = fails(run("meta", "update", f"{store}#k", "[1]"), 2)
    assert "--meta" not in line


def test_put_input_files(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    ok(run("put", f"{store}#empty", stdin=b""))
    assert value(run, store, "empty") == (b"", {})
    big = os.urandom(3 << 20)
    ok(run("put", f"{store}#big", stdin=big))
    assert ok(run("cat", f"{store}#big")).stdout_bytes == big
    fails(run("put", f"{store}#x", str(tmp_path / "nonexistent")), 3)
    fails(run("cat", f"{store}#x"), 3)
    ok(run("get", f"{store}#big", "-o", "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == big
    fails(run("get", f"{store}#big", "-o", str(tmp_path / "no" / "dir" / "x")), 1, "cannot write")
    assert not (tmp_path / "no").exists()
    # a missing key in the middle of cat: earlier keys printed, exit 3
    res = run("cat", f"{store}#empty", f"{store}#nope", f"{store}#big")
    fails(res, 3, "nope")


def test_put_from_directory_is_an_error(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    (tmp_path / "d").mkdir()
    fails(run("put", f"{store}#x", str(tmp_path / "d")), 1, "directory")
    fails(run("cat", f"{store}#x"), 3)


# --------------------------------------------------------------------------- query


@pytest.fixture
def qstore(run: Run, tmp_path: Path) -> str:
    store = f"sqlite:///{tmp_path / 'q.db'}"
    for i in range(1, 7):
        ok(run("put", f"{store}#q{i}", "-m", f"n={i}", "-m", f"s=v{i}", "-m", f"t=a:b={i}"))
    ok(run("put", f"{store}#qs", "-m", "u=http://x", "-m", "eq=a=b", "-m", "e=", stdin=""))
    for key, tag in [("x1", "exists"), ("x2", "in:abc"), ("x3", "range:1..2")]:
        ok(run("put", f"{store}#{key}", "-m", f"tag={json.dumps(tag)}", stdin=""))
    return store


QUERIES = [
    ("n=range:2..4", ["q2", "q3"]),
    ("n=range:2..=4", ["q2", "q3", "q4"]),
    ("n=range:..2", ["q1"]),
    ("n=range:5..", ["q5", "q6"]),
    ("n=range:5..1", []),
    ("n=in:1,2", ["q1", "q2"]),
    ("n=in:", []),
    ("s=in:v1,v3", ["q1", "q3"]),
    ("t=a:b=3", ["q3"]),
    ("u=http://x", ["qs"]),
    ("eq=a=b", ["qs"]),
    ("e=", ["qs"]),
    ("e=in:", ["qs"]),
    ('tag="exists"', ["x1"]),
    ('tag="in:abc"', ["x2"]),
    ('tag="range:1..2"', ["x3"]),
    ("tag=exists", ["x1", "x2", "x3"]),
    ("n=!exists", ["qs", "x1", "x2", "x3"]),
    ("s=prefix:v", ["q1", "q2", "q3", "q4", "q5", "q6"]),
    ("n=prefix:", []),
    ("n=5", ["q5"]),
    ('n="5"', []),
    ("n=[1", []),
]


@pytest.mark.parametrize(("term", "expected"), QUERIES)
def test_query_terms(run: Run, qstore: str, term: str, expected: list[str]) -> None:
    got = [o["key"] for o in jlines(ok(run("query", qstore, term, "--json")).stdout)]
    assert got == expected


@pytest.mark.parametrize("term", ["n=range:1", "n=range:..", "=x", "novalue"])
def test_query_bad_terms(run: Run, qstore: str, term: str) -> None:
    fails(run("query", qstore, term), 2)


def test_query_select(run: Run, qstore: str) -> None:
    out = jlines(ok(run("query", qstore, "n=1", "--select", "s,n,missing", "--json")).stdout)
    assert out == [{"key": "q1", "metadata": {"s": "v1", "n": 1}}]


# --------------------------------------------------------------------------- --json


def test_json_on_every_listing_command(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    for k in ["d/a/1", "d/b", "nl\nkey", 'q"uote']:
        ok(run("put", store, "--key", k, "-m", "a=1", stdin="x"))
    outputs = {
        "ls": run("ls", store, "--json"),
        "ls-long": run("ls", store, "--json", "--long"),
        "ls-delim": run("ls", store, "--json", "--delimiter", "/", "--prefix", "d/"),
        "glob": run("glob", store, "d/*", "--json"),
        "query": run("query", store, "a=1", "--select", "a", "--json"),
        "info": run("info", store, "--json"),
        "head": run("head", f"{store}#d/b", "--json"),
        "rm-dry": run("rm", store, "--prefix", "d/", "--dry-run", "--json"),
        "cp-dry": run("cp", store, str(tmp_path / "o"), "--dry-run", "--json"),
        "sync-dry": run("sync", store, str(tmp_path / "o"), "--dry-run", "--json"),
    }
    ok(run("users", "add", store, "alice", "--password-stdin", "--secret", "s", stdin="p\n"))
    outputs["users"] = run("users", "list", store, "--json")
    counts = {name: len(jlines(ok(res).stdout)) for name, res in outputs.items()}
    assert counts == {
        "ls": 4,
        "ls-long": 4,
        "ls-delim": 2,
        "glob": 2,
        "query": 4,
        "info": 1,
        "head": 1,
        "rm-dry": 2,
        "cp-dry": 4,
        "sync-dry": 4,
        "users": 1,
    }
    assert jlines(outputs["ls-delim"].stdout)[0] == {"key": "d/a/", "folder": True}
    assert jlines(outputs["users"].stdout) == [{"username": "alice"}]
    assert keys_of(run, store, "--prefix", "d/") == ["d/a/1", "d/b"]  # dry run
    assert not (tmp_path / "o").exists()


def test_users_conflicts_and_missing(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    add = ("users", "add", store, "alice", "--password-stdin", "--secret", "s")
    ok(run(*add, stdin="p\n"))
    fails(run(*add, stdin="p\n"), 4)
    fails(run("users", "rm", store, "bob"), 3)
    ok(run("users", "rm", store, "alice"))
    assert ok(run("users", "list", store, "--json")).stdout == ""


# --------------------------------------------------------------------------- rm / sync prefixes


def _fill(run: Run, store: str, keys: list[str], data: str = "x") -> None:
    for k in keys:
        ok(run("put", store, "--key", k, "-m", f"k={json.dumps(k)}", stdin=data))


def test_rm_prefix_only_under_prefix(run: Run, url: str) -> None:
    _fill(run, url, ["ab/1", "ab/2", "abc/1", "ab", "a", "b", "AB/1"])
    ok(run("rm", url, "--prefix", "ab/", "--dry-run"))
    assert len(keys_of(run, url)) == 7
    ok(run("rm", url, "--prefix", "ab/"))
    assert keys_of(run, url) == ["AB/1", "a", "ab", "abc/1", "b"]
    fails(run("rm", url, "nope"), 3)
    ok(run("rm", url, "nope", "-f"))
    assert keys_of(run, url) == ["AB/1", "a", "ab", "abc/1", "b"]


def test_prefixes_with_like_wildcards_and_case(run: Run, url: str) -> None:
    keys = ["a_b/1", "axb/1", "a%b/1", "azzb/1", "A/1", "a/1", "a\\b", "a\\\\b"]
    _fill(run, url, keys)
    assert keys_of(run, url, "--prefix", "a_b/") == ["a_b/1"]
    assert keys_of(run, url, "--prefix", "a%") == ["a%b/1"]
    assert keys_of(run, url, "--prefix", "A") == ["A/1"]
    assert keys_of(run, url, "--prefix", "a\\") == ["a\\\\b", "a\\b"]
    q = ok(run("query", url, "k=prefix:a_", "--json")).stdout
    assert [o["key"] for o in jlines(q)] == ["a_b/1"]
    ok(run("rm", url, "--prefix", "a_"))
    assert sorted(keys_of(run, url)) == sorted(set(keys) - {"a_b/1"})


def test_rm_with_a_missing_key_is_not_half_done(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    _fill(run, store, ["k1", "k2", "k3"])
    fails(run("rm", store, "k1", "nope", "k2"), 3, "nope")
    left = keys_of(run, store)
    assert left in (["k1", "k2", "k3"], ["k3"]), left


def test_rm_with_a_bad_url_removes_nothing(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    _fill(run, store, ["k1", "k2"])
    fails(run("rm", store, "k1", "bogus://x#k2"), 2, "bogus")
    assert keys_of(run, store) == ["k1", "k2"]


def test_rm_force_and_mixed_selectors(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    _fill(run, store, ["k1", "k2", "k3", "p/1", "p/2"])
    fails(run("rm", store), 2)
    out = jlines(
        ok(run("rm", store, "nope", "k1", "--key", "k3", "--prefix", "p/", "-f", "--json")).stdout
    )
    assert sorted(o["key"] for o in out if o["removed"]) == ["k1", "k3", "p/1", "p/2"]
    assert keys_of(run, store) == ["k2"]


def test_sync_delete_with_prefix_off_slash_boundary(run: Run, tmp_path: Path) -> None:
    src, dst = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'd.db'}"
    _fill(run, src, ["ab/1", "ab/2", "a", "b"])
    _fill(run, dst, ["ab/1", "abd", "abc/9", "a", "b", "zz", "aa"], data="old")
    ok(run("sync", src, dst, "--prefix", "ab", "--delete"))
    assert keys_of(run, dst) == ["a", "aa", "ab/1", "ab/2", "b", "zz"]
    assert value(run, dst, "a")[0] == b"old"  # outside the prefix: untouched


# --------------------------------------------------------------------------- cp / sync


def _side(kind: str, tmp_path: Path, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    if kind == "file":
        return (tmp_path / name).as_uri() + "?create=true"
    return str(tmp_path / name)


PAIRS = [
    (a, b)
    for a in ["sqlite", "file", "folder"]
    for b in ["sqlite", "file", "folder"]
    if not (a == b == "folder")
]


@pytest.mark.parametrize(("skind", "dkind"), PAIRS)
def test_cp_sync_between_kinds(run: Run, tmp_path: Path, skind: str, dkind: str) -> None:
    src, dst = _side(skind, tmp_path, "src"), _side(dkind, tmp_path, "dst")
    keys = ["a", "sub/b", "sub/deep/c", "sp ace#?%.txt", "ключ"]
    if skind == "folder":
        for k in keys:
            (tmp_path / "src" / k).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / k).write_text(f"data {k}")
    else:
        for k in keys:
            ok(run("put", src, "--key", k, "-m", f"k={json.dumps(k)}", stdin=f"data {k}"))
    res = ok(run("cp", src, dst, "--json"))
    assert sorted(o["key"] for o in jlines(res.stdout)) == sorted(keys)
    assert "copied 5 keys" in res.stderr
    if dkind == "folder":
        for k in keys:
            assert (tmp_path / "dst" / k).read_text() == f"data {k}"
    else:
        for k in keys:
            meta = {} if skind == "folder" else {"k": k}
            assert value(run, dst, k) == (f"data {k}".encode(), meta)
    again = ok(run("sync", src, dst, "--json"))
    assert again.stdout == ""
    assert "copied 0 keys" in again.stderr
    assert ok(run("sync", src, dst, "--checksum", "--delete")).stderr.startswith("copied 0 keys")


def test_metadata_change_only_is_copied(run: Run, tmp_path: Path) -> None:
    src, dst = _side("sqlite", tmp_path, "s"), _side("file", tmp_path, "d")
    _fill(run, src, ["a", "b"])
    ok(run("cp", src, dst))
    ok(run("meta", "update", f"{src}#a", "-m", "new=1"))
    out = jlines(ok(run("sync", src, dst, "--json")).stdout)
    assert [o["key"] for o in out] == ["a"]
    assert value(run, dst, "a")[1] == {"k": "a", "new": 1}


def test_file_and_dir_named_alike_into_folder(run: Run, tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 's.db'}"
    _fill(run, src, ["x", "x/y"])
    fails(run("cp", src, str(tmp_path / "out")), 2, "x/y")
    assert not (tmp_path / "out").exists()


def test_source_folder_symlinks(run: Run, tmp_path: Path) -> None:
    """Documents what happens (not promised either way): a symlink to a file is
    followed, even out of the folder; a symlink to a directory is skipped."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("A")
    (src / "sub" / "b").write_text("B")
    (tmp_path / "outside").write_text("SECRET")
    (src / "link").symlink_to("a")
    (src / "escape").symlink_to(tmp_path / "outside")
    (src / "dirlink").symlink_to("sub")
    dst = f"sqlite:///{tmp_path / 'd.db'}"
    ok(run("cp", str(src), dst))
    assert keys_of(run, dst) == ["a", "escape", "link", "sub/b"]
    assert value(run, dst, "escape")[0] == b"SECRET"


@pytest.mark.parametrize("key", ["../../escape", "/abs_lead", "a/../b", "..", "x/./y", "x//y"])
def test_path_escaping_keys_refused_into_folder(run: Run, tmp_path: Path, key: str) -> None:
    src = f"sqlite:///{tmp_path / 's.db'}"
    _fill(run, src, ["ok", key])
    work = tmp_path / "w1" / "w2"
    work.mkdir(parents=True)
    fails(run("cp", src, str(work / "out")), 2, "cannot be a file path")
    assert sorted(p.name for p in work.iterdir()) == []
    assert not (tmp_path / "escape").exists()
    assert not Path("/abs_lead").exists()


def test_get_default_output_stays_here(run: Run, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    work = tmp_path / "w1" / "w2"
    work.mkdir(parents=True)
    os.chdir(work)
    for key in ["..", "x/..", ".", "x/."]:
        ok(run("put", store, "--key", key, stdin="d"))
        fails(run("get", store, "--key", key), 2, "-o FILE")
    ok(run("put", store, "--key", "../../escape", stdin="d"))
    ok(run("get", store, "--key", "../../escape"))
    assert sorted(p.name for p in work.iterdir()) == ["escape"]
    assert not (tmp_path / "escape").exists()


def test_dangling_symlink_in_source_folder(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("A")
    (src / "dangling").symlink_to(tmp_path / "gone")
    dst = f"sqlite:///{tmp_path / 'd.db'}"
    ok(run("sync", str(src), dst))
    assert keys_of(run, dst) == ["a"]


def test_source_file_named_like_a_temp_file_is_copied(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / ".x.0123456789ab.tmp").write_text("mine")
    (src / ".hidden").write_text("h")
    dst = f"sqlite:///{tmp_path / 'd.db'}"
    ok(run("cp", str(src), dst))
    assert keys_of(run, dst) == [".hidden", ".x.0123456789ab.tmp"]


def test_stale_temp_files_are_cleaned_by_sync_delete(run: Run, tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 's.db'}"
    _fill(run, src, ["k/00001"])
    out = tmp_path / "out" / "k"
    out.mkdir(parents=True)
    (out / ".00001.9cefa6ad6315.tmp").write_bytes(b"half")  # as SIGKILL left it
    ok(run("sync", src, str(tmp_path / "out"), "--delete"))
    assert [p.name for p in out.iterdir()] == ["00001"]


def test_dry_run_creates_no_sqlite_target(run: Run, tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 's.db'}"
    _fill(run, src, ["a"])
    ok(run("cp", src, f"sqlite:///{tmp_path / 'new.db'}", "--dry-run"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("new")) == []


def test_dry_run_creates_no_file_target(run: Run, tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 's.db'}"
    _fill(run, src, ["a"])
    ok(run("sync", src, (tmp_path / "new").as_uri() + "?create=true", "--dry-run"))
    assert not (tmp_path / "new").exists()


def test_sync_delete_from_missing_sqlite_source_keeps_target(run: Run, tmp_path: Path) -> None:
    dst = _side("file", tmp_path, "backup")
    _fill(run, dst, ["a", "b"])
    res = run("sync", f"sqlite:///{tmp_path / 'typo.db'}", dst, "--delete")
    assert keys_of(run, dst) == ["a", "b"]
    fails(res, 3)


def test_sync_delete_from_missing_folder_or_file_store_keeps_target(
    run: Run, tmp_path: Path
) -> None:
    dst = _side("sqlite", tmp_path, "backup")
    _fill(run, dst, ["a", "b"])
    fails(run("sync", str(tmp_path / "nosuchdir"), dst, "--delete"), 3, "nosuchdir")
    fails(run("sync", (tmp_path / "nosuch").as_uri(), dst, "--delete"), 3, "not found")
    assert keys_of(run, dst) == ["a", "b"]


def test_sync_store_onto_itself(run: Run, tmp_path: Path) -> None:
    store = _side("sqlite", tmp_path, "s")
    _fill(run, store, ["a", "b"])
    first = run("sync", store, store)
    if first.exit_code == 2:
        return
    ok(first)
    again = ok(run("sync", store, store))
    assert again.stderr.startswith("copied 0 keys"), again.stderr
    assert "warning" not in again.stderr


def test_cp_folder_into_its_own_subfolder(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("A")
    first = run("cp", str(src), str(src / "sub"))
    if first.exit_code == 0:
        ok(run("cp", str(src), str(src / "sub")))
    assert not (src / "sub" / "sub").exists()


def test_dry_run_writes_nothing_to_existing_targets(run: Run, tmp_path: Path) -> None:
    src, dst = _side("sqlite", tmp_path, "s"), _side("file", tmp_path, "d")
    _fill(run, src, ["a", "b"])
    _fill(run, dst, ["b", "c"], data="old")
    res = ok(run("sync", src, dst, "--delete", "--dry-run", "--json"))
    assert all(not o["done"] for o in jlines(res.stdout))
    assert keys_of(run, dst) == ["b", "c"]
    assert value(run, dst, "b")[0] == b"old"
    ok(run("sync", src, str(tmp_path / "folder"), "--dry-run", "--delete"))
    assert not (tmp_path / "folder").exists()


# --------------------------------------------------------------------------- processes


def test_closed_stdout_no_traceback(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'a.db'}"
    assert sk("put", f"{store}#big", cwd=tmp_path, input=os.urandom(4 << 20)).returncode == 0
    for args in (["cat", f"{store}#big"], ["get", f"{store}#big", "-o", "-"]):
        proc = subprocess.Popen([SK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(1)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        proc.wait(60)
        assert b"Traceback" not in err
        assert len(err.strip().splitlines()) <= 1, err


def _make_source(tmp_path: Path, n: int, size: int) -> str:
    src = f"sqlite:///{tmp_path / 'ksrc.db'}"
    with open_store(src) as store:
        for i in range(n):
            store.set(f"k/{i:05d}", (os.urandom(size), {"i": i}))
    return src


def _read(store: Any, key: str) -> tuple[bytes, dict[str, Any]]:
    value = store.get(key)
    with value.data as stream:
        return stream.read(), dict(value.metadata)


def _check_copy(src: str, dst: str, n: int) -> None:
    with open_store(src) as s, open_store(dst) as d:
        keys = list(d.list_keys(""))
        assert keys == list(s.list_keys(""))
        assert len(keys) == n
        for key in keys:
            assert _read(d, key) == _read(s, key)


@pytest.mark.parametrize("dkind", ["sqlite", "file", "folder"])
def test_sigkill_during_cp_then_rerun(tmp_path: Path, dkind: str) -> None:
    n = 600
    src = _make_source(tmp_path, n, 20_000)
    dst = _side(dkind, tmp_path, "dst")
    proc = subprocess.Popen([SK, "cp", src, dst], stderr=subprocess.DEVNULL)
    time.sleep(0.55)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if dkind == "folder" and (tmp_path / "dst").exists():
        partial = [p for p in (tmp_path / "dst").rglob("*") if p.is_file()]
        for p in partial:  # no half-written file under a key's name
            assert p.stat().st_size in (20_000,) or p.name.startswith("."), p
    again = sk("cp", src, dst, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    third = sk("sync", src, dst, "--delete", cwd=tmp_path)
    assert third.stderr.startswith(b"copied 0 keys"), third.stderr
    if dkind == "folder":
        files = sorted(
            p.relative_to(tmp_path / "dst").as_posix()
            for p in (tmp_path / "dst").rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")  # see test_stale_temp_files...
        )
        assert files == [f"k/{i:05d}" for i in range(n)]
        back = f"sqlite:///{tmp_path / 'back.db'}"
        assert sk("cp", dst, back, cwd=tmp_path).returncode == 0
        with open_store(src) as s, open_store(back) as b:
            assert all(_read(s, k)[0] == _read(b, k)[0] for k in s.list_keys(""))
    else:
        _check_copy(src, dst.replace("?create=true", ""), n)


def test_sigkill_folder_into_store_then_rerun(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(400):
        p = src / f"d{i % 7}" / f"f{i:04d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(15_000))
    dst = f"sqlite:///{tmp_path / 'd.db'}"
    proc = subprocess.Popen([SK, "cp", str(src), dst], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sk("cp", str(src), dst, cwd=tmp_path).returncode == 0
    assert sk("cp", str(src), dst, cwd=tmp_path).stderr.startswith(b"copied 0 keys")
    with open_store(dst) as d:
        assert len(list(d.list_keys(""))) == 400
        for p in src.rglob("*"):
            if p.is_file():
                assert _read(d, p.relative_to(src).as_posix())[0] == p.read_bytes()


def test_concurrent_cp_into_one_store(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = _make_source(tmp_path, 300, 10_000)
    for i in range(300):  # overlapping key sets, same bytes on both sides
        (tmp_path / "a" / f"x{i:03d}").write_bytes(b"a" * 5000)
    dst = f"sqlite:///{tmp_path / 'd.db'}"
    procs = [
        subprocess.Popen([SK, "cp", src, dst], stderr=subprocess.DEVNULL),
        subprocess.Popen([SK, "cp", str(tmp_path / "a"), dst], stderr=subprocess.DEVNULL),
        subprocess.Popen([SK, "cp", src, dst], stderr=subprocess.DEVNULL),
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with open_store(dst) as d:
        keys = list(d.list_keys(""))
        assert len(keys) == len(set(keys)) == 600
        assert _read(d, "x007")[0] == b"a" * 5000
    assert sk("sync", src, dst, cwd=tmp_path).stderr.startswith(b"copied 0 keys")


def _run_on_pty(args: list[str]) -> tuple[int, bytes, float]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    start = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(60), out, time.monotonic() - start


def test_progress_only_on_a_terminal(tmp_path: Path) -> None:
    src = _make_source(tmp_path, 60, 50_000)
    piped = sk("cp", src, f"sqlite:///{tmp_path / 'p.db'}", cwd=tmp_path)
    assert piped.returncode == 0
    assert piped.stderr.decode().splitlines() == ["copied 60 keys (3000000 bytes), 0 unchanged"]
    assert piped.stdout == b""
    rc, err, _ = _run_on_pty([SK, "cp", src, f"sqlite:///{tmp_path / 't.db'}"])
    assert rc == 0
    assert b"\x1b[" in err and b"Copying" in err
    assert err.rstrip().endswith(b"copied 60 keys (3000000 bytes), 0 unchanged")


def test_progress_redraws_are_throttled(tmp_path: Path) -> None:
    src = _make_source(tmp_path, 250, 20_000)
    rc, err, _ = _run_on_pty([SK, "cp", src, f"sqlite:///{tmp_path / 't.db'}"])
    assert rc == 0
    assert len(err) < 32_000, (len(err), err.count(b"\r"))
