"""PostgreSQL test set-up shared by the PostgresStore test modules.

One database per test module (``storekeeper_test_<random>``, created through the
database of ``STOREKEEPER_TEST_POSTGRES`` when first needed and dropped when the module
is done), one table per test.
Under ``CI=true`` a missing server fails the tests instead of skipping them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from storekeeper.testing.plugin import require_service

SERVER = os.environ.get("STOREKEEPER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

_database: str | None = None
_problem: str | None = None


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def database_url() -> str:
    """The URL of this session's database, created on first use (or the test is skipped,
    failed under CI, when the server cannot be reached)."""
    global _database, _problem
    if _database is None and _problem is None:
        name = f"storekeeper_test_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(SERVER, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            _database = name
        except psycopg.Error as exc:
            _problem = f"{SERVER}: {exc}"
    if _database is None:
        require_service("PostgreSQL", _problem or "unknown")
    return _with_database(SERVER, _database)


def drop_database() -> None:
    """Drop the database (at the end of a test module); the next test that needs one
    creates a new one."""
    global _database
    name, _database = _database, None
    if name is None:
        return
    with psycopg.connect(SERVER, autocommit=True, connect_timeout=5) as conn:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(statement.format(sql.Identifier(name)))


def table_for(seed: str) -> str:
    """A table name for one test (from something unique to it, e.g. its tmp_path)."""
    return "t_" + hashlib.blake2b(seed.encode(), digest_size=8).hexdigest()


def raw_read(url: str, table: str, key: str) -> tuple[bytes, dict[str, Any]]:
    """*key*'s data and metadata read with plain SQL (inline data or its chunks)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT metadata, data, blob FROM {} WHERE key = %s").format(
                sql.Identifier(table)
            ),
            [key],
        ).fetchone()
        if row is None:
            raise KeyError(key)
        metadata, data, blob = row
        if blob is not None:
            chunks = conn.execute(
                sql.SQL("SELECT data FROM {} WHERE blob = %s ORDER BY seq").format(
                    sql.Identifier(table + "__chunks")
                ),
                [blob],
            ).fetchall()
            data = b"".join(bytes(chunk) for (chunk,) in chunks)
        return bytes(data), json.loads(metadata)


def raw_write(url: str, table: str, key: str, data: bytes, metadata: dict[str, Any]) -> None:
    """Store *key* with inline *data* and *metadata* with plain SQL, as another program
    sharing the table would."""
    text = json.dumps(metadata)
    now = time.time()
    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (key, version, size, created, modified, metadata, meta, data) "
                "VALUES (%s, 1, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (key) DO UPDATE SET "
                "version = {}.version + 1, size = EXCLUDED.size, modified = EXCLUDED.modified, "
                "metadata = EXCLUDED.metadata, meta = EXCLUDED.meta, data = EXCLUDED.data, "
                "blob = NULL"
            ).format(sql.Identifier(table), sql.Identifier(table)),
            [key, len(data), now, now, text, text, data],
        )
