"""SQL text for :mod:`storekeeper.backends.sqlite`: schema, identifier quoting, and the
compilation of query terms into SQL.

Nothing a caller supplies (table name, metadata names) is ever pasted into SQL unquoted:
identifiers go through :func:`quote_identifier`, metadata names become JSON paths inside
SQL string literals only when they consist of safe characters, and everything else is a
bound parameter or filtered in Python.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from storekeeper.store.backend import encodable
from storekeeper.store.query import Equals, Exists, In, Prefix, QueryTerm, Range

__all__ = [
    "NUL_ESCAPE",
    "Schema",
    "begin_without_waiting",
    "compile_query",
    "has_string_terms",
    "json_path",
    "prefix_range",
    "quote_identifier",
    "write_transaction",
]

# Metadata names made of these characters can be embedded in a JSON path literal
# (needed for expression indexes) without any quoting subtleties.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-. :/@+]{1,128}")


def quote_identifier(name: str) -> str:
    """Quote *name* as an SQL identifier (double quotes, embedded quotes doubled)."""
    if "\x00" in name:
        raise ValueError(f"SQL identifiers cannot contain NUL: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def json_path(name: str) -> str | None:
    """The SQL string literal of the JSON path to metadata entry *name*, or ``None``.

    ``None`` means the name has characters that cannot safely appear in a path literal;
    such terms are evaluated in Python instead.
    """
    if not _SAFE_NAME.fullmatch(name):
        return None
    return "'$.\"" + name + "\"'"


# Versions are stored as integers (see storekeeper.store.abstract.version_numbers) and
# read back as the decimal text callers see; tables made before that hold text tokens,
# which the cast leaves alone.
_VERSION = "CAST(version AS TEXT)"


class Schema:
    """The statements for one store table (and its chunk table) in one database."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.main = quote_identifier(table)
        self.chunks = quote_identifier(table + "__chunks")
        self.chunk_index = quote_identifier(table + "__chunks_by_blob")
        # Names of the three objects ``create`` makes; SQLite folds ASCII case in names.
        self.table_names = (table, table + "__chunks", table + "__chunks_by_blob")
        self.count_tables = (
            "SELECT count(*) FROM sqlite_master WHERE "
            "(type='table' AND lower(name) IN (lower(?1), lower(?2))) "
            "OR (type='index' AND lower(name)=lower(?3))"
        )
        self.create = [
            f"CREATE TABLE IF NOT EXISTS {self.main} ("
            "key TEXT PRIMARY KEY NOT NULL, metadata TEXT NOT NULL, created REAL NOT NULL, "
            "modified REAL NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL, blob TEXT, "
            "data BLOB)",
            f"CREATE TABLE IF NOT EXISTS {self.chunks} ("
            "blob TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL)",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {self.chunk_index} ON {self.chunks}(blob, seq)",
        ]
        self.select_row = (
            f"SELECT metadata, created, modified, {_VERSION}, size, blob, data "
            f"FROM {self.main} WHERE key=?"
        )
        self.select_state = f"SELECT metadata, {_VERSION}, blob FROM {self.main} WHERE key=?"
        self.select_data = f"SELECT data FROM {self.main} WHERE key=?"
        self.select_metadata = f"SELECT metadata FROM {self.main} WHERE key=?"
        self.select_head = f"SELECT {_VERSION}, size, metadata FROM {self.main} WHERE key=?"
        self.select_exists = f"SELECT 1 FROM {self.main} WHERE key=?"
        # The columns of a detailed listing, after the key (see _sqlite_listing.row_range).
        self.info_columns = f", size, created, modified, {_VERSION}"
        self.upsert = self._upsert("?, ?, ?, ?, ?, ?, ?, ?")
        self.update_metadata = (
            f"UPDATE {self.main} SET metadata=?, modified=?, version=? WHERE key=?"
        )
        self.delete = f"DELETE FROM {self.main} WHERE key=?"
        # The one-statement writes of SqliteStore's quick paths: they leave a row that
        # names chunks or a value file alone (changing nothing), and the caller then
        # takes the full path, which cleans those up.
        self.quick_upsert = self._upsert(
            "?1, ?2, ?3, ?3, ?4, length(?5), ?5, NULL", only_inline_rows=True
        )
        self.quick_delete = f"DELETE FROM {self.main} WHERE key=? AND blob IS NULL"
        # Parameters as quick_upsert's; a seventh (?6) is the version a write expects.
        self.quick_create = (
            f"INSERT INTO {self.main} "
            "(key, metadata, created, modified, version, size, data, blob) "
            "VALUES (?1, ?2, ?3, ?3, ?4, length(?5), ?5, NULL) ON CONFLICT(key) DO NOTHING"
        )
        self.quick_replace = (
            f"UPDATE {self.main} SET metadata=?2, modified=?3, version=?4, size=length(?5), "
            "data=?5 WHERE key=?1 AND blob IS NULL"
        )
        self.quick_replace_version = self.quick_replace + f" AND {_VERSION}=?6"
        self.quick_delete_version = self.quick_delete + f" AND {_VERSION}=?"
        self.insert_chunk = f"INSERT INTO {self.chunks} (blob, seq, data) VALUES (?, ?, ?)"
        self.select_chunk = f"SELECT data FROM {self.chunks} WHERE blob=? AND seq=?"
        self.delete_chunks = f"DELETE FROM {self.chunks} WHERE blob=?"
        # For a chunk set kept while a value read it: a rolled back overwrite may have
        # left a row naming it again.
        self.delete_unreferenced_chunks = (
            f"DELETE FROM {self.chunks} WHERE blob=?1 "
            f"AND NOT EXISTS (SELECT 1 FROM {self.main} WHERE blob=?1)"
        )
        self.file_refs = f"SELECT blob FROM {self.main} WHERE blob LIKE 'file:%'"
        self.orphan_chunks = (
            f"DELETE FROM {self.chunks} WHERE blob NOT IN "
            f"(SELECT blob FROM {self.main} WHERE blob IS NOT NULL)"
        )
        self.select_blobs = f"SELECT key, blob FROM {self.main} WHERE key IN "
        self.list_indexes = "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?"

    def missing(
        self, conn: sqlite3.Connection, indexes: set[str], columns: Iterable[str], limit: int
    ) -> bool:
        """Whether the tables are missing, or among the existing *indexes* one on the
        first *limit* of *columns* that can have one: a read, so it needs no lock."""
        if conn.execute(self.count_tables, self.table_names).fetchone()[0] < 3:
            return True
        wanted = [self.index_name(name) for name in columns if json_path(name)][:limit]
        return not indexes.issuperset(wanted)

    def insert_batch(self, now: float, *, empty_metadata: bool) -> str:
        """An upsert of inline values for ``executemany`` over ``(key, metadata, version,
        data)`` rows (``(key, version, data)`` when *empty_metadata*: every row's
        metadata is ``{}``), with *now* as their time written into the statement.

        Every bound value costs a conversion per row, and in a batch of small values
        those cost more than SQLite's own work: the batch's time and empty metadata are
        literals, and the size is computed from the data parameter, bound once.
        A float's ``repr`` round-trips through SQLite's parser.
        """
        stamp = repr(float(now))
        if empty_metadata:
            return self._upsert(f"?1, '{{}}', {stamp}, {stamp}, ?2, length(?3), ?3, NULL")
        return self._upsert(f"?1, ?2, {stamp}, {stamp}, ?3, length(?4), ?4, NULL")

    def _upsert(self, values: str, *, only_inline_rows: bool = False) -> str:
        """Insert-or-replace of one row from *values* (SQL for the columns in the order
        key, metadata, created, modified, version, size, data, blob); a replaced row
        keeps its ``created``. *only_inline_rows*: an existing row whose value lives
        elsewhere (``blob`` set) is left as it is, and the statement changes no row."""
        return (
            f"INSERT INTO {self.main} "
            "(key, metadata, created, modified, version, size, data, blob) "
            f"VALUES ({values}) ON CONFLICT(key) DO UPDATE SET "
            "metadata=excluded.metadata, modified=excluded.modified, version=excluded.version, "
            "size=excluded.size, data=excluded.data, blob=excluded.blob"
            + (" WHERE blob IS NULL" if only_inline_rows else "")
        )

    def index_name(self, metadata_name: str) -> str:
        """A stable index name for *metadata_name* (hashed, so it needs no escaping)."""
        digest = hashlib.sha256(metadata_name.encode()).hexdigest()[:16]
        return f"{self.table}__md_{digest}"

    def create_index(self, metadata_name: str, path: str) -> str:
        """The statement creating the expression index on metadata entry *metadata_name*."""
        return (
            f"CREATE INDEX IF NOT EXISTS {quote_identifier(self.index_name(metadata_name))} "
            f"ON {self.main}(json_extract(metadata, {path}))"
        )

    def select_query(
        self, where: str, *, with_metadata: bool, metadata_if_nul: bool = False
    ) -> str:
        """``SELECT key[, metadata] ... WHERE where`` over the main table; with
        *metadata_if_nul*, the metadata comes only of rows holding a string with NUL
        (``NULL`` for the others), which a query must re-check in Python."""
        columns = "key, metadata" if with_metadata else "key"
        if metadata_if_nul:
            columns = f"key, CASE WHEN {_HAS_NUL} THEN metadata END"
        return f"SELECT {columns} FROM {self.main} WHERE {where}"


@contextmanager
def write_transaction(conn: sqlite3.Connection, *, begun: bool = False) -> Iterator[None]:
    """A write transaction on *conn* (*begun*: already begun), committed at the end and
    rolled back on error."""
    if not begun:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def begin_without_waiting(conn: sqlite3.Connection, timeout: float) -> bool:
    """``BEGIN IMMEDIATE`` if no other connection holds the write lock now; whether it
    began. *timeout* is the connection's busy timeout (seconds), restored after."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return True


def prefix_range(prefix: str) -> tuple[str, tuple[str, ...]]:
    """``(where clause, parameters)`` selecting the keys that start with *prefix*, as a
    range scan of the primary key.

    SQLite orders text by its UTF-8 bytes, which is the order of code points, so the
    keys starting with *prefix* are those from *prefix* up to (excluding) the least
    string above all of them: *prefix* less its trailing U+10FFFF characters, with its
    last character incremented (no such bound when nothing is left). A prefix with a
    lone surrogate has no UTF-8 form and so starts no stored key.
    """
    if not encodable(prefix):
        return "0", ()
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return "key >= ?", (prefix,)
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000  # surrogates never occur in stored keys
    return "key >= ? AND key < ?", (prefix, stem[:-1] + chr(following))


#: A row whose metadata text holds this escape has a string with a NUL character, which
#: json_extract cuts short there ("a\u0000b" reads as "a"). Such rows are decided in
#: Python; the SQL of string terms only has to let them through.
NUL_ESCAPE = "'\\u0000'"
_HAS_NUL = f"instr(metadata, {NUL_ESCAPE}) > 0"

# Integers beyond 64 bits read back from JSON as the nearest float, and floats that large
# cannot tell neighbouring integers apart: numbers with a magnitude below this compare
# exactly in SQL; larger ones only loosely (the Python re-check decides).
_EXACT_LIMIT = 2**63


def compile_query(terms: Mapping[str, QueryTerm]) -> tuple[str, list[Any], bool]:
    """Compile query terms into ``(where clause, parameters, exact)``.

    The clause selects a superset of the matching rows. ``exact`` is true when the SQL
    decides every term by itself for every row whose metadata holds no NUL character
    in a string (:data:`NUL_ESCAPE`): only such rows need the Python re-check, and
    only when :func:`has_string_terms` says a term compares strings.
    """
    clauses: list[str] = []
    params: list[Any] = []
    exact = True
    for name, term in terms.items():
        path = json_path(name)
        compiled = None if path is None else _compile_term(path, term)
        if compiled is None:
            exact = False
            continue
        clause, term_params, term_exact = compiled
        clauses.append(clause)
        params.extend(term_params)
        exact = exact and term_exact
    return (" AND ".join(clauses) or "1"), params, exact


def has_string_terms(terms: Mapping[str, QueryTerm]) -> bool:
    """Whether a term compares string values, whose SQL is loose on rows holding NUL."""
    for term in terms.values():
        if isinstance(term, Prefix):
            return True
        if isinstance(term, Equals) and isinstance(term.expected, str):
            return True
        if isinstance(term, In) and any(isinstance(value, str) for value in term.values):
            return True
        if isinstance(term, Range) and term.kind == "string":
            return True
    return False


_Compiled = tuple[str, list[Any], bool]


def _compile_term(path: str, term: QueryTerm) -> _Compiled | None:
    value = f"json_extract(metadata, {path})"
    kind = f"json_type(metadata, {path})"
    if isinstance(term, Equals):
        return _compile_equals(value, kind, term.expected)
    if isinstance(term, Exists):
        return f"{kind} IS {'NOT ' if term.present else ''}NULL", [], True
    if isinstance(term, Prefix):
        return _compile_prefix(value, kind, term.prefix)
    if isinstance(term, Range):
        return _compile_range(value, kind, term)
    if isinstance(term, In):
        return _compile_in(value, kind, term.values)
    return None


def _compile_equals(value: str, kind: str, expected: Any) -> _Compiled | None:
    if type(expected) is str and "\x00" not in expected:  # the most frequent term
        return f"{kind} = 'text' AND {value} = ?", [expected], True
    return _compile_in(value, kind, (expected,))


def _scalar_kind(value: Any) -> str | None:
    """How SQL compares *value*: ``'null'``, ``'text'``, ``'number'`` (booleans too:
    JSON true/false extract as 1/0, so they compare as Python's ``==`` does), or
    ``None`` for values left to Python (lists, dicts, numbers beyond a float)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool | float):
        return "number"
    if isinstance(value, int):
        return "number" if _as_float(value) is not None else None
    return None


def _compile_in(value: str, kind: str, candidates: tuple[Any, ...]) -> _Compiled | None:
    """Equality with any of *candidates* (one for an exact match), grouped by kind."""
    if not candidates:
        return "0", [], True
    groups: dict[str, list[Any]] = {}
    for candidate in candidates:
        scalar = _scalar_kind(candidate)
        if scalar is None:
            return None
        groups.setdefault(scalar, []).append(candidate)
    clauses: list[str] = []
    params: list[Any] = []
    exact = True
    for scalar, members in groups.items():
        if scalar == "null":
            clauses.append(f"{kind} = 'null'")
        elif scalar == "text":
            clause, texts = _text_in(value, members)
            clauses.append(f"({kind} = 'text' AND {clause})")
            params.extend(texts)
        else:
            numbers = f"{kind} IN ('integer', 'real', 'true', 'false')"
            clauses.append(f"({numbers} AND {value} IN ({_marks(members)}))")
            params.extend(map(_number_param, members))
            exact = exact and all(map(_exact_number, members))
    return "(" + " OR ".join(clauses) + ")", params, exact


def _text_in(value: str, texts: list[str]) -> tuple[str, list[str]]:
    """Equality with any of *texts*, and its parameters. Stored strings read cut at
    their first NUL, so a row holding NUL may pass wrongly (the re-check drops it); a
    string with NUL, compared cut the same way, can match only such rows."""
    plain = [text for text in texts if "\x00" not in text]
    with_nul = [_before_nul(text) for text in texts if "\x00" in text]
    parts = [f"{value} IN ({_marks(plain)})"] if plain else []
    if with_nul:
        parts.append(f"({_HAS_NUL} AND {value} IN ({_marks(with_nul)}))")
    return "(" + " OR ".join(parts) + ")", plain + with_nul


def _marks(values: list[Any]) -> str:
    return ", ".join("?" * len(values))


def _compile_prefix(value: str, kind: str, prefix: str) -> _Compiled:
    head = _before_nul(prefix)
    clause = f"{kind} = 'text' AND substr({value}, 1, ?) = ?"
    if head != prefix:
        clause += f" AND {_HAS_NUL}"
    return clause, [len(head), head], True


def _compile_range(value: str, kind: str, term: Range) -> _Compiled | None:
    if term.kind == "string":
        return _compile_text_range(value, kind, term)
    clauses = [f"{kind} IN ('integer', 'real')"]
    params: list[Any] = []
    exact = True
    for bound, low, inclusive in (
        (term.low, True, term.include_low),
        (term.high, False, term.include_high),
    ):
        if bound is None:
            continue
        if _exact_number(bound):
            operator = (">" if low else "<") + ("=" if inclusive else "")
            clauses.append(f"{value} {operator} ?")
            params.append(bound)
            continue
        number = _as_float(bound) if isinstance(bound, int) else bound
        if number is None:
            return None  # beyond any float: Python decides
        # Rounding is monotonic, so the inclusive comparison of the rounded numbers
        # keeps every match; the Python re-check drops the extra ones.
        clauses.append(f"{value} {'>=' if low else '<='} ?")
        params.append(number)
        exact = False
    return " AND ".join(clauses), params, exact


def _compile_text_range(value: str, kind: str, term: Range) -> _Compiled:
    """String bounds. A stored string reads cut at its first NUL, never after where it
    was, and cutting keeps code point order: an upper bound as given, and a lower bound
    cut the same way and inclusive, keep every match (and the expression index usable);
    rows without NUL then get the exact lower bound."""
    clauses = [f"{kind} = 'text'"]
    params: list[Any] = []
    if term.low is not None:
        head = _before_nul(term.low)
        clauses.append(f"{value} >= ?")
        params.append(head)
        if head != term.low or not term.include_low:
            clauses.append(f"({_HAS_NUL} OR {value} {'>=' if term.include_low else '>'} ?)")
            params.append(term.low)
    if term.high is not None:
        clauses.append(f"{value} {'<=' if term.include_high else '<'} ?")
        params.append(term.high)
    return " AND ".join(clauses), params, True


def _before_nul(text: str) -> str:
    """*text* up to its first NUL: what json_extract reads of a stored string."""
    return text.partition("\x00")[0]


def _as_float(number: int) -> float | None:
    try:
        return float(number)
    except OverflowError:
        return None


def _exact_number(number: Any) -> bool:
    """Whether SQL compares *number* exactly with every stored number (see _EXACT_LIMIT)."""
    return isinstance(number, bool) or -_EXACT_LIMIT < number < _EXACT_LIMIT


def _number_param(number: Any) -> Any:
    """*number* as SQL can bind it: ints beyond 64 bits as the nearest float."""
    if isinstance(number, int) and not isinstance(number, bool) and not _exact_number(number):
        return float(number)
    return number
