"""The S3Store index in the bucket: deltas left by writers, snapshots left by queries,
and a new store object's first query (exact, and without a HEAD per key)."""

from __future__ import annotations

import pytest

from s3_server import S3Server, shared
from storekeeper.backends import _s3_names as names

pytestmark = [pytest.mark.service, pytest.mark.s3]


def _internal(server: S3Server, prefix: str) -> list[str]:
    root = names.internal_root(prefix) + "index"
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=root)
    return sorted(item["Key"][len(root) :] for item in listing.get("Contents", ()))


def test_first_query_uses_deltas_checked_against_the_listing() -> None:
    """A closed writer's writes are all in deltas; a key rewritten since by a writer
    still open (its delta not sent) is read with a HEAD, never from the old delta; the
    query compacts the deltas into a snapshot the next new store object uses."""
    server = shared()
    prefix = server.prefix()
    with server.store(prefix) as writer:
        for i in range(100):
            writer.set(f"k{i:03d}", (b"", {"i": i}))
    assert [n for n in _internal(server, prefix) if n.startswith(".d/")]  # 64 + close
    with server.store(prefix) as other:
        other.set("k001", (b"", {"i": 1001}))  # noted, not yet in a delta
        with server.store(prefix) as fresh:
            assert fresh.query_keys(i=1) == []
            assert fresh.query_keys(i=1001) == ["k001"]
            assert fresh._objects.index.last_fetches == 0  # the second query
        assert _internal(server, prefix) == [""]  # compacted: the snapshot alone
        with server.store(prefix) as fresh:
            assert fresh.query_keys(i=1001) == ["k001"]
            assert fresh._objects.index.last_fetches == 0


def test_first_query_after_deltas_counts_only_unsent_writes() -> None:
    server = shared()
    prefix = server.prefix()
    with server.store(prefix) as writer:
        for i in range(70):
            writer.set(f"k{i:03d}", (b"", {"i": i}))
        with server.store(prefix) as fresh:  # writer still open: 6 writes not sent
            assert fresh.query_keys(i=69) == ["k069"]
            assert fresh._objects.index.last_fetches == 6
