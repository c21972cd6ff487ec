"""The metadata indexes of :class:`~storekeeper.backends.redis.RedisStore` and the
query plans that read them.

Each top-level metadata entry ``name: value`` of a key lists the key under (names below
are relative to the store's root; ``<name>`` is the name's length, ``:``, the name, so
no two names share an index):

- ``e:<name>``, a set: the keys that have the entry (``Exists``);
- ``v:<name>:<class>``, a set: the keys whose value is in one equality *class*
  (exact terms and ``In``); the class of a value is a canonical text in which values
  Python's ``==`` calls equal coincide (``1``, ``1.0`` and ``true``; lists element by
  element, dicts in key order), hashed when long;
- ``n:<name>``, a sorted set scored by the value, for numbers (``Range`` of numbers);
- ``t:<name>``, a sorted set of ``value NUL key`` members read by ``ZRANGEBYLEX``, for
  strings (``Range`` of strings and ``Prefix``); the value is escaped (NUL as
  ``\x01\x01``, ``\x01`` as ``\x01\x02``), which keeps code-point order and leaves
  the separator below every character, so a value sorts before its extensions.

An index gives *candidates*, never the answer: the candidates' metadata is read and
every term is tested in Python with :func:`~storekeeper.store.backend.matches`, so an
answer is exactly what the query semantics say (scores are floats, hashes may collide,
a string may hold NUL), while only the keys an index lists are read, never every key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storekeeper.store.query import Equals, Exists, In, Prefix, QueryTerm, Range

__all__ = ["Plan", "index_entries", "plan"]

_LONG = 96  # classes longer than this are hashed, so an index name stays short


def _escaped(text: str) -> str:
    return text.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")


def _name(name: str) -> str:
    return f"{len(name)}:{name}"


def _canonical(value: Any) -> str:  # noqa: PLR0911 - one return per JSON type
    """A text that two JSON values share exactly when Python's ``==`` says equal."""
    if value is None:
        return "n"
    if isinstance(value, bool):
        return "i1" if value else "i0"
    if isinstance(value, int):
        return f"i{value}"
    if isinstance(value, float):
        if value.is_integer():
            return f"i{int(value)}"
        return f"f{value!r}"
    if isinstance(value, str):
        return "s" + json.dumps(value)
    if isinstance(value, list | tuple):
        return "l[" + ",".join(map(_canonical, value)) + "]"
    if isinstance(value, Mapping):
        items = sorted(value.items())
        return "d{" + ",".join(json.dumps(k) + ":" + _canonical(v) for k, v in items) + "}"
    return "?" + repr(value)  # not JSON: never stored, matches nothing


def value_class(name: str, value: Any) -> str:
    """The index (relative to the root) of *name*'s equality class of *value*."""
    text = _canonical(value)
    if len(text) > _LONG:
        text = (
            "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
        )
    return f"v:{_name(name)}:{text}"


def _score(value: float) -> str:
    # Rounding to the nearest double keeps the order (non-decreasing), and the query
    # bounds are rounded outwards, so no stored number falls outside a range it matches.
    try:
        return repr(float(value))
    except OverflowError:  # an int beyond every double: past every finite bound
        return "inf" if value > 0 else "-inf"


def index_entries(metadata: Mapping[str, Any]) -> str:
    """The JSON list of index entries of a record with *metadata* (what the write
    script adds, and removes when the record changes)."""
    entries: list[list[str]] = []
    for name, value in metadata.items():
        label = _name(name)
        entries.append(["s", f"e:{label}"])
        entries.append(["s", value_class(name, value)])
        if isinstance(value, int | float) and not isinstance(value, bool):
            entries.append(["z", f"n:{label}", _score(value)])
        elif isinstance(value, str):
            entries.append(["l", f"t:{label}", _escaped(value)])
    return json.dumps(entries, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Plan:
    """How to find the candidates of a query: the sets to intersect (``sets``: each a
    list of set names whose union is one term's candidates), the sorted-set ranges
    (``ranges``: ``(kind, name, low, high)`` with kind ``score`` or ``lex``), and
    whether every key is a candidate (``everything``: no term narrows the search)."""

    sets: list[list[str]]
    ranges: list[tuple[str, str, bytes | str, bytes | str]]

    @property
    def everything(self) -> bool:
        """No index narrows the candidates: every key must be read."""
        return not self.sets and not self.ranges

    def names(self) -> list[str]:
        """Every index the plan reads (relative to the root)."""
        found = [name for union in self.sets for name in union]
        found.extend(name for _, name, _, _ in self.ranges)
        return found


def plan(terms: Mapping[str, QueryTerm]) -> Plan:
    """The plan for *terms* (see :class:`Plan`); terms no index answers
    (``Exists(False)``) are only tested on the candidates."""
    sets: list[list[str]] = []
    ranges: list[tuple[str, str, bytes | str, bytes | str]] = []
    for name, term in terms.items():
        label = _name(name)
        if isinstance(term, Equals):
            sets.append([value_class(name, term.expected)])
        elif isinstance(term, In):
            sets.append([value_class(name, value) for value in term.values])
        elif isinstance(term, Exists):
            if term.present:
                sets.append([f"e:{label}"])
        elif isinstance(term, Range):
            ranges.append(_range(label, term))
        elif isinstance(term, Prefix):
            low = _escaped(term.prefix).encode()
            ranges.append(("lex", f"t:{label}", b"[" + low, b"(" + low + b"\xff"))
    return Plan(sets, ranges)


def _range(label: str, term: Range) -> tuple[str, str, bytes | str, bytes | str]:
    # Bounds are widened (inclusive, floats rounded outwards): the test in Python
    # decides the edges exactly.
    if term.kind == "number":
        low = "-inf" if term.low is None else repr(_outwards(term.low, -math.inf))
        high = "+inf" if term.high is None else repr(_outwards(term.high, math.inf))
        return ("score", f"n:{label}", low, high)
    low_text = b"-" if term.low is None else b"[" + _escaped(term.low).encode()
    high_text = b"+" if term.high is None else b"(" + _escaped(term.high).encode() + b"\xff"
    return ("lex", f"t:{label}", low_text, high_text)


def _outwards(value: float, direction: float) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond every float
        return math.inf if value > 0 else -math.inf
    return math.nextafter(number, direction)
