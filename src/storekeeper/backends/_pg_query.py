"""Queries of a :class:`~storekeeper.backends.postgres.PostgresStore`, compiled to SQL.

Each term becomes a condition that PostgreSQL answers from an index and that is true at
least for every row Python's :func:`~storekeeper.store.backend.matches` accepts (a
superset); the rows it finds are then checked in Python, so the answer is exactly
Python's whatever the edge (``True == 1``, integers beyond 64 bits, floats whose
decimal text is not their exact value, NUL characters, which neither ``jsonb`` nor
``text`` can hold).

- exact strings, ``None`` and containers without numbers: ``meta @> {name: value}``
  (the GIN index on ``meta``); ``Exists()``: ``meta ? name`` (the same index);
- numbers (exact values and ``Range``): the metadata name's numeric expression index,
  over a range widened by a relative 2**-50 (a float's shortest decimal text is within
  half a unit in the last place of its value), plus the boolean a 0 or 1 also equals;
- strings in a ``Range`` or ``Prefix``: the name's string expression index, which orders
  by code point (``COLLATE "C"``) the first :data:`INDEXED_CHARACTERS` characters of the
  strings (a btree entry holds at most 2,704 bytes: a longer string could not be
  written), so a lower bound is cut to as many; a bound holding NUL is dropped (Python
  decides);
- ``Exists(False)``: ``NOT meta ? name`` (no index can find what is missing).

Rows whose metadata holds a NUL character have no ``meta``; a query reads them through
their own partial index and checks them in Python. The two expression indexes of a name
are created the first time a query needs them, outside transactions, up to
``max_indexes`` names (:class:`Indexes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from psycopg import sql

from storekeeper.backends._pg_schema import Escaped, Schema, short_hash
from storekeeper.store.listing import prefix_end
from storekeeper.store.query import Equals, Exists, In, Prefix, QueryTerm, Range

__all__ = [
    "INDEXED_CHARACTERS",
    "Compiled",
    "Indexes",
    "compile_query",
    "numeric_expression",
    "string_expression",
]

#: How many leading characters of a string its string index holds (4 bytes at most each).
INDEXED_CHARACTERS = 600

_FALSE = sql.SQL("FALSE")
_TRUE = sql.SQL("TRUE")
_WIDEN = Decimal(2) ** -50


def numeric_expression(name: str) -> sql.Composed:
    """The numeric value of metadata *name* (``NULL`` unless a number), for a statement
    executed with parameters (the name is a literal, so that expression indexes match)."""
    literal = Escaped(sql.Literal(name))
    return sql.SQL(
        "(CASE WHEN jsonb_typeof(meta -> {n}) = 'number' THEN (meta ->> {n})::numeric END)"
    ).format(n=literal)


def string_expression(name: str) -> sql.Composed:
    """The first :data:`INDEXED_CHARACTERS` characters of the string value of metadata
    *name* in code-point order (``NULL`` unless a str), for a statement executed with
    parameters."""
    literal = Escaped(sql.Literal(name))
    return sql.SQL(
        "(left(CASE WHEN jsonb_typeof(meta -> {n}) = 'string' THEN meta ->> {n} END, {size}) "
        'COLLATE "C")'
    ).format(n=literal, size=sql.Literal(INDEXED_CHARACTERS))


class Compiled:
    """A query's condition on ``meta`` (with its parameters) and the metadata names
    whose expression indexes it would use."""

    def __init__(self) -> None:
        self.params: list[Any] = []
        self.indexed: set[str] = set()

    def param(self, value: Any, cast: str = "") -> sql.Composable:
        """A placeholder for *value* (cast to the SQL type *cast*)."""
        self.params.append(value)
        return sql.SQL("%s" + (f"::{cast}" if cast else ""))


def compile_query(terms: Mapping[str, QueryTerm]) -> tuple[sql.Composable, Compiled]:
    """The condition selecting a superset of the rows with ``meta`` matching *terms*."""
    compiled = Compiled()
    parts = [_term(name, term, compiled) for name, term in terms.items()]
    if not parts:
        return _TRUE, compiled
    return sql.SQL(" AND ").join(sql.SQL("({})").format(part) for part in parts), compiled


def _term(name: str, term: QueryTerm, compiled: Compiled) -> sql.Composable:
    if "\x00" in name:  # no jsonb holds this name: only rows without meta can match
        return _TRUE if isinstance(term, Exists) and not term.present else _FALSE
    if isinstance(term, Equals):
        return _equals(name, term.expected, compiled)
    if isinstance(term, In):
        return _any_of(name, term.values, compiled)
    if isinstance(term, Range):
        return _range(name, term, compiled)
    if isinstance(term, Prefix):
        return _prefix(name, term.prefix, compiled)
    return _present(name, term, compiled)


def _present(name: str, term: QueryTerm, compiled: Compiled) -> sql.Composable:
    """``Exists`` (and any other term: Python decides among the keys with the name)."""
    condition = sql.SQL("meta ? {}").format(compiled.param(name))
    if isinstance(term, Exists) and not term.present:
        return sql.SQL("NOT ({})").format(condition)
    return condition


def _any_of(name: str, values: tuple[Any, ...], compiled: Compiled) -> sql.Composable:
    if not values:
        return _FALSE
    return sql.SQL(" OR ").join(_equals(name, value, compiled) for value in values)


def _equals(name: str, value: Any, compiled: Compiled) -> sql.Composable:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool) or (_is_number(value) and value in (0, 1)):
        flag = bool(value)
        contains = _contains(name, flag, compiled)
        return sql.SQL("{} OR {}").format(contains, _between(name, int(flag), compiled))
    if _is_number(value):
        return _between(name, value, compiled)
    if isinstance(value, str) and "\x00" in value:
        return _FALSE
    if isinstance(value, list | dict) and not _exact_in_jsonb(value):
        return sql.SQL("meta ? {}").format(compiled.param(name))
    return _contains(name, value, compiled)


def _contains(name: str, value: Any, compiled: Compiled) -> sql.Composable:
    document = json.dumps({name: value}, ensure_ascii=False, allow_nan=False)
    return sql.SQL("meta @> {}").format(compiled.param(document, "jsonb"))


def _between(name: str, number: Any, compiled: Compiled) -> sql.Composable:
    exact = _decimal(number)
    slack = abs(exact) * _WIDEN
    compiled.indexed.add(name)
    return sql.SQL("{e} BETWEEN {low} AND {high}").format(
        e=numeric_expression(name),
        low=compiled.param(exact - slack, "numeric"),
        high=compiled.param(exact + slack, "numeric"),
    )


def _range(name: str, term: Range, compiled: Compiled) -> sql.Composable:
    compiled.indexed.add(name)
    bounds: list[sql.Composable] = []
    if term.kind == "number":
        expression = numeric_expression(name)
        if term.low is not None:
            low = _decimal(term.low)
            bounds.append(sql.SQL("{} >= {}").format(expression, _widened(low, -1, compiled)))
        if term.high is not None:
            high = _decimal(term.high)
            bounds.append(sql.SQL("{} <= {}").format(expression, _widened(high, 1, compiled)))
        return sql.SQL(" AND ").join(bounds)
    expression = string_expression(name)
    bounds.append(sql.SQL("{} IS NOT NULL").format(expression))
    if term.low is not None and "\x00" not in term.low:
        low = term.low[:INDEXED_CHARACTERS]
        bounds.append(sql.SQL("{} >= {}").format(expression, compiled.param(low, "text")))
    if term.high is not None and "\x00" not in term.high:
        bounds.append(sql.SQL("{} <= {}").format(expression, compiled.param(term.high, "text")))
    return sql.SQL(" AND ").join(bounds)


def _prefix(name: str, prefix: str, compiled: Compiled) -> sql.Composable:
    compiled.indexed.add(name)
    prefix = prefix.partition("\x00")[0]
    expression = string_expression(name)
    low = prefix[:INDEXED_CHARACTERS]
    condition = sql.SQL("{} >= {}").format(expression, compiled.param(low, "text"))
    end = prefix_end(prefix)
    if end is None:
        return condition
    return sql.SQL("{} AND {} < {}").format(condition, expression, compiled.param(end, "text"))


def _widened(bound: Decimal, direction: int, compiled: Compiled) -> sql.Composable:
    return compiled.param(bound + direction * abs(bound) * _WIDEN, "numeric")


def _decimal(number: Any) -> Decimal:
    """*number*'s exact value (a float's binary value, not its shortest decimal text)."""
    return Decimal(number)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _exact_in_jsonb(value: Any) -> bool:
    """Whether ``jsonb`` containment finds every value Python counts equal to *value*:
    no numbers or booleans (``1 == 1.0 == True``, decimal text of floats) and no NUL."""
    if isinstance(value, bool) or _is_number(value):
        return False
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, list):
        return all(map(_exact_in_jsonb, value))
    if isinstance(value, dict):
        return all(_exact_in_jsonb(k) and _exact_in_jsonb(v) for k, v in value.items())
    return True


class Indexes:
    """The metadata names whose expression indexes exist (at most *limit* names)."""

    def __init__(self, schema: Schema, limit: int) -> None:
        self.schema = schema
        self.limit = limit
        self.existing: set[str] = set()

    def index_names(self, name: str) -> tuple[str, str]:
        """The names of *name*'s numeric and string indexes."""
        digest = short_hash(name, 16)
        return f"{self.schema.table}__n{digest}", f"{self.schema.table}__s{digest}"

    def load(self, index_names: Iterable[str]) -> None:
        """Remember which of the table's indexes exist (their names)."""
        self.existing = set(index_names)

    def has(self, name: str) -> bool:
        """Whether both expression indexes of metadata *name* exist."""
        numeric, text = self.index_names(name)
        return numeric in self.existing and text in self.existing

    def missing(self, names: Iterable[str]) -> list[tuple[str, sql.Composed]]:
        """``(index name, CREATE INDEX ...)`` for the metadata *names* without their
        indexes, as long as the table stays within the limit of indexed names; each to
        execute with parameters (``[]``)."""
        # Numeric index names only: the table's "__nul" index shares their prefix.
        prefix = self.schema.table + "__n"
        indexed = sum(
            1 for index in self.existing if index.startswith(prefix) and index != prefix + "ul"
        )
        out: list[tuple[str, sql.Composed]] = []
        for name in sorted(names):
            if self.has(name):
                continue
            if indexed >= self.limit:
                break
            indexed += 1
            numeric, text = self.index_names(name)
            for index, expression in (
                (numeric, numeric_expression(name)),
                (text, string_expression(name)),
            ):
                statement = sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    Escaped(sql.Identifier(index)), Escaped(self.schema.main), expression
                )
                out.append((index, statement))
        return out
