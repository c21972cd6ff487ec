"""A Hypothesis state machine that checks a store against a plain dict model.

``run_state_machine(factory)`` drives random sequences of operations against a fresh store
from *factory* and, after every step, compares what the store holds with a dict of
key -> (data, metadata): plain and partial writes, ``update_metadata``, deletes,
conditional writes (``if_version`` right and stale, ``if_exists`` True and False) and
conditional deletes, ``multiset``, transactions of several operations that commit or
roll back (also a nested one that rolls back inside one that commits), queries with
exact values and terms, ``select`` and data ranges. The model is independent of the
store's code: Python's ``==`` on the JSON values decides what a query matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from storekeeper.errors import ConflictError, KeyNotFoundError
from storekeeper.store import AbstractStore, Exists, In, Prefix

__all__ = ["json_values", "keys", "metadata_dicts", "run_state_machine"]

#: Keys: a small alphabet so that operations hit the same keys often, plus odd characters.
keys = st.text(alphabet="ab/.\\ é%", min_size=1, max_size=6)

# NUL included (every backend must store and query it); lone surrogates excluded (metadata
# must refuse them, not store them: the strict-input checks test that).
_TEXT_CHARACTERS = st.characters(blacklist_categories=["Cs"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_TEXT_CHARACTERS, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
#: Metadata names from a small alphabet (NUL included: names may hold it, keys may not),
#: so that queries find several keys.
metadata_dicts = st.dictionaries(
    st.text(alphabet="nmé\x00", min_size=1, max_size=2), json_values, max_size=4
)
#: Up to 64 bytes: over a small ``inline_limit`` these take the large-value paths.
datas = st.binary(max_size=64)

Model = dict[str, tuple[bytes, dict[str, Any]]]
#: How many (name, value) pairs the query invariant checks after each step.
_QUERIES_PER_STEP = 6

# One operation of a transaction: (kind, key, data, metadata).
_operations = st.tuples(
    st.sampled_from(["set", "set_data", "update_metadata", "delete"]), keys, datas, metadata_dicts
)


class _StoreMachine(RuleBasedStateMachine):
    factory: Callable[[], AbstractStore]

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).factory()
        self.store.connect()
        self.model: Model = {}

    def teardown(self) -> None:
        try:
            for key in self.store.query_keys():
                self.store.delete(key)
        finally:
            self.store.disconnect()

    # -- plain writes ----------------------------------------------------------------------
    @rule(key=keys, data=datas, metadata=metadata_dicts)
    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.store.set(key, (data, metadata))
        _apply(self.model, "set", key, data, metadata)

    @rule(key=keys, data=datas)
    def set_data(self, key: str, data: bytes) -> None:
        self.store.set_data(key, data)
        _apply(self.model, "set_data", key, data, {})

    @rule(key=keys, metadata=metadata_dicts)
    def set_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        self.store.set_metadata(key, metadata)
        self.model[key] = (self.model.get(key, (b"", {}))[0], _json_copy(metadata))

    @rule(key=keys, metadata=metadata_dicts)
    def update_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        if key not in self.model:
            _expect(KeyNotFoundError, lambda: self.store.update_metadata(key, metadata))
            return
        self.store.update_metadata(key, metadata)
        _apply(self.model, "update_metadata", key, b"", metadata)

    @rule(key=keys)
    def delete(self, key: str) -> None:
        if key not in self.model:
            _expect(KeyNotFoundError, lambda: self.store.delete(key))
            return
        self.store.delete(key)
        del self.model[key]

    @rule(items=st.lists(st.tuples(keys, datas, metadata_dicts), max_size=4))
    def multiset(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        self.store.multiset([key for key, _, _ in items], [(d, m) for _, d, m in items])
        for key, data, metadata in items:  # a repeated key: the last value wins
            _apply(self.model, "set", key, data, metadata)

    # -- conditional writes ----------------------------------------------------------------
    @rule(key=keys, data=datas, stale=st.booleans())
    def conditional_set(self, key: str, data: bytes, stale: bool) -> None:
        version = self.store.get(key).version if key in self.model else None
        if stale or version is None:
            wrong = (version or "v") + "-stale"
            _expect(ConflictError, lambda: self.store.set(key, (data, {}), if_version=wrong))
            return
        self.store.set(key, (data, {}), if_version=version)
        self.model[key] = (data, {})

    @rule(key=keys, data=datas, metadata=metadata_dicts, exists=st.booleans())
    def set_if_exists(self, key: str, data: bytes, metadata: dict[str, Any], exists: bool) -> None:
        def write() -> object:
            return self.store.set(key, (data, metadata), if_exists=exists)

        if (key in self.model) != exists:
            _expect(ConflictError, write)
            return
        write()
        _apply(self.model, "set", key, data, metadata)

    @precondition(lambda self: bool(self.model))
    @rule(choose=st.data(), stale=st.booleans())
    def conditional_delete(self, choose: st.DataObject, stale: bool) -> None:
        key = choose.draw(st.sampled_from(sorted(self.model)), label="key")
        version = self.store.get(key).version
        if stale:
            wrong = f"{version}-stale"
            _expect(ConflictError, lambda: self.store.delete(key, if_version=wrong))
            return
        self.store.delete(key, if_version=version)
        del self.model[key]

    # -- transactions ----------------------------------------------------------------------
    @rule(
        operations=st.lists(_operations, min_size=1, max_size=5),
        nested=st.lists(_operations, max_size=3),
        fail=st.booleans(),
    )
    def transaction(
        self,
        operations: list[tuple[str, str, bytes, dict[str, Any]]],
        nested: list[tuple[str, str, bytes, dict[str, Any]]],
        fail: bool,
    ) -> None:
        """Several operations in one transaction, with a nested one that always rolls
        back; the outer one commits unless *fail*."""
        staged = dict(self.model)
        try:
            with self.store.transaction("state machine"):
                self._run(operations, staged)
                try:
                    with self.store.transaction("nested"):
                        self._run(nested, dict(staged))
                        raise _AbortTransactionError  # noqa: TRY301 - the abort is the point
                except _AbortTransactionError:
                    pass
                if fail:
                    raise _AbortTransactionError  # noqa: TRY301
        except _AbortTransactionError:
            return
        self.model = staged

    def _run(self, operations: list[tuple[str, str, bytes, dict[str, Any]]], staged: Model) -> None:
        """Apply *operations* to the store and to *staged*; those that need an existing
        key are skipped when it is missing (a failed write inside a transaction is not
        what this model checks)."""
        for kind, key, data, metadata in operations:
            if kind in ("update_metadata", "delete") and key not in staged:
                continue
            if kind == "set":
                self.store.set(key, (data, metadata))
            elif kind == "set_data":
                self.store.set_data(key, data)
            elif kind == "update_metadata":
                self.store.update_metadata(key, metadata)
            else:
                self.store.delete(key)
            _apply(staged, kind, key, data, metadata)

    # -- reads -----------------------------------------------------------------------------
    @precondition(lambda self: bool(self.model))
    @rule(choose=st.data())
    def query(self, choose: st.DataObject) -> None:
        """Query on a name and value some key holds, as an exact value or a term."""
        key = choose.draw(st.sampled_from(sorted(self.model)), label="key")
        metadata = self.model[key][1]
        if not metadata:
            assert sorted(self.store.query_keys()) == sorted(self.model)
            return
        name = choose.draw(st.sampled_from(sorted(metadata)), label="name")
        value = metadata[name]
        terms: list[tuple[Any, Callable[[dict[str, Any]], bool]]] = [
            (value, lambda md: name in md and md[name] == value),
            (Exists(), lambda md: name in md),
            (Exists(False), lambda md: name not in md),
        ]
        if value is None or isinstance(value, (bool, int, float, str)):
            terms.append((In([value, "x"]), lambda md: name in md and md[name] in (value, "x")))
        if isinstance(value, str):
            start = value[: len(value) // 2]
            terms.append(
                (
                    Prefix(start),
                    lambda md: isinstance(md.get(name), str) and md[name].startswith(start),
                )
            )
        term, expected = choose.draw(st.sampled_from(terms), label="term")
        found = self.store.query_keys(**{name: term})
        wanted = [k for k, (_, md) in self.model.items() if expected(md)]
        assert sorted(found) == sorted(wanted), (name, term)
        selected = dict(self.store.query([name], **{name: term}))
        assert selected == {k: _select(self.model[k][1], name) for k in wanted}

    @precondition(lambda self: bool(self.model))
    @rule(choose=st.data(), start=st.integers(0, 70), length=st.integers(0, 70))
    def read_range(self, choose: st.DataObject, start: int, length: int) -> None:
        key = choose.draw(st.sampled_from(sorted(self.model)), label="key")
        with self.store.get_data_range(key, start, start + length) as stream:
            data = stream.read()
        assert data == self.model[key][0][start : start + length]

    @invariant()
    def exact_queries_match_model(self) -> None:
        """Every name the model holds, queried with the value some key holds (a bounded
        number of pairs per step): the store finds exactly the keys the model does."""
        pairs = {
            (name, json.dumps(value, sort_keys=True)): (name, value)
            for _, metadata in self.model.values()
            for name, value in metadata.items()
        }
        for _, (name, value) in sorted(pairs.items())[:_QUERIES_PER_STEP]:
            wanted = [k for k, (_, md) in self.model.items() if name in md and md[name] == value]
            assert sorted(self.store.query_keys(**{name: value})) == sorted(wanted), (name, value)

    @invariant()
    def store_matches_model(self) -> None:
        assert sorted(self.store.query_keys()) == sorted(self.model)
        for key, (data, metadata) in self.model.items():
            assert self.store.to_bytes(key) == data, key
            assert self.store.get_metadata(key) == metadata, key


class _AbortTransactionError(Exception):
    pass


def _apply(model: Model, kind: str, key: str, data: bytes, metadata: dict[str, Any]) -> None:
    """What one write does to the model."""
    old_data, old_metadata = model.get(key, (b"", {}))
    if kind == "set":
        model[key] = (data, _json_copy(metadata))
    elif kind == "set_data":
        model[key] = (data, old_metadata)
    elif kind == "update_metadata":
        model[key] = (old_data, {**old_metadata, **_json_copy(metadata)})
    else:
        del model[key]


def _select(metadata: dict[str, Any], name: str) -> dict[str, Any]:
    return {name: metadata[name]} if name in metadata else {}


def _expect(error: type[Exception], call: Callable[[], object]) -> None:
    try:
        call()
    except error:
        return
    raise AssertionError(f"expected {error.__name__}")


def _json_copy(metadata: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(metadata))
    return result


def run_state_machine(
    factory: Callable[[], AbstractStore], *, max_examples: int = 30, stateful_step_count: int = 25
) -> None:
    """Run the dict-model state machine against stores built by *factory*.

    *factory* must return a new, empty, unconnected store each call (or one emptied by
    the previous run's teardown, which deletes every key).
    """
    machine: Any = type("StoreMachine", (_StoreMachine,), {"factory": staticmethod(factory)})
    machine.TestCase.settings = settings(
        max_examples=max_examples,
        stateful_step_count=stateful_step_count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()
