"""The ``storekeeper`` command over the service and HTTP backends: the same commands
and answers as over the embedded stores, each result checked through a second path (a
SQLite copy made by ``cp``, or the backend's own store object)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import _pg_harness
import redis_service
import s3_server
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.cli.main import cli
from storekeeper.server import ServerThread, create_app

BACKENDS = ["postgres", "redis", "http", "s3"]


@pytest.fixture(scope="module")
def _pg_database() -> Iterator[None]:
    yield
    _pg_harness.drop_database()


@pytest.fixture
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A URL of an empty store of the backend the test is parametrized with."""
    kind = request.param
    if kind == "postgres":
        request.getfixturevalue("_pg_database")
        table = _pg_harness.table_for(str(tmp_path))
        yield f"{_pg_harness.database_url()}?table={table}"
    elif kind == "redis":
        client = redis_service.raw_client()
        prefix = redis_service.prefix_for(f"cli-{tmp_path.name}")
        yield redis_service.store_url(prefix)
        redis_service.delete_prefix(client, prefix)
    elif kind == "http":
        backing = SqliteStore(tmp_path / "served.db", durable=False)
        backing.connect()
        with ServerThread(create_app(backing)) as server:
            yield f"{server.url}/store"
        backing.disconnect()
    else:
        server = s3_server.shared()
        for name, value in (server.credentials or {}).items():
            monkeypatch.setenv(name.upper(), value)
        query = f"endpoint_url={server.endpoint_url}&region={server.region}"
        yield f"s3://{server.bucket}/{server.prefix()}?{query}"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"STOREKEEPER_URL": ""})
    assert result.exit_code == 0, (args, result.output)
    return result.output


@pytest.mark.parametrize("store_url", BACKENDS, indirect=True)
def test_commands_over_the_backend(store_url: str, tmp_path: Path) -> None:
    source = tmp_path / "report.txt"
    source.write_bytes(b"quarterly numbers")
    _run("put", f"{store_url}#docs/report", str(source), "-m", "year=2026", "-m", "kind=r")
    _run("put", f"{store_url}#docs/notes", "-", "--meta", '{"year": 2025}')
    listed = [json.loads(line) for line in _run("ls", store_url, "--json").splitlines()]
    assert [entry["key"] for entry in listed] == ["docs/notes", "docs/report"]
    assert _run("cat", f"{store_url}#docs/report") == "quarterly numbers"
    assert _run("query", store_url, "year=range:2026..2027").split() == ["docs/report"]
    _run("meta", "update", f"{store_url}#docs/report", "-m", "starred=true")
    head = json.loads(_run("head", f"{store_url}#docs/report", "--json"))
    assert head["metadata"] == {"year": 2026, "kind": "r", "starred": True}

    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    _run("cp", store_url, copy)
    with SqliteStore(tmp_path / "copy.db") as copied:  # what cp wrote, read directly
        assert sorted(copied.query_keys()) == ["docs/notes", "docs/report"]
        with copied.get_data("docs/report") as stream:
            assert stream.read() == b"quarterly numbers"
        assert copied.get_metadata("docs/report")["starred"] is True
    assert "copied 0 keys" in _run("sync", store_url, copy)

    _run("rm", f"{store_url}#docs/notes")
    missing = CliRunner().invoke(cli, ["cat", f"{store_url}#docs/notes"])
    assert missing.exit_code == 3, missing.output
    conflict = CliRunner().invoke(
        cli, ["put", f"{store_url}#docs/report", str(source), "--create-only"]
    )
    assert conflict.exit_code == 4, conflict.output
