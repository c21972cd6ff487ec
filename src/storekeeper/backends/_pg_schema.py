"""The tables of a :class:`~storekeeper.backends.postgres.PostgresStore` and their SQL.

Every name in the SQL is a quoted :class:`psycopg.sql.Identifier` and every value a
parameter (or a quoted :class:`psycopg.sql.Literal` where PostgreSQL takes no parameter),
so no user text ever becomes SQL. psycopg reads every ``%`` of a statement executed with
parameters as a placeholder, quoted text included: :meth:`Schema.compose` therefore
doubles the ``%`` of the names (:class:`Escaped`), and its statements are always executed
with parameters (an empty list if none), while :meth:`Schema.create` and
:meth:`Schema.drop` render them as they are, for execution without parameters (as a
COPY is). For a store table ``T``:

- ``T``: one row per key. ``key text COLLATE "C"`` is the primary key (so its index
  orders keys by code point, as Python sorts ``str``, and a prefix is one range of it);
  ``version`` (bigint), ``size``, ``created``/``modified`` (epoch seconds from the
  server's clock), ``metadata`` (the exact JSON text), ``meta`` (the same as ``jsonb``
  for queries; ``NULL`` when the metadata holds a NUL character, which ``jsonb`` cannot),
  ``data`` (the value, when it is at most ``inline_limit`` bytes) or ``blob`` (the id of
  its chunks), and ``action`` (``set``/``update``, what the change log reports).
- ``T__chunks``: ``(blob, seq, data)``, a large value in ``chunk_size`` pieces.
- ``T__trash``: chunk sets no row names any more and since when; they are deleted
  ``reclaim_after`` seconds later, so that a value read before an overwrite can still be
  streamed meanwhile.
- ``T__changes``: the change log (``id``, ``key``, ``action``, ``metadata``, ``origin``),
  written by statement-level triggers on ``T`` (so a batch of rows costs one trigger
  call) that also send ``NOTIFY`` and move replaced chunk sets to the trash (see
  ``_pg_events``).

Indexes: a GIN index on ``meta`` (exact values, ``In``, ``Exists``), a partial index of
the rows whose ``meta`` is ``NULL``, and for each metadata name queried with ``Range``
or ``Prefix`` two expression indexes, one over its numbers and one over its strings in
code-point order (``_pg_query``).
"""

from __future__ import annotations

import hashlib

from psycopg import sql
from psycopg.abc import AdaptContext

__all__ = ["Escaped", "Schema", "channel_name", "short_hash"]

# The dollar quote of the trigger function's body; refused if a quoted name holds it.
_BODY_QUOTE = "$storekeeper_body$"

_CREATE = [
    """CREATE TABLE IF NOT EXISTS {main} (
        key text COLLATE "C" PRIMARY KEY,
        version bigint NOT NULL,
        size bigint NOT NULL,
        created double precision NOT NULL,
        modified double precision NOT NULL,
        metadata text NOT NULL,
        meta jsonb,
        data bytea,
        blob bigint,
        action text NOT NULL DEFAULT 'set'
    )""",
    # Values are mostly compressed already (or random in benchmarks): pglz would only
    # spend time failing to shrink them.
    "ALTER TABLE {main} ALTER COLUMN data SET STORAGE EXTERNAL",
    """CREATE TABLE IF NOT EXISTS {chunks} (
        blob bigint NOT NULL,
        seq integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (blob, seq)
    )""",
    "ALTER TABLE {chunks} ALTER COLUMN data SET STORAGE EXTERNAL",
    """CREATE TABLE IF NOT EXISTS {trash} (
        blob bigint PRIMARY KEY,
        since timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS {changes} (
        id bigserial PRIMARY KEY,
        key text NOT NULL,
        action text NOT NULL,
        metadata text,
        origin text
    )""",
    "CREATE INDEX IF NOT EXISTS {meta_index} ON {main} USING gin (meta)",
    "CREATE INDEX IF NOT EXISTS {nul_index} ON {main} (key) WHERE meta IS NULL",
]

_TRIGGER_BODY = """
DECLARE
    origin_ text := current_setting('storekeeper.origin', true);
    ids bigint[];
    one record;
    payload text;
    part bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH logged AS (
            INSERT INTO {changes} (key, action, metadata, origin)
            SELECT key, action, metadata, origin_ FROM new_rows ORDER BY key RETURNING id
        ) SELECT array_agg(id ORDER BY id) INTO ids FROM logged;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {trash} (blob)
            SELECT o.blob FROM old_rows o
            WHERE o.blob IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM new_rows n WHERE n.key = o.key AND n.blob = o.blob)
            ON CONFLICT DO NOTHING;
        WITH logged AS (
            INSERT INTO {changes} (key, action, metadata, origin)
            SELECT key, action, metadata, origin_ FROM new_rows ORDER BY key RETURNING id
        ) SELECT array_agg(id ORDER BY id) INTO ids FROM logged;
    ELSE
        INSERT INTO {trash} (blob)
            SELECT blob FROM old_rows WHERE blob IS NOT NULL ON CONFLICT DO NOTHING;
        WITH logged AS (
            INSERT INTO {changes} (key, action, metadata, origin)
            SELECT key, 'delete', metadata, origin_ FROM old_rows ORDER BY key RETURNING id
        ) SELECT array_agg(id ORDER BY id) INTO ids FROM logged;
    END IF;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- The origin leads every payload, so a listener skips its own store's changes
    -- without parsing them.
    IF cardinality(ids) = 1 THEN
        SELECT id, action, key, metadata INTO one FROM {changes} WHERE id = ids[1];
        payload := json_build_object(
            'o', origin_, 'i', one.id, 'a', one.action, 'k', one.key, 'm', one.metadata)::text;
        IF octet_length(payload) <= 7900 THEN
            PERFORM pg_notify({channel}, payload);
            RETURN NULL;
        END IF;
    END IF;
    -- Many changes (or a large one): their ids, 500 a notification; the listener
    -- reads the rest from the log.
    FOR part IN
        SELECT array_agg(id ORDER BY id) FROM unnest(ids) WITH ORDINALITY AS u(id, n)
        GROUP BY (n - 1) / 500 ORDER BY min(n)
    LOOP
        PERFORM pg_notify({channel}, json_build_object('o', origin_, 'ids', part)::text);
    END LOOP;
    RETURN NULL;
END
"""


class Escaped(sql.Composable):
    """*wrapped* (a quoted name or literal) for a statement executed with parameters:
    each ``%`` doubled, which psycopg's placeholder parser turns back into one."""

    def __init__(self, wrapped: sql.Composable) -> None:
        super().__init__(wrapped)

    def as_bytes(self, context: AdaptContext | None = None) -> bytes:
        """The wrapped text with ``%`` doubled."""
        return bytes(self._obj.as_bytes(context)).replace(b"%", b"%%")


def short_hash(text: str, size: int = 12) -> str:
    """A stable hex digest of *text*, for names derived from user text."""
    return hashlib.blake2b(text.encode(), digest_size=size // 2 or 1).hexdigest()[:size]


def channel_name(schema: str | None, table: str) -> str:
    """The NOTIFY channel of a store table (an identifier of fixed length)."""
    return "storekeeper_" + short_hash(f"{schema or ''}\x00{table}", 24)


class Schema:
    """The SQL of one store table *table* in *schema* (``None``: the search path)."""

    def __init__(self, schema: str | None, table: str) -> None:
        self.schema = schema
        self.table = table
        self.channel = channel_name(schema, table)
        self.main = self.name(table)
        self.chunks = self.name(table + "__chunks")
        self.trash = self.name(table + "__trash")
        self.changes = self.name(table + "__changes")
        self.function = self.name(table + "__notify")
        self.names = {
            "main": self.main,
            "chunks": self.chunks,
            "trash": self.trash,
            "changes": self.changes,
            "meta_index": sql.Identifier(table + "__meta"),
            "nul_index": sql.Identifier(table + "__nul"),
            "trigger_insert": sql.Identifier(table + "__insert"),
            "trigger_update": sql.Identifier(table + "__update"),
            "trigger_delete": sql.Identifier(table + "__delete"),
            "function": self.function,
            "channel": sql.Literal(self.channel),
        }

    def name(self, name: str) -> sql.Identifier:
        """*name* qualified by the store's schema, quoted."""
        if self.schema is None:
            return sql.Identifier(name)
        return sql.Identifier(self.schema, name)

    def compose(self, text: str, **extra: sql.Composable) -> bytes:
        """*text* with its ``{names}`` filled in (the table names, their ``%`` doubled,
        and *extra*, already safe), as the bytes of a statement to execute WITH
        parameters (``[]`` if none): rendered once, where psycopg would render a
        :class:`~psycopg.sql.Composed` again at every execution (which cost half the
        time of a point read)."""
        names = {name: Escaped(value) for name, value in self.names.items()}
        return sql.SQL(text).format(**names, **extra).as_bytes(None)

    def script(self, text: str, **extra: sql.Composable) -> bytes:
        """*text* with its ``{names}`` filled in as they are, for a statement executed
        without parameters."""
        return sql.SQL(text).format(**self.names, **extra).as_bytes(None)

    def create(self) -> list[bytes]:
        """The statements creating what is missing of the tables, indexes and trigger
        (to execute without parameters)."""
        statements = [self.script(text) for text in _CREATE]
        body = self.script(_TRIGGER_BODY).decode()
        if _BODY_QUOTE in body:
            raise ValueError(f"invalid table name {self.table!r}")
        statements.append(
            self.script(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger "
                "LANGUAGE plpgsql AS {body}",
                body=sql.SQL(_BODY_QUOTE + body + _BODY_QUOTE),  # checked above
            )
        )
        # One trigger per event: PostgreSQL gives transition tables to those only.
        for trigger, event, tables in (
            ("trigger_insert", "INSERT", "NEW TABLE AS new_rows"),
            ("trigger_update", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            ("trigger_delete", "DELETE", "OLD TABLE AS old_rows"),
        ):
            statements.append(
                self.script(
                    f"CREATE OR REPLACE TRIGGER {{{trigger}}} AFTER {event} ON {{main}} "
                    f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {{function}}()"
                )
            )
        return statements

    def drop(self) -> list[bytes]:
        """The statements dropping the store's tables and function (for tests and tools;
        to execute without parameters)."""
        return [
            self.script("DROP TABLE IF EXISTS {main}, {chunks}, {trash}, {changes}"),
            self.script("DROP FUNCTION IF EXISTS {function}()"),
        ]
