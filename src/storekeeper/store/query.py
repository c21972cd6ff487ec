"""Query terms for ``store.query(...)`` and ``store.query_keys(...)``.

Each keyword argument of a query names a metadata entry and gives either a plain value
(exact match) or one of the terms below. A key matches when *all* terms match::

    store.query_keys(kind="photo")                      # exact match
    store.query_keys(year=Range(2000, 2010))            # 2000 <= year < 2010
    store.query_keys(tag=In(["a", "b"]), title=Exists())
    store.query_keys(path=Prefix("docs/"))
    store.query_keys({"select": 1, "two words": Exists()})   # any name, as a mapping
    store.query(["title"], {"select": 1})               # the same after query's select

Terms can also be given as mappings (positional arguments after ``query``'s *select*),
which reaches every metadata name, including ``select`` and names that are not Python
identifiers. A name given twice is an error.

Semantics, identical on every backend: a backend answers exactly what Python's ``==``
and ordering answer on the decoded metadata.

- Exact match compares the decoded JSON values with Python ``==``: ``1``, ``1.0`` and
  ``True`` are equal (so ``flag=1`` matches a stored ``true``), lists compare
  element-wise, dicts ignore key order; integers of any size compare exactly
  (``2**64 + 1`` does not equal ``float(2**64)``), strings may hold NUL characters.
- ``name=None`` matches keys whose metadata has ``name`` set to ``null``; a key *without*
  ``name`` never matches an exact term. Use ``Exists(False)`` for "has no such entry".
- :class:`Range` and :class:`Prefix` match only values of a comparable type (numbers
  with numbers, strings with strings, by code point); a value of another type simply
  does not match. Booleans are not numbers for :class:`Range`: ``Range(0, 2)`` does not
  match ``true``, and a boolean bound is refused.
- Query values must be what metadata can hold (see
  :func:`~storekeeper.store._validate.encode_metadata`): a ``set``, ``bytes``, NaN or a
  lone surrogate raises :class:`~storekeeper.errors.InvalidMetadataError` instead of
  silently matching nothing.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from storekeeper.errors import InvalidArgumentError, InvalidMetadataError
from storekeeper.store._validate import check_json_value

__all__ = [
    "Equals",
    "Exists",
    "In",
    "Prefix",
    "QueryTerm",
    "Range",
    "compile_terms",
    "matches",
    "pass_terms",
    "query_terms",
]

_MISSING = object()
_T = TypeVar("_T")


class QueryTerm(abc.ABC):
    """Base of the query terms; :meth:`test` decides a single present value."""

    __slots__ = ()

    @abc.abstractmethod
    def test(self, value: Any) -> bool:
        """Return whether a present metadata *value* satisfies the term."""

    def matches_missing(self) -> bool:
        """Return whether a key *lacking* the metadata entry satisfies the term."""
        return False


@dataclass(frozen=True, slots=True)
class Equals(QueryTerm):
    """Matches values equal to *expected* (what a plain value in a query means)."""

    expected: Any

    def __post_init__(self) -> None:
        check_json_value(self.expected, "the query value")

    def test(self, value: Any) -> bool:
        """True when *value* equals the expected value (JSON semantics, see module)."""
        return _json_equal(value, self.expected)


@dataclass(frozen=True, slots=True, init=False)
class In(QueryTerm):
    """Matches when the value equals any of *values* (exact-match semantics)."""

    values: tuple[Any, ...]

    def __init__(self, values: Iterable[Any]) -> None:
        if isinstance(values, str | bytes):
            raise InvalidMetadataError("In() takes an iterable of values, not a single str")
        values = tuple(values)
        check_json_value(list(values), "a value of In()")
        object.__setattr__(self, "values", values)

    def test(self, value: Any) -> bool:
        """True when *value* equals one of the values."""
        return any(_json_equal(value, candidate) for candidate in self.values)


@dataclass(frozen=True, slots=True)
class Range(QueryTerm):
    """Matches ``low <= value < high`` (bounds optional; inclusivity configurable).

    Numbers compare with numbers and strings with strings; booleans are not numbers here.
    """

    low: Any = None
    high: Any = None
    include_low: bool = True
    include_high: bool = False

    def __post_init__(self) -> None:
        if self.low is None and self.high is None:
            raise InvalidMetadataError("Range() needs a low or a high bound")
        kinds = {_kind(bound) for bound in (self.low, self.high) if bound is not None}
        if len(kinds) != 1 or None in kinds:
            raise InvalidMetadataError(
                "Range() bounds must both be numbers or both be strings: "
                f"{self.low!r}, {self.high!r}"
            )
        for bound in (self.low, self.high):
            if isinstance(bound, float) and math.isnan(bound):
                raise InvalidMetadataError("a Range() bound cannot be NaN: it orders with nothing")
            if isinstance(bound, str):
                check_json_value(bound, "a Range() bound")
        for flag in (self.include_low, self.include_high):
            if type(flag) is not bool:
                raise InvalidArgumentError(f"Range() inclusivity is a bool, not {flag!r}")

    @property
    def kind(self) -> str:
        """``'number'`` or ``'string'``: the type of value this range can match."""
        bound = self.low if self.low is not None else self.high
        kind = _kind(bound)
        assert kind is not None  # checked in __post_init__
        return kind

    def test(self, value: Any) -> bool:
        """True when *value* is of the range's kind and lies within the bounds."""
        if _kind(value) != self.kind:
            return False
        if self.low is not None and (
            value < self.low or (value == self.low and not self.include_low)
        ):
            return False
        return self.high is None or value < self.high or (value == self.high and self.include_high)


@dataclass(frozen=True, slots=True)
class Prefix(QueryTerm):
    """Matches string values that start with *prefix*."""

    prefix: str

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise InvalidMetadataError(f"Prefix() takes a str, not {self.prefix!r}")
        check_json_value(self.prefix, "the Prefix()")

    def test(self, value: Any) -> bool:
        """True when *value* is a str starting with the prefix."""
        return isinstance(value, str) and value.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Exists(QueryTerm):
    """Matches keys that have the entry (``Exists()``) or lack it (``Exists(False)``)."""

    present: bool = True

    def __post_init__(self) -> None:
        if type(self.present) is not bool:
            raise InvalidArgumentError(f"Exists() takes a bool, not {self.present!r}")

    def test(self, value: Any) -> bool:
        """True for any present value when ``present``; never otherwise."""
        return self.present

    def matches_missing(self) -> bool:
        """True for ``Exists(False)``."""
        return not self.present


def query_terms(
    where: Sequence[Mapping[str, Any]], kwargs: Mapping[str, Any]
) -> dict[str, QueryTerm]:
    """The terms of a query: the mappings *where* and the keyword arguments *kwargs*
    merged (plain values become exact matches), every store's one reading of its query
    arguments.

    Raises :class:`~storekeeper.errors.InvalidArgumentError` for a *where* that is not a
    mapping, a name that is not a ``str`` or that is given twice, and
    :class:`~storekeeper.errors.InvalidMetadataError` for a value that is not JSON.
    """
    terms = compile_terms(kwargs)
    for mapping in where:
        if not isinstance(mapping, Mapping):
            raise InvalidArgumentError(
                "query terms are keyword arguments or mappings of metadata name to term, "
                f"not {type(mapping).__name__}: {mapping!r}"
            )
        for name, term in compile_terms(mapping).items():
            if name in terms:
                raise InvalidArgumentError(f"the query term for {name!r} is given twice")
            terms[name] = term
    return terms


def pass_terms(method: Callable[..., _T], terms: Mapping[str, QueryTerm], *args: Any) -> _T:
    """Call a store's ``query`` or ``query_keys`` *method* (after *args*) with *terms*, as
    keyword arguments where they can be, so that stores written against the keyword-only
    form keep working under composites; names a keyword cannot carry there (``select``,
    ``self``) go as one mapping."""
    if "select" in terms or "self" in terms:
        return method(*args, terms)
    return method(*args, **terms)


def compile_terms(kwargs: Mapping[str, Any]) -> dict[str, QueryTerm]:
    """Turn one mapping of query terms into terms (plain values become exact matches)."""
    terms: dict[str, QueryTerm] = {}
    for name, value in kwargs.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"query terms name metadata by str, not {name!r}")
        terms[name] = value if isinstance(value, QueryTerm) else Equals(value)
    return terms


def matches(metadata: Mapping[str, Any], terms: Mapping[str, QueryTerm]) -> bool:
    """Return whether *metadata* satisfies every one of *terms*."""
    for name, term in terms.items():
        value = metadata.get(name, _MISSING)
        if value is _MISSING:
            if not term.matches_missing():
                return False
        elif not term.test(value):
            return False
    return True


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _json_equal(left: Any, right: Any) -> bool:
    # Tuples given in a query equal the lists they become once stored as JSON.
    if isinstance(right, tuple):
        right = list(right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    return bool(left == right)
