"""The write statements of a :class:`~storekeeper.backends.postgres.PostgresStore`.

Every write of one key, conditional or not, is one statement, so the precondition and
the write are one atomic step for PostgreSQL:

- no precondition: ``INSERT ... ON CONFLICT (key) DO UPDATE`` (an upsert);
- ``if_exists=False``: ``INSERT ... ON CONFLICT DO NOTHING`` (no row: it existed);
- ``if_exists=True`` and/or ``if_version``: ``UPDATE ... WHERE key = ... [AND version =
  ...]`` (no row: the key was missing or at another version).

The same statement logs the change and announces it with ``NOTIFY``
(:meth:`Schema.logged`), so a write is one round trip in autocommit mode, and its
announcement leaves when it commits. When the write sets the metadata, the client knows
the whole change and sends the announcement's text itself (:func:`announcement`). A
write that changed no row then reads the key's version, only to word the
:class:`~storekeeper.errors.ConflictError`. Writes that keep the data (``set_metadata``)
or the metadata (``set_data``) leave those columns out of the update and return what the
row holds, for the event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from storekeeper.backends._pg_schema import Schema, announcement
from storekeeper.errors import ConflictError
from storekeeper.store.backend import check_precondition

__all__ = ["Row", "Writes", "version_number"]

_NOW = "extract(epoch FROM statement_timestamp())"
_DATA_COLUMNS = ("size", "data", "blob")
_RETURNING = "RETURNING o.key, o.action, o.metadata, o.version"
_BATCH = (
    "INSERT INTO {main} AS o "
    "(key, version, size, created, modified, metadata, meta, data, blob, action) "
    f"SELECT k, v, octet_length(d), {_NOW}, {_NOW}, m, j::jsonb, d, NULL, 'set' "
    # Binary parameters: the text form of arrays escapes every element.
    "FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::bytea[]) "
    "AS u(k, v, m, j, d) "
    "ON CONFLICT (key) DO UPDATE SET modified = EXCLUDED.modified, "
    "version = EXCLUDED.version, action = 'set', metadata = EXCLUDED.metadata, "
    "meta = EXCLUDED.meta, size = EXCLUDED.size, data = EXCLUDED.data, blob = NULL " + _RETURNING
)
_META_COLUMNS = ("metadata", "meta")


@dataclass(slots=True)
class Row:
    """What one write puts in a key's row (``None`` metadata: keep it; ``keep_data``:
    keep the data)."""

    key: str
    version: int
    metadata: str | None
    data: bytes | None = b""
    blob: int | None = None
    size: int = 0
    keep_data: bool = False
    action: str = "set"

    def params(self) -> dict[str, Any]:
        """The statement parameters."""
        metadata = "{}" if self.metadata is None else self.metadata
        return {
            "key": self.key,
            "version": self.version,
            "size": self.size,
            "metadata": metadata,
            "meta": None if "\\u0000" in metadata else metadata,
            "data": self.data,
            "blob": self.blob,
            "action": self.action,
        }


def version_number(version: str) -> int | None:
    """The integer a version token stands for, or ``None`` if no row can have it."""
    if not version.isascii() or not version.isdigit() or str(int(version)) != version:
        return None
    number = int(version)
    return number if number < 2**63 else None


class Writes:
    """The write statements of one table (cached by their shape)."""

    def __init__(self, schema: Schema, origin: Callable[[], str]) -> None:
        self.schema = schema
        #: The writing store object's origin now (a forked child gets its own).
        self.origin = origin
        self._cache: dict[tuple[str, bool, bool], bytes] = {}
        deleted = "RETURNING key, 'delete' AS action, metadata, NULL::bigint AS version"
        self._delete = schema.logged(f"DELETE FROM {{main}} WHERE key = %s {deleted}")
        self._delete_version = schema.logged(
            f"DELETE FROM {{main}} WHERE key = %s AND version = %s {deleted}"
        )
        self._batch = schema.logged(_BATCH, many=True)

    def write(
        self,
        conn: psycopg.Connection[Any],
        row: Row,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """Write *row* under the preconditions; the metadata JSON the row now holds.
        :class:`ConflictError` (nothing written) when a precondition fails."""
        params = row.params()
        if if_version is not None:
            number = version_number(if_version)
            if number is None or if_exists is False:
                raise self.conflict(conn, row.key, if_version, if_exists)
            mode = "update_version"
            params["if_version"] = number
        elif if_exists is True:
            mode = "update"
        elif if_exists is False:
            mode = "insert"
        else:
            mode = "upsert"
        statement = self._statement(mode, row.metadata is None, row.keep_data)
        if row.metadata is not None:
            params["before_id"], params["after_id"] = announcement(
                self.origin(), row.key, row.action, row.metadata, row.version
            )
        found = conn.execute(statement, params).fetchone()
        if found is None:
            raise self.conflict(conn, row.key, if_version, if_exists)
        text: str = found[0] if row.metadata is None else row.metadata
        return text

    def conflict(
        self,
        conn: psycopg.Connection[Any],
        key: str,
        if_version: str | None,
        if_exists: bool | None,
    ) -> ConflictError:
        """The error of a conditional write of *key* that changed nothing."""
        current = self.version_of(conn, key)
        try:
            check_precondition(key, current, if_version, if_exists)
        except ConflictError as exc:
            return exc
        return ConflictError(f"key {key!r} changed while it was written conditionally")

    def version_of(self, conn: psycopg.Connection[Any], key: str) -> str | None:
        """*key*'s version token, or ``None`` if it does not exist."""
        row = conn.execute(self.schema.compose("SELECT version FROM {main} WHERE key = %s"), [key])
        found = row.fetchone()
        return None if found is None else str(found[0])

    def _statement(self, mode: str, keep_meta: bool, keep_data: bool) -> bytes:
        shape = (mode, keep_meta, keep_data)
        statement = self._cache.get(shape)
        if statement is None:
            statement = self._cache[shape] = self._build(mode, keep_meta, keep_data)
        return statement

    def _build(self, mode: str, keep_meta: bool, keep_data: bool) -> bytes:
        known = not keep_meta  # the client knows the metadata: the whole change
        changed = ["version", "action"]
        if not keep_meta:
            changed += _META_COLUMNS
        if not keep_data:
            changed += _DATA_COLUMNS
        if mode.startswith("update"):
            assignments = [f"{name} = %({name})s" for name in changed]
            assignments = [a.replace("%(meta)s", "%(meta)s::jsonb") for a in assignments]
            condition = " AND version = %(if_version)s" if mode == "update_version" else ""
            return self.schema.logged(
                f"UPDATE {{main}} SET modified = {_NOW}, {', '.join(assignments)} "
                f"WHERE key = %(key)s{condition} RETURNING key, action, metadata, version",
                known=known,
            )
        insert = (
            "INSERT INTO {main} AS o "
            "(key, version, size, created, modified, metadata, meta, data, blob, action) "
            f"VALUES (%(key)s, %(version)s, %(size)s, {_NOW}, {_NOW}, %(metadata)s, "
            "%(meta)s::jsonb, %(data)s, %(blob)s, %(action)s) "
        )
        if mode == "insert":
            return self.schema.logged(
                insert + "ON CONFLICT (key) DO NOTHING " + _RETURNING, known=known
            )
        updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in ["modified", *changed])
        return self.schema.logged(
            insert + f"ON CONFLICT (key) DO UPDATE SET {updates} {_RETURNING}", known=known
        )

    def delete(self, conn: psycopg.Connection[Any], key: str, if_version: str | None) -> str | None:
        """Delete *key* (at *if_version*); its metadata JSON, ``None`` if nothing was
        deleted (the caller tells a missing key from a conflict)."""
        if if_version is None:
            found = conn.execute(self._delete, [key]).fetchone()
        else:
            number = version_number(if_version)
            if number is None:
                return None
            found = conn.execute(self._delete_version, [key, number]).fetchone()
        return None if found is None else str(found[0])

    def batch(self, conn: psycopg.Connection[Any], rows: list[Row]) -> None:
        """Upsert many inline *rows* (distinct keys) in one statement."""
        params = [row.params() for row in rows]
        conn.execute(
            self._batch,
            [
                [p["key"] for p in params],
                [p["version"] for p in params],
                [p["metadata"] for p in params],
                [p["meta"] for p in params],
                [p["data"] for p in params],
            ],
        )
