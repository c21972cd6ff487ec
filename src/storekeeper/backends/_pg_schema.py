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
- ``T__changes``: the change log (``id``, ``key``, ``action``, ``metadata``, ``origin``,
  ``version``: the row's new version, ``NULL`` for a delete).
  The store's write statements log their changes themselves and announce them with
  ``NOTIFY`` (:meth:`Schema.logged`: one statement, no trigger call); writes by other
  programs are logged and announced by a row-level trigger, ``T__log``, which skips the
  store's connections (they set ``storekeeper.logged``). See ``_pg_events``.
- Other programs' writes also get: a fresh ``version`` when an ``UPDATE`` changes a row
  but keeps its version (``T__version``, ``BEFORE UPDATE``), so a conditional write
  against the version read before fails and caches validated by version see the change;
  a ``delete`` of the old key before the ``set`` of the new one when an ``UPDATE``
  changes a row's key; and, for ``TRUNCATE`` (which fires no row trigger), a ``delete``
  logged for every key it removes (``T__truncate``, ``BEFORE TRUNCATE``, announced by
  id like a store statement of many rows), so listeners get each exactly once.
- Two row-level triggers move a chunk set that a row stops naming (overwritten or
  deleted, by anyone) to the trash; their ``WHEN`` conditions keep every other write
  from calling them.

Indexes: a GIN index on ``meta`` (exact values, ``In``, ``Exists``), a partial index of
the rows whose ``meta`` is ``NULL``, and for each metadata name queried with ``Range``
or ``Prefix`` two expression indexes, one over its numbers and one over its strings in
code-point order (``_pg_query``).
"""

from __future__ import annotations

import hashlib
import json

from psycopg import sql
from psycopg.abc import AdaptContext

__all__ = [
    "LOGGED_SETTING",
    "NOTIFY_LIMIT",
    "ORIGIN_SETTING",
    "Escaped",
    "Schema",
    "announcement",
    "channel_name",
    "short_hash",
]

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
        origin text,
        version bigint
    )""",
    # A table made before changes were logged with the version written gets it.
    "ALTER TABLE {changes} ADD COLUMN IF NOT EXISTS version bigint",
    "CREATE INDEX IF NOT EXISTS {meta_index} ON {main} USING gin (meta)",
    "CREATE INDEX IF NOT EXISTS {nul_index} ON {main} (key) WHERE meta IS NULL",
]

#: Longest ``NOTIFY`` payload sent with the change itself (PostgreSQL's limit is 8,000
#: bytes); a longer one is replaced by the change's id, and listeners read the log.
NOTIFY_LIMIT = 7900
#: The session setting that names the writing store object (its ``origin``).
ORIGIN_SETTING = "storekeeper.origin"
#: The session setting by which a store's connections say that their statements log
#: their own changes (so the logging trigger, for other programs' writes, skips them).
LOGGED_SETTING = "storekeeper.logged"

# The NOTIFY payload of one logged change, from the columns of a change-log row: the
# origin leads, so a listener skips its own store's changes without parsing them.
_PAYLOAD = (
    "CASE WHEN octet_length(p) <= {limit} THEN p "
    "ELSE json_build_object('o', origin, 'ids', json_build_array(id))::text END"
)
_FULL = (
    "json_build_object('o', origin, 'i', id, 'a', action, 'k', key, 'm', metadata, "
    "'v', version)::text"
)

# A write statement of the store (returning ``key, action, metadata, version`` per row)
# wrapped so that the same statement logs each change and announces it: one round trip,
# no trigger call.
_LOGGED_ONE = f"""WITH written AS ({{write}}),
logged AS (
    INSERT INTO {{{{changes}}}} (key, action, metadata, origin, version)
    SELECT key, action, metadata, current_setting('{ORIGIN_SETTING}'), version FROM written
    RETURNING id, key, action, metadata, origin, version
)
SELECT metadata, pg_notify({{{{channel}}}}, {_PAYLOAD.format(limit=NOTIFY_LIMIT)})
FROM logged, LATERAL (SELECT {_FULL}) AS full_payload(p)"""

# The same for a write of one row whose change the client knows whole (key, action,
# metadata, version): it sends the payload's text before and after the id, which only
# the log can give (see announcement), so the server builds no JSON.
_LOGGED_KNOWN = f"""WITH written AS ({{write}}),
logged AS (
    INSERT INTO {{{{changes}}}} (key, action, metadata, origin, version)
    SELECT key, action, metadata, current_setting('{ORIGIN_SETTING}'), version FROM written
    RETURNING id
)
SELECT pg_notify({{{{channel}}}}, %(before_id)s || id || %(after_id)s) FROM logged"""

# The same for a statement of many rows: their ids, 500 a notification (listeners read
# the changes from the log).
_LOGGED_MANY = f"""WITH written AS ({{write}}),
logged AS (
    INSERT INTO {{{{changes}}}} (key, action, metadata, origin, version)
    SELECT key, action, metadata, current_setting('{ORIGIN_SETTING}'), version
    FROM written ORDER BY key
    RETURNING id
)
SELECT pg_notify({{{{channel}}}}, json_build_object(
    'o', current_setting('{ORIGIN_SETTING}'), 'ids', array_agg(id ORDER BY id))::text)
FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 500 AS part FROM logged) AS numbered
GROUP BY part"""

# Row-level trigger function logging and announcing a change made by another program
# (plain SQL): the store's own statements log themselves and skip it (see the WHEN
# condition of its trigger).
_LOG_BODY = f"""
DECLARE
    origin text := current_setting('{ORIGIN_SETTING}', true);
    id bigint;
    key text;
    action text;
    metadata text;
    version bigint;
    p text;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.key IS DISTINCT FROM NEW.key THEN
        -- a renamed key: the old one is gone (announced first), the new one set
        key := OLD.key; action := 'delete'; metadata := OLD.metadata; version := NULL;
        INSERT INTO {{changes}} (key, action, metadata, origin, version)
            VALUES (key, action, metadata, origin, version) RETURNING {{changes}}.id INTO id;
        p := {_FULL};
        PERFORM pg_notify({{channel}}, {_PAYLOAD.format(limit=NOTIFY_LIMIT)});
    END IF;
    IF TG_OP = 'DELETE' THEN
        key := OLD.key; action := 'delete'; metadata := OLD.metadata; version := NULL;
    ELSE
        key := NEW.key; action := NEW.action; metadata := NEW.metadata; version := NEW.version;
    END IF;
    INSERT INTO {{changes}} (key, action, metadata, origin, version)
        VALUES (key, action, metadata, origin, version) RETURNING {{changes}}.id INTO id;
    p := {_FULL};
    PERFORM pg_notify({{channel}}, {_PAYLOAD.format(limit=NOTIFY_LIMIT)});
    RETURN NULL;
END
"""

# Statement-level trigger function logging a plain-SQL ``TRUNCATE`` (which fires no row
# trigger) before it happens: a delete of every key, announced by id, 500 a notification,
# so listeners get each as an ordinary change, exactly once, from the log.
_TRUNCATE_BODY = f"""
DECLARE
    origin text := current_setting('{ORIGIN_SETTING}', true);
    ids bigint[];
BEGIN
    WITH logged AS (
        INSERT INTO {{changes}} (key, action, metadata, origin)
        SELECT key, 'delete', metadata, origin FROM {{main}} ORDER BY key
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM logged;
    FOR n IN 1 .. coalesce(array_length(ids, 1), 0) BY 500 LOOP
        PERFORM pg_notify({{channel}}, json_build_object(
            'o', origin, 'ids', ids[n:n + 499])::text);
    END LOOP;
    RETURN NULL;
END
"""

# Row-level trigger function giving a row that another program changed (plain SQL) a
# fresh version when it kept the old one, so conditional writes and caches validated
# by version see the change (a random positive 62-bit number, as the store's own are).
_VERSION_BODY = """
BEGIN
    NEW.version := ('x' || translate(gen_random_uuid()::text, '-', ''))::bit(64)::bigint
        & 4611686018427387903;
    RETURN NEW;
END
"""

# Row-level trigger function moving the chunk set a row no longer names to the trash
# (whoever wrote the row; its WHEN condition calls it only then).
_RECLAIM_BODY = """
BEGIN
    INSERT INTO {trash} (blob) VALUES (OLD.blob) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
"""

_NOT_STORE = f"current_setting('{LOGGED_SETTING}', true) IS DISTINCT FROM 'on'"

# (name, timing and events, level, condition, function) of each trigger on the table.
_TRIGGERS = (
    ("log_trigger", "AFTER INSERT OR UPDATE OR DELETE", "ROW", _NOT_STORE, "function"),
    (
        "reclaim_update",
        "AFTER UPDATE",
        "ROW",
        "OLD.blob IS NOT NULL AND OLD.blob IS DISTINCT FROM NEW.blob",
        "reclaim",
    ),
    ("reclaim_delete", "AFTER DELETE", "ROW", "OLD.blob IS NOT NULL", "reclaim"),
    (
        "version_trigger",
        "BEFORE UPDATE",
        "ROW",
        f"{_NOT_STORE} AND OLD.version = NEW.version AND OLD.* IS DISTINCT FROM NEW.*",
        "version_function",
    ),
    ("truncate_trigger", "BEFORE TRUNCATE", "STATEMENT", _NOT_STORE, "truncate_function"),
)


_TRIGGER_NAMES = [trigger[0] for trigger in _TRIGGERS]
_TRIGGER_SUFFIXES = ["__log", "__reclaim_update", "__reclaim_delete", "__version", "__truncate"]


def announcement(
    origin: str, key: str, action: str, metadata: str, version: int
) -> tuple[str, str]:
    """The ``NOTIFY`` payload of one change, as the text before and after its id: the
    same JSON object the server builds for the others (origin first, then the id, as
    listeners expect), or, when it would not fit :data:`NOTIFY_LIMIT`, the origin and
    the id alone (listeners then read the change from the log)."""
    head = '{"o" : ' + json.dumps(origin)
    rest = (
        f', "a" : {json.dumps(action)}, "k" : {json.dumps(key)}, '
        f'"m" : {json.dumps(metadata)}, "v" : {version}}}'
    )
    # json.dumps escapes every non-ASCII character: the length is the byte count. The
    # id takes at most 19 digits.
    if len(head) + len(rest) + 26 <= NOTIFY_LIMIT:
        return head + ', "i" : ', rest
    return head + ', "ids" : [', "]}"


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
        #: The triggers whose presence says the table has this version's triggers and
        #: functions (an earlier version's table lacks one of them).
        self.triggers = [table + suffix for suffix in _TRIGGER_SUFFIXES]
        self.names = {
            "main": self.main,
            "chunks": self.chunks,
            "trash": self.trash,
            "changes": self.changes,
            "meta_index": sql.Identifier(table + "__meta"),
            "nul_index": sql.Identifier(table + "__nul"),
            "old_insert": sql.Identifier(table + "__insert"),
            "old_update": sql.Identifier(table + "__update"),
            "old_delete": sql.Identifier(table + "__delete"),
            **{
                trigger: sql.Identifier(table + suffix)
                for trigger, suffix in zip(_TRIGGER_NAMES, _TRIGGER_SUFFIXES, strict=True)
            },
            "function": self.function,
            "reclaim": self.name(table + "__reclaim"),
            "version_function": self.name(table + "__version"),
            "truncate_function": self.name(table + "__truncate"),
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

    def logged(self, write: str, *, many: bool = False, known: bool = False) -> bytes:
        """*write*, a statement changing rows of the table and returning their ``key,
        action, metadata, version``, wrapped so that it also logs each change and
        announces it with ``NOTIFY`` (see the module documentation), as a statement to
        execute with parameters. It returns each row's metadata (one row), or nothing
        useful (*many*: the changes are announced by id, 500 a notification; *known*:
        one row whose payload the caller passes as ``before_id`` and ``after_id``, see
        :func:`announcement`)."""
        template = _LOGGED_MANY if many else _LOGGED_KNOWN if known else _LOGGED_ONE
        return self.compose(template.format(write=write))

    def create(self) -> list[bytes]:
        """The statements creating what is missing of the tables, indexes, functions and
        triggers, and dropping the triggers of earlier versions (to execute without
        parameters)."""
        statements = [self.script(text) for text in _CREATE]
        for function, text in (
            ("function", _LOG_BODY),
            ("reclaim", _RECLAIM_BODY),
            ("version_function", _VERSION_BODY),
            ("truncate_function", _TRUNCATE_BODY),
        ):
            body = self.script(text).decode()
            if _BODY_QUOTE in body:
                raise ValueError(f"invalid table name {self.table!r}")
            statements.append(
                self.script(
                    f"CREATE OR REPLACE FUNCTION {{{function}}}() RETURNS trigger "
                    "LANGUAGE plpgsql AS {body}",
                    body=sql.SQL(_BODY_QUOTE + body + _BODY_QUOTE),  # checked above
                )
            )
        for old in ("old_insert", "old_update", "old_delete"):
            statements.append(self.script(f"DROP TRIGGER IF EXISTS {{{old}}} ON {{main}}"))
        for trigger, events, level, condition, function in _TRIGGERS:
            statements.append(
                self.script(
                    f"CREATE OR REPLACE TRIGGER {{{trigger}}} {events} ON {{main}} "
                    f"FOR EACH {level} WHEN ({condition}) EXECUTE FUNCTION {{{function}}}()"
                )
            )
        return statements

    def drop(self) -> list[bytes]:
        """The statements dropping the store's tables and function (for tests and tools;
        to execute without parameters)."""
        return [
            self.script("DROP TABLE IF EXISTS {main}, {chunks}, {trash}, {changes}"),
            self.script(
                "DROP FUNCTION IF EXISTS {function}(), {reclaim}(), {version_function}(), "
                "{truncate_function}()"
            ),
        ]
