"""Which metadata names of a :class:`SqliteStore` table have an expression index.

``index='dynamic'`` creates an index on ``json_extract(metadata, '$."name"')`` the first
time a name is written, up to ``max_indexes``; ``'static'`` only for ``index_columns``
(created at connect); ``None`` none. SQLite maintains the indexes itself, so the only
state kept here is which names were dealt with already; a rollback may drop an index
created inside the transaction, so the state is reloaded from the database then.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from storekeeper.backends._sqlite_schema import Schema, json_path
from storekeeper.store.backend import decode_metadata

__all__ = ["Indexes"]


class Indexes:
    """The expression indexes of one table: *mode* (``'dynamic'``, ``'static'`` or
    ``None``), the *columns* indexed in every mode but ``None``, at most *limit*."""

    def __init__(self, schema: Schema, mode: str | None, columns: list[str], limit: int) -> None:
        self.schema = schema
        self.mode = mode
        self.columns = columns
        self.limit = limit
        self._names: set[str] = set()  # index names in the database
        self._indexed: set[str] = set()
        # Names dealt with: indexed, or with no safe JSON path (never indexed).
        self._handled: set[str] = set()

    def load(self, conn: sqlite3.Connection) -> None:
        """Read which indexes exist (at connect and after a rollback)."""
        rows = conn.execute(self.schema.list_indexes, (self.schema.table,))
        self._names = {row[0] for row in rows}
        self._indexed = set()
        self._handled = set()

    def missing(self, conn: sqlite3.Connection) -> bool:
        """Whether the tables or an index on a static column are missing."""
        static = self.columns if self.mode is not None else []
        return self.schema.missing(conn, self._names, static, self.limit)

    def may_create(self, names: Iterable[str]) -> bool:
        """Whether a write of metadata *names* might create an index."""
        return (
            self.mode == "dynamic"
            and len(self._indexed) < self.limit
            and not self._handled.issuperset(names)
        )

    def ensure(
        self, conn: sqlite3.Connection, names: Iterable[str], *, force: bool = False
    ) -> None:
        """Create missing indexes for metadata *names* (dynamic mode, or *force*)."""
        if self.mode != "dynamic" and not force:
            return
        for name in names:
            if name in self._handled or len(self._indexed) >= self.limit:
                continue
            path = json_path(name)
            if path is None:
                self._handled.add(name)
                continue
            if self.schema.index_name(name) not in self._names:
                conn.execute(self.schema.create_index(name, path))
                self._names.add(self.schema.index_name(name))
            self._indexed.add(name)
            self._handled.add(name)

    def ensure_for_batch(self, conn: sqlite3.Connection, metadata_texts: list[str]) -> None:
        """:meth:`ensure` for the names in a batch's metadata texts."""
        if self.mode != "dynamic":
            return
        names: set[str] = set()
        # Batches often repeat the same metadata: each distinct text is decoded once.
        for text in set(metadata_texts):
            if text != "{}":
                names.update(decode_metadata(text))
        self.ensure(conn, names)
