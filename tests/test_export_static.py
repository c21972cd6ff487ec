"""export_static: the layout it writes, read back by StaticURLStore; hostile keys; atomic
replacement under readers and under SIGKILL of the exporting process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _static_server import StaticServer
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.static import StaticURLStore
from storekeeper.errors import InvalidKeyError
from storekeeper.export import (
    ExportWarning,
    NotAnExportError,
    export_static,
    layout_problems,
)
from storekeeper.store import open_store

VALUES = {
    "plain": (b"plain data", {"title": "Plain", "n": 1}),
    "empty": (b"", {}),
    "binary": (bytes(range(256)) * 100, {"kind": "bin", "nested": {"a": [1, None, True]}}),
    "docs/guide/intro.txt": (b"intro", {"lang": "\u65e5\u672c\u8a9e", "quote": "\u2028\"'"}),
    "docs/guide/\u00e9t\u00e9 %20?#.md": (b"summer", {"emoji": "\U0001f389"}),
    "docs/readme": (b"read me", {"path": "docs"}),
    ".hidden": (b"h", {"hidden": True}),
    "trailing ": (b"t", {}),
}


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory (None) under *root*, the export's
    generation name written as GEN (every export has its own)."""
    generation = json.loads((root / "generation.json").read_bytes())["generation"]
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix().replace(generation, "GEN")
        raw = None if path.is_dir() else path.read_bytes()
        found[name] = raw if raw is None else raw.replace(generation.encode(), b"GEN")
    return found


def _store(values: dict[str, tuple[bytes, dict[str, object]]]) -> DictMemoryStore:
    store = DictMemoryStore()
    store.connect()
    for key, value in values.items():
        store.set(key, value)
    return store


def test_round_trip_through_http_and_file(tmp_path: Path) -> None:
    source = open_store(f"sqlite:///{tmp_path / 'source.db'}")
    with source:
        for key, value in VALUES.items():
            source.set(key, value)
        summary = export_static(source, tmp_path / "site")
    assert summary.exported == len(VALUES)
    assert summary.skipped == ()
    raw_index = (tmp_path / "site" / "index.json").read_bytes()
    assert raw_index.isascii()
    assert json.loads(raw_index) == {key: metadata for key, (_, metadata) in VALUES.items()}
    assert (tmp_path / "site" / "data" / "docs" / "guide" / "intro.txt").read_bytes() == b"intro"
    with StaticServer(tmp_path / "site") as server:
        for url in (server.url, (tmp_path / "site").as_uri()):
            with StaticURLStore(url, poll=0) as store:
                assert sorted(store.query_keys()) == sorted(VALUES)
                for key, (data, metadata) in VALUES.items():
                    assert store.to_bytes(key) == data, key
                    assert store.get_metadata(key) == metadata, key


def test_a_re_export_equals_a_fresh_one(tmp_path: Path) -> None:
    first = _store(VALUES)
    export_static(first, tmp_path / "site")
    second_values = {"docs": (b"now a file", {"v": 2}), "plain": (b"changed", {"v": 2})}
    second = _store(second_values)
    export_static(second, tmp_path / "site")
    export_static(second, tmp_path / "fresh")
    assert _tree(tmp_path / "site") == _tree(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "site"]  # no leftovers


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (["a", "a/b"], ["'a'", "'a/b'"]),
        (["x/y", "x/y/z/w"], ["'x/y'", "'x/y/z/w'"]),
        (["../up"], ["'../up'", "'..'"]),
        (["a/./b"], ["'a/./b'"]),
        (["/abs"], ["'/abs'", "empty"]),
        (["dir/"], ["'dir/'", "empty"]),
        (["a//b"], ["'a//b'"]),
        (["."], ["'.'"]),
        (["n" * 256], ["longer than 255 bytes"]),
    ],
)
def test_keys_that_cannot_be_paths_are_refused_by_name(
    tmp_path: Path, keys: list[str], named: list[str]
) -> None:
    store = _store({"fine": (b"old", {})})
    export_static(store, tmp_path / "site")
    before = _tree(tmp_path / "site")
    for key in keys:
        store.set(key, (b"x", {}))
    with pytest.raises(InvalidKeyError) as caught:
        export_static(store, tmp_path / "site")
    for text in named:
        assert text in str(caught.value)
    assert _tree(tmp_path / "site") == before
    with pytest.warns(ExportWarning) as warned:
        summary = export_static(store, tmp_path / "site", skip_invalid=True)
    assert keys[0] in summary.skipped
    assert repr(keys[0]) in str(warned[0].message)
    with StaticURLStore((tmp_path / "site").as_uri(), poll=0) as static:
        kept = set(static.query_keys())
    assert kept == {"fine", *keys} - set(summary.skipped)
    assert layout_problems(kept) == {}


def test_a_directory_that_is_not_an_export_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_bytes(b"keep me")
    (tmp_path / "file").write_bytes(b"a file")
    for target in ("home", "file"):
        with pytest.raises(NotAnExportError):
            export_static(_store(VALUES), tmp_path / target)
    assert (tmp_path / "home" / "precious.txt").read_bytes() == b"keep me"
    assert (tmp_path / "file").read_bytes() == b"a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "home"]


def _generation(number: int) -> dict[str, tuple[bytes, dict[str, object]]]:
    return {f"d{i % 3}/k{i}": (b"gen%d;" % number * (i + 1), {"gen": number}) for i in range(30)}


def test_readers_never_see_a_missing_or_mixed_file_during_re_exports(tmp_path: Path) -> None:
    site = tmp_path / "site"
    export_static(_store(_generation(0)), site, durable=False)
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def read() -> None:
        while not stop.is_set():
            try:
                index = json.loads((site / "index.json").read_bytes())
                if len({m["gen"] for m in index.values()}) != 1 or len(index) != 30:
                    failures.append(f"index mixes generations: {index}")
                for key in index:  # every generation holds every key
                    data = (site / "data" / key).read_bytes()
                    gens = set(data.split(b";")[:-1])
                    if len(gens) != 1:
                        failures.append(f"{key} mixes generations: {data!r}")
                reads[0] += 1
            except (OSError, ValueError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for number in range(1, 15):
            export_static(_store(_generation(number)), site, durable=False)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert not failures, failures[:3]
    assert reads[0] > 0
    assert json.loads((site / "index.json").read_bytes())["d0/k0"] == {"gen": 14}


def _generation_of(site: Path) -> int:
    """The one generation every file under *site* holds (fails on a missing or mixed file)."""
    index = json.loads((site / "index.json").read_bytes())
    generations = {m["gen"] for m in index.values()}
    for key in index:
        generations.update(int(g[3:]) for g in (site / "data" / key).read_bytes().split(b";")[:-1])
    assert len(generations) == 1, generations
    return generations.pop()


def test_every_rename_of_an_export_leaves_one_whole_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    export_static(_store(_generation(0)), site, durable=False)
    seen: list[int] = []
    real_rename = os.rename

    def rename(source: object, target: object) -> None:
        try:
            real_rename(source, target)  # type: ignore[arg-type]
        finally:
            seen.append(_generation_of(site))

    monkeypatch.setattr(os, "rename", rename)
    export_static(_store(_generation(1)), site, durable=False)
    assert seen  # the swap went through os.rename at least once (and was checked)
    assert _generation_of(site) == 1


_CHILD = """
import sys
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.export import export_static
store = DictMemoryStore()
store.connect()
for i in range(400):
    store.set(f"d{i % 7}/k{i}", (b"new" * 4000, {"gen": "new", "i": i}))
print("ready", flush=True)
sys.stdin.readline()
export_static(store, sys.argv[1])
"""


def test_a_killed_export_leaves_the_old_export_whole(tmp_path: Path) -> None:
    site = tmp_path / "site"
    export_static(_store({"old": (b"old data", {"gen": "old"})}), site)
    old = _tree(site)
    delays = [0.0, 0.05, 0.15, 0.3]
    random.shuffle(delays)
    kept_old = 0
    for delay in delays:
        with subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(site)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        ) as child:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline() == b"ready\n"
            child.stdin.write(b"go\n")
            child.stdin.flush()
            deadline = time.monotonic() + 60
            while not any(p.name.startswith(".site.export-") for p in tmp_path.iterdir()):
                assert time.monotonic() < deadline, "the child never started its export"
                assert child.poll() is None, "the child finished before it could be killed"
                time.sleep(0.001)
            time.sleep(delay)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        now = _tree(site)
        kept_old += now == old
        if now != old:  # killed after the swap: then the new export is whole
            index = json.loads(now["index.json"] or b"")
            assert len(index) == 400 and all(m["gen"] == "new" for m in index.values())
            export_static(_store({"old": (b"old data", {"gen": "old"})}), site)
    assert kept_old  # a kill at 0 s lands mid-export (400 fsynced files take longer)
    # The next export removes the dead exporters' temporary directories.
    export_static(_store({"old": (b"old data", {"gen": "old"})}), site)
    assert _tree(site) == old
    assert [p.name for p in tmp_path.iterdir()] == ["site"]
