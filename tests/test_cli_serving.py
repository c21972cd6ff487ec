"""``storekeeper serve`` and ``storekeeper export-static``: the commands over the server
and the static export, checked through a second path (HTTP, a StaticURLStore)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from storekeeper.backends.sqlite import SqliteStore
from storekeeper.backends.static import StaticURLStore
from storekeeper.cli.main import cli


def _sqlite_with(path: Path, items: dict[str, bytes]) -> str:
    with SqliteStore(path) as store:
        for key, data in items.items():
            store.set(key, (data, {"size": len(data)}))
    return f"sqlite:///{path}"


def test_export_static_writes_what_a_static_store_reads(tmp_path: Path) -> None:
    url = _sqlite_with(tmp_path / "a.db", {"notes/one": b"1", "two": b"22"})
    result = CliRunner().invoke(cli, ["export-static", url, str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert "exported 2 keys" in result.output
    with StaticURLStore((tmp_path / "site").as_uri() + "/", poll=0) as static:
        assert sorted(static.query_keys()) == ["notes/one", "two"]
        with static.get_data("two") as stream:
            assert stream.read() == b"22"
        assert static.get_metadata("notes/one") == {"size": 1}


def test_export_static_refuses_or_skips_keys_that_cannot_be_paths(tmp_path: Path) -> None:
    url = _sqlite_with(tmp_path / "a.db", {"a": b"x", "a/b": b"y"})
    refused = CliRunner().invoke(cli, ["export-static", url, str(tmp_path / "site")])
    assert refused.exit_code == 2, refused.output
    assert "'a'" in refused.output
    assert not (tmp_path / "site").exists()
    skipped = CliRunner().invoke(
        cli, ["export-static", url, str(tmp_path / "site"), "--skip-invalid"]
    )
    assert skipped.exit_code == 0, skipped.output
    assert "exported 1 keys" in skipped.output
    assert "skipped 'a'" in skipped.output


def test_serve_needs_a_secret_for_auth(tmp_path: Path) -> None:
    url = _sqlite_with(tmp_path / "a.db", {})
    result = CliRunner().invoke(cli, ["serve", url, "--auth"], env={"STOREKEEPER_AUTH_SECRET": ""})
    assert result.exit_code == 2
    assert "--secret" in result.output


def test_serve_refuses_passwords_over_plain_http_off_loopback(tmp_path: Path) -> None:
    url = _sqlite_with(tmp_path / "a.db", {})
    result = CliRunner().invoke(
        cli, ["serve", url, "--auth", "--secret", "k", "--host", "0.0.0.0", "--port", "1"]
    )
    assert result.exit_code == 1
    assert "plain HTTP" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_process_answers_http_and_stops_on_sigint(tmp_path: Path) -> None:
    url = _sqlite_with(tmp_path / "a.db", {"k/1": b"hello"})
    port = _free_port()
    command = [sys.executable, "-m", "storekeeper", "serve", url, "--port", str(port)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/store/k/1/data")
                response = connection.getresponse()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert response.status == 200
        assert response.read() == b"hello"
        connection.request("PUT", "/store/k/2/data", body=b"new")
        assert connection.getresponse().status in (200, 201, 204)
        connection.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
        assert process.returncode == 0, errors.decode(errors="replace")[-2000:]
    with SqliteStore(tmp_path / "a.db") as store:  # what the server wrote, read directly
        with store.get_data("k/2") as stream:
            assert stream.read() == b"new"


def _status(port: int, method: str, path: str, authorization: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers={"Authorization": authorization})
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After") or "", response.read()
    finally:
        connection.close()


def test_serve_login_options_reach_the_server(tmp_path: Path) -> None:
    url = _sqlite_with(tmp_path / "a.db", {})
    env = {"STOREKEEPER_AUTH_SECRET": "k"}
    added = CliRunner().invoke(
        cli, ["users", "add", url, "ann", "--password-stdin"], input="pw\n", env=env
    )
    assert added.exit_code == 0, added.output
    refused = CliRunner().invoke(cli, ["serve", url, "--auth", "--token-idle", "0"], env=env)
    assert refused.exit_code == 2 and "--token-idle" in refused.output
    port = _free_port()
    options = ["--max-tokens", "1", "--max-failed-logins", "2", "--failed-login-window", "900"]
    command = [sys.executable, "-m", "storekeeper", "serve", url, "--auth", "--port", str(port)]
    process = subprocess.Popen(
        [*command, *options], stderr=subprocess.PIPE, env={**os.environ, **env}
    )
    right = "Basic " + base64.b64encode(b"ann:pw").decode()
    wrong = "Basic " + base64.b64encode(b"ann:nope").decode()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, body = _status(port, "POST", "/login", right)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        first = json.loads(body)["token"]
        second = json.loads(_status(port, "POST", "/login", right)[2])["token"]
        assert _status(port, "GET", "/info", f"Bearer {first}")[0] == 401  # pushed out
        assert _status(port, "GET", "/info", f"Bearer {second}")[0] == 200
        assert [_status(port, "GET", "/info", wrong)[0] for _ in range(2)] == [401, 401]
        status, retry_after, _ = _status(port, "GET", "/info", right)
        assert status == 429 and 890 <= int(retry_after) <= 900
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
        assert process.returncode == 0, errors.decode(errors="replace")[-2000:]
