"""The installed ``storekeeper`` command as a real process: the console script and
``python -m storekeeper`` run, errors are one line with the documented exit code, and a
``cp`` killed with SIGKILL midway, run again, ends with every key exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storekeeper import open_store

COMMAND = Path(sys.executable).with_name("storekeeper")


def storekeeper(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    return subprocess.run(
        [str(COMMAND), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        env={**environment, **(env or {})},
    )


def test_console_script_and_module_run(tmp_path: Path) -> None:
    assert COMMAND.exists(), "the console script is installed with the package"
    helped = storekeeper("--help")
    assert helped.returncode == 0 and b"Commands:" in helped.stdout
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert storekeeper("put", f"{url}#k", "-m", "a=1", stdin=b"value").returncode == 0
    module = subprocess.run(
        [sys.executable, "-m", "storekeeper", "ls", "--json"],
        capture_output=True,
        timeout=120,
        check=True,
        env={**os.environ, "STOREKEEPER_URL": url},
    )
    assert [json.loads(line) for line in module.stdout.splitlines()] == [{"key": "k"}]


def test_errors_from_a_real_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    absent = storekeeper("cat", f"{url}#nope")  # a reader never creates the store
    assert absent.returncode == 3 and b"no such SQLite database" in absent.stderr
    assert not (tmp_path / "p.db").exists()
    assert storekeeper("put", f"{url}#k", stdin=b"").returncode == 0
    missing = storekeeper("cat", f"{url}#nope")
    assert missing.returncode == 3 and missing.stdout == b""
    assert missing.stderr.decode().splitlines() == ["Error: key 'nope' does not exist"]
    assert storekeeper("ls", "nope:///x").returncode == 2
    assert storekeeper("put", f"{url}#k", "--meta", "{", stdin=b"").returncode == 2


def test_killed_cp_resumes_without_losing_or_repeating_keys(tmp_path: Path) -> None:
    folder = tmp_path / "tree"
    total = 6000
    for index in range(total):
        path = folder / f"d{index % 40:02}" / f"f{index:05}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(index.to_bytes(4, "big") * 128)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    with open_store(url) as target:
        process = subprocess.Popen(
            [str(COMMAND), "cp", str(folder), url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while sum(1 for _ in target.list_keys()) == 0 and time.monotonic() < deadline:
                assert process.poll() is None, "cp finished before it could be killed"
                time.sleep(0.002)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=120)
        assert process.returncode == -signal.SIGKILL
        copied_before = sorted(target.list_keys())
        assert 0 < len(copied_before) < total
        # Every key there is whole: its data is the file's.
        for key in copied_before:
            assert target.to_bytes(key) == (folder / key).read_bytes()
    rerun = storekeeper("cp", str(folder), url, "--json")
    assert rerun.returncode == 0, rerun.stderr
    actions = [json.loads(line) for line in rerun.stdout.splitlines()]
    # The rerun copies exactly the keys the killed run had not committed.
    assert sorted(action["key"] for action in actions) == sorted(
        {path.relative_to(folder).as_posix() for path in folder.rglob("f*")} - set(copied_before)
    )
    with open_store(url) as target:
        keys = list(target.list_keys())
        assert len(keys) == total == len(set(keys))
        assert all(target.to_bytes(key) == (folder / key).read_bytes() for key in keys[::97])
    assert storekeeper("sync", str(folder), url, "--json").stdout == b""


@pytest.mark.parametrize("command", [["--help"], ["ls", "--help"]])
def test_help_does_not_import_backends(command: list[str]) -> None:
    code = (
        "import sys; from storekeeper.cli.main import main\n"
        f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.startswith(('storekeeper.backends', 'rich',"
        " 'storekeeper.store'))]\n"
        "sys.stderr.write(repr(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=120, check=True
    )
    assert result.stderr.decode().strip() == "[]"


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_two_cp_at_once_into_one_store(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "tree"
    for index in range(300):
        path = folder / f"d{index % 7}" / f"f{index:04}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(index.to_bytes(4, "big") * (1 + index % 300))
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = (tmp_path / "shared").as_uri() + "?create=true"
    processes = [
        subprocess.Popen(
            [str(COMMAND), "cp", str(folder), url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for process in processes:
        _, error = process.communicate(timeout=120)
        assert process.returncode == 0, error
    with open_store(url) as target:
        keys = sorted(target.list_keys())
        assert keys == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("f*"))
        assert all(target.to_bytes(key) == (folder / key).read_bytes() for key in keys)
