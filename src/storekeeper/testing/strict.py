"""Conformance checks of strict input, mixed into :class:`~storekeeper.testing.store.StoreTests`.

Every store, backend or composite, must:

- refuse arguments of the wrong type (``if_exists``, ``if_version``, ``select``,
  ``buffer_size``, glob patterns, query term names) with a ``TypeError``
  (:class:`~storekeeper.errors.InvalidArgumentError`), and keys and metadata it cannot
  hold (lone surrogates, non-str keys at any depth, NaN, circular nesting or nesting
  deeper than :data:`~storekeeper.store.backend.MAX_METADATA_DEPTH`) with
  :class:`~storekeeper.errors.InvalidKeyError` /
  :class:`~storekeeper.errors.InvalidMetadataError`, writing nothing: the stored value is
  checked afterwards;
- answer queries over hostile values (strings holding NUL, integers beyond 64 bits,
  floats equal to integers, booleans) exactly as Python's ``==`` and ordering answer on
  the same data: :class:`StrictInputTests` compares each answer with a small model
  written here independently of the stores' own matching code;
- reach every metadata name through a mapping of terms, ``select`` included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from storekeeper.errors import InvalidKeyError, InvalidMetadataError
from storekeeper.store import AbstractStore, Exists, In, Prefix, QueryTerm, Range
from storekeeper.store.backend import MAX_METADATA_DEPTH

__all__ = ["HOSTILE_VALUES", "StrictInputTests"]

#: Metadata values whose queries backends have got wrong: NUL in strings, integers
#: beyond 64 bits (stored exactly, read by some engines as the nearest float), floats
#: equal to integers, and the booleans Python counts as 0 and 1.
HOSTILE_VALUES: list[Any] = [
    "",
    "a",
    "a\x00",
    "a\x00b",
    "a\x00c",
    "ab",
    "\x00",
    "b",
    "a\\u0000b",
    "é",
    "\U0010ffff",
    0,
    1,
    -1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    2**64 + 1,
    2**70,
    -(2**70),
    10**30,
    0.5,
    1.0,
    -0.0,
    float(2**53),
    float(2**63),
    float(2**64),
    -float(2**63),
    1e300,
    True,
    False,
    None,
    [1, "a"],
    [True],
    {"x": 1},
]

#: Queries over :data:`HOSTILE_VALUES` beyond an exact match of each of them.
HOSTILE_TERMS: list[Any] = [
    "a\x00bc",
    2**64 - 1,
    2**63 + 1,
    float(2**53 + 2),
    [1.0, "a"],
    In(["a", "a\x00b"]),
    In([1, "a\x00"]),
    In([2**64 + 1, 0.5, None]),
    In([True, "b"]),
    Range(0, 2**70),
    Range(2**64, 2**64 + 2),
    Range(2**64, 2**64 + 1, include_low=False, include_high=True),
    Range(float(2**64), None),
    Range(None, -(2**63)),
    Range(None, -(2**63), include_high=True),
    Range(2**63, 2**64, include_low=False),
    Range(-(2**63), 2**63),
    Range(-1, 1, include_low=False),
    Range(0.5, 1),
    Range(10**400, None),
    Range("a", "b"),
    Range("a", "a\x00c"),
    Range("a\x00", "a\x00c", include_low=False),
    Range(None, "a\x00"),
    Range("a\x00b", None, include_low=False),
    Prefix("a"),
    Prefix("a\x00"),
    Prefix("a\x00b"),
    Prefix(""),
    Prefix("\x00"),
    Exists(),
]


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def model_match(value: Any, term: Any) -> bool:
    """Whether a stored *value* matches *term*, by Python's ``==`` and ordering alone."""
    if isinstance(term, In):
        return any(value == candidate for candidate in term.values)
    if isinstance(term, Prefix):
        return isinstance(value, str) and value.startswith(term.prefix)
    if isinstance(term, Exists):
        return term.present
    if isinstance(term, Range):
        if _kind(value) != term.kind:
            return False
        low_ok = term.low is None or value > term.low or (term.include_low and value == term.low)
        high_ok = (
            term.high is None or value < term.high or (term.include_high and value == term.high)
        )
        return bool(low_ok and high_ok)
    return bool(value == term)


def _state(store: AbstractStore, key: str) -> object:
    """Everything a failed write must leave as it was: data, metadata, version."""
    if not store.exists(key):
        return None
    value = store.get(key)
    with value.data as stream:
        return stream.read(), value.metadata, value.version


def _deep(depth: int) -> Any:
    """A value nesting ``2 * depth`` lists and dicts."""
    nested: Any = "leaf"
    for _ in range(depth):
        nested = {"d": [nested]}
    return nested


class _Stream:
    """A readable binary stream (so that ``buffer_size`` is used)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk


class StrictInputTests:
    """Strict argument types and hostile values; needs the ``store`` fixture."""

    # -- wrong argument types ----------------------------------------------------------------
    def _writes(
        self, store: AbstractStore, key: str, **conditions: Any
    ) -> list[Callable[[], object]]:
        """Every single-key write of *key* with the preconditions *conditions*."""
        writes: list[Callable[[], object]] = [
            lambda: store.set(key, (b"new", {"n": 2}), **conditions),
            lambda: store.set_data(key, b"new", **conditions),
            lambda: store.set_metadata(key, {"n": 2}, **conditions),
        ]
        if "if_exists" not in conditions:
            writes.append(lambda: store.update_metadata(key, {"n": 2}, **conditions))
            writes.append(lambda: store.delete(key, **conditions))
        return writes

    @pytest.mark.parametrize(
        "conditions",
        [
            {"if_exists": 0},
            {"if_exists": 1},
            {"if_exists": "no"},
            {"if_exists": None, "if_version": 7},
            {"if_version": b"1"},
            {"if_version": False},
            {"if_version": ["1"]},
        ],
        ids=repr,
    )
    def test_preconditions_of_the_wrong_type_write_nothing(
        self, store: AbstractStore, conditions: dict[str, Any]
    ) -> None:
        store.set("k", (b"old", {"n": 1}))
        before = _state(store, "k")
        for key in ("k", "absent"):
            for write in self._writes(store, key, **conditions):
                with pytest.raises(TypeError):
                    write()
        assert _state(store, "k") == before
        assert not store.exists("absent")

    def test_preconditions_of_the_right_type_still_work(self, store: AbstractStore) -> None:
        version = store.set("k", (b"old", {}), if_exists=False)
        store.set("k", (b"new", {}), if_exists=True)
        if version is not None:
            current = store.get("k").version
            assert current is not None
            store.set_metadata("k", {"n": 1}, if_version=current)
        assert store.to_bytes("k") == b"new"

    @pytest.mark.parametrize("select", ["abc", b"ab", 5, ["a", 1]], ids=repr)
    def test_select_of_the_wrong_type(self, store: AbstractStore, select: Any) -> None:
        store.set("k", (b"", {"a": 1, "b": 2, "abc": 3}))
        with pytest.raises(TypeError, match="select"):
            store.query(select)
        with pytest.raises(TypeError, match="select"):
            store.get_metadata("k", select)
        with pytest.raises(TypeError, match="select"):
            store.multiget_metadata(["k"], select)

    def test_buffer_size_of_the_wrong_type(self, store: AbstractStore) -> None:
        store.set("k", (b"old", {"n": 1}))
        before = _state(store, "k")
        for buffer_size in ("1024", 1.5, None):
            with pytest.raises(TypeError, match="buffer_size"):
                store.set("k", (_Stream(b"new data"), {}), buffer_size)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="buffer_size"):
                store.set_data("k", _Stream(b"new data"), buffer_size)  # type: ignore[arg-type]
        assert _state(store, "k") == before

    def test_glob_pattern_of_the_wrong_type(self, store: AbstractStore) -> None:
        store.set("k", (b"", {}))
        for pattern in (5, b"k*", None, ["k"]):
            with pytest.raises(TypeError, match="pattern"):
                store.glob(pattern)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            store.glob("\udc80*")
        assert store.glob("k*") == ["k"]

    def test_query_terms_of_the_wrong_type(self, store: AbstractStore) -> None:
        store.set("k", (b"", {"a": 1}))
        with pytest.raises(TypeError):
            store.query_keys({1: 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            store.query_keys([("a", 1)])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="twice"):
            store.query_keys({"a": 1}, a=1)
        with pytest.raises(TypeError):
            store.query_keys(a=Exists(1))  # type: ignore[arg-type]

    # -- keys and metadata a store cannot hold -------------------------------------------------
    @pytest.mark.parametrize(
        "key", ["\udc80", "a\ud800b", "é\udfff"], ids=["lone", "inside", "after-non-ascii"]
    )
    def test_keys_with_lone_surrogates(self, store: AbstractStore, key: str) -> None:
        store.set("k", (b"old", {}))
        attempts: list[Callable[[], object]] = [
            lambda: store.set(key, (b"", {})),
            lambda: store.set_data(key, b""),
            lambda: store.set_metadata(key, {}),
            lambda: store.get(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: store.multiset(["k", key], [(b"new", {}), (b"", {})]),
            lambda: store.multiget(["k", key]),
        ]
        for attempt in attempts:
            with pytest.raises(InvalidKeyError):
                attempt()
        assert store.to_bytes("k") == b"old"
        assert store.query_keys() == ["k"]

    @pytest.mark.parametrize(
        "metadata",
        [
            pytest.param({"a": {1: "x"}}, id="nested-int-key"),
            pytest.param({"a": {1: "x", "1": "y"}}, id="nested-colliding-keys"),
            pytest.param({"a": [{"b": {None: 1}}]}, id="none-key-in-list"),
            pytest.param({"a": {True: 1}}, id="bool-key"),
            pytest.param({"a": {1.5: 1}}, id="float-key"),
            pytest.param({"a": "\udc80"}, id="surrogate-value"),
            pytest.param({"\ud800": 1}, id="surrogate-name"),
            pytest.param({"a": [{"\udc80": 1}]}, id="surrogate-nested-name"),
            pytest.param({"a": [1, float("nan")]}, id="nan"),
            pytest.param({"a": {"b": float("-inf")}}, id="infinity"),
            pytest.param({"a": 10**5000}, id="int-beyond-json-digits"),
            # One level beyond the limit (the metadata dict is a level): small enough
            # that a failure, and pytest's report of it, shows the value.
            pytest.param({"a": _deep(MAX_METADATA_DEPTH // 2)}, id="deep"),
        ],
    )
    def test_hostile_metadata_writes_nothing(
        self, store: AbstractStore, metadata: dict[str, Any]
    ) -> None:
        store.set("k", (b"old", {"n": 1}))
        before = _state(store, "k")
        attempts: list[Callable[[], object]] = [
            lambda: store.set("k", (b"new", metadata)),
            lambda: store.set("fresh", (b"new", metadata)),
            lambda: store.set_metadata("k", metadata),
            lambda: store.update_metadata("k", metadata),
            lambda: store.multiset(["k", "fresh"], [(b"new", {}), (b"new", metadata)]),
            lambda: store.multiset_metadata(["k", "fresh"], [{"n": 3}, metadata]),
        ]
        for attempt in attempts:
            with pytest.raises(InvalidMetadataError):
                attempt()
        assert _state(store, "k") == before
        assert not store.exists("fresh")

    def test_metadata_that_json_holds_round_trips(self, store: AbstractStore) -> None:
        metadata = {"big": 2**70, "neg": -(2**64) - 1, "nul": "a\x00b", "deep": _deep(50)}
        metadata["tuple"] = [1, [2, 3]]
        store.set("k", (b"", metadata))
        assert store.get_metadata("k") == metadata
        assert store.query_keys(big=2**70) == ["k"]
        assert store.query_keys(deep=Exists()) == ["k"]

    def test_metadata_nested_to_the_limit_round_trips(self, store: AbstractStore) -> None:
        deepest = {"a": [_deep((MAX_METADATA_DEPTH - 2) // 2)]}
        store.set("k", (b"", deepest))
        assert store.get_metadata("k") == deepest

    # -- queries answer what Python answers ------------------------------------------------------
    @pytest.mark.parametrize(
        "value", [{1, 2}, b"x", bytearray(b"x"), object(), float("nan"), "\udc80", {1: "x"}]
    )
    def test_query_values_that_are_not_json(self, store: AbstractStore, value: Any) -> None:
        store.set("k", (b"", {"v": 1}))
        with pytest.raises(InvalidMetadataError):
            store.query_keys(v=value)
        with pytest.raises(InvalidMetadataError):
            store.query(None, {"v": value})
        with pytest.raises(InvalidMetadataError):
            store.query_keys(v=In([1, value]))

    def test_queries_over_hostile_values_match_python(self, store: AbstractStore) -> None:
        keys = [f"v{index:02}" for index in range(len(HOSTILE_VALUES))]
        store.multiset(keys, [(b"", {"v": value}) for value in HOSTILE_VALUES])
        store.set("other", (b"", {"w": 1}))
        terms: list[Any] = [*HOSTILE_VALUES, *HOSTILE_TERMS]
        wrong = []
        for term in terms:
            expected = {
                key
                for key, value in zip(keys, HOSTILE_VALUES, strict=True)
                if model_match(value, term)
            }
            by_keys = set(store.query_keys(v=term))
            by_query = {key for key, _ in store.query(None, {"v": term})}
            if by_keys != expected or by_query != expected:
                wrong.append((term, sorted(by_keys ^ expected), sorted(by_query ^ expected)))
        assert not wrong, "queries whose answers differ from Python's (term, keys, query):"

    def test_exact_matches_follow_python_equality(self, store: AbstractStore) -> None:
        """``True == 1 == 1.0``: an exact match of 1 finds all three; ``Range`` (not
        an equality) never counts a boolean as a number."""
        store.multiset(["t", "i", "f"], [(b"", {"v": True}), (b"", {"v": 1}), (b"", {"v": 1.0})])
        assert sorted(store.query_keys(v=1)) == ["f", "i", "t"]
        assert sorted(store.query_keys(v=1.0)) == ["f", "i", "t"]
        assert sorted(store.query_keys(v=True)) == ["f", "i", "t"]
        assert sorted(store.query_keys(v=Range(1, 2))) == ["f", "i"]
        assert store.query_keys(v=False) == []

    # -- any metadata name -----------------------------------------------------------------------
    def test_any_metadata_name_through_a_mapping(self, store: AbstractStore) -> None:
        names = {"select": 1, "self": 2, "where": 3, "two words": 4, "": 5, "a\x00b": 6}
        store.set("k", (b"", names))
        store.set("other", (b"", {"select": 0}))
        for name, value in names.items():
            assert store.query_keys({name: value}) == ["k"], name
            assert store.query(None, {name: value}) == [("k", names)], name
        assert store.query(["self", "where"], {"select": 1}) == [("k", {"self": 2, "where": 3})]
        assert store.query_keys({"select": 1}, where=3) == ["k"]
        assert store.query_keys(select=1) == ["k"]
        assert sorted(store.query_keys({"select": In([0, 1])})) == ["k", "other"]

    def test_terms_given_as_objects_and_values_agree(self, store: AbstractStore) -> None:
        store.set("k", (b"", {"v": "x"}))
        term: QueryTerm = In(["x"])
        assert store.query_keys(v=term) == store.query_keys({"v": "x"}) == ["k"]
