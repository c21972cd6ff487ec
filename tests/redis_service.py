"""The Redis server the Redis tests use, and per-test prefixes on it.

The server is ``STOREKEEPER_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``). Without
it the tests skip, saying why, except under ``CI=true``, where a missing server fails
them. The server is shared (other people's tests use it): the tests never flush it;
each works under a prefix of its own and deletes that prefix's keys afterwards.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis

SERVER = os.environ.get("STOREKEEPER_TEST_REDIS", "redis://127.0.0.1:6379/0")
# One token per test run, shared with the child processes the tests start.
RUN = os.environ.setdefault("STOREKEEPER_TEST_REDIS_RUN", secrets.token_hex(6))


def raw_client() -> redis.Redis:
    """A plain redis-py client on the test server (skips or fails without one)."""
    client = redis.Redis.from_url(SERVER, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"no Redis server at {SERVER} ({exc}); set STOREKEEPER_TEST_REDIS"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return client


def prefix_for(name: str) -> str:
    """The store prefix of the test (or test directory) *name*, unique to this run."""
    return f"sktest:{RUN}:{name}"


def store_url(prefix: str, **options: object) -> str:
    """A ``redis://`` URL of the test server opening the store *prefix*."""
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in options.items())
    extra = f"&{query}" if query else ""
    return f"{SERVER}?prefix={quote(prefix, safe='')}{extra}"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key of stores whose prefix starts with *prefix* (SCAN MATCH, tests
    only: the store itself never scans); how many were deleted."""
    pattern = "{" + re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "*"
    deleted = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=pattern, count=1000):
        batch.append(name)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def cleaned(prefix: str) -> Iterator[redis.Redis]:
    """A generator fixture body: a raw client, and *prefix*'s keys deleted afterwards."""
    client = raw_client()
    try:
        yield client
    finally:
        delete_prefix(client, prefix)
        client.close()
