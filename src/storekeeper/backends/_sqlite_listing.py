"""Prefix listing for :mod:`storekeeper.backends.sqlite`: a range scan of the primary key.

SQLite orders ``TEXT`` by its UTF-8 bytes, which is code-point order, the order of
Python's ``str``: the keys starting with a prefix are one range of the key index. The
range is read in pages, each page a short statement of its own, so a listing holds no
cursor (nor any read snapshot) between the keys it yields, a caller may write to the
store while iterating, and an abandoned listing leaves nothing open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["key_range", "row_range"]

# A listing's first page is small, so the first key comes quickly and a walk that jumps
# over a folder after one key reads little; pages then double up to the last size.
_FIRST_PAGE = 32
_LAST_PAGE = 2048

Using = Callable[[], AbstractContextManager[sqlite3.Connection]]


def key_range(using: Using, table: str, low: str, high: str | None) -> Iterator[str]:
    """The keys of *table* from *low* (included) up to *high* (excluded; ``None``: no
    end), in order, read a page at a time on the connection *using* gives then."""
    return (row[0] for row in row_range(using, table, "", low, high))


def row_range(
    using: Using, table: str, columns: str, low: str, high: str | None
) -> Iterator[tuple[Any, ...]]:
    """As :func:`key_range`, the rows ``(key, *columns*)``: *columns* is SQL text, empty
    or starting with a comma (``", size, version"``)."""
    bounded = "" if high is None else " AND key < :high"
    chosen = f"SELECT key{columns} FROM {table} WHERE key "
    first = f"{chosen}>= :low{bounded} ORDER BY key LIMIT :size"
    after = f"{chosen}> :low{bounded} ORDER BY key LIMIT :size"
    sql, size = first, _FIRST_PAGE
    while True:
        with using() as conn:
            rows = conn.execute(sql, {"low": low, "high": high, "size": size}).fetchall()
        yield from rows
        if len(rows) < size:
            return
        low = rows[-1][0]
        sql, size = after, min(2 * size, _LAST_PAGE)
