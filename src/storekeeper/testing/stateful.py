"""A Hypothesis state machine that checks a store against a plain dict model.

``run_state_machine(factory)`` drives random sequences of writes, deletes, conditional
writes and (committed or failed) transactions against a fresh store from *factory* and,
after every step, compares what the store holds with a dict of key -> (data, metadata).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from storekeeper.errors import ConflictError, KeyNotFoundError
from storekeeper.store import AbstractStore

__all__ = ["json_values", "keys", "metadata_dicts", "run_state_machine"]

#: Keys: a small alphabet so that operations hit the same keys often, plus odd characters.
keys = st.text(alphabet="ab/.\\ é%", min_size=1, max_size=6)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
metadata_dicts = st.dictionaries(st.text(min_size=1, max_size=5), json_values, max_size=4)
datas = st.binary(max_size=64)

Model = dict[str, tuple[bytes, dict[str, Any]]]


class _StoreMachine(RuleBasedStateMachine):
    factory: Callable[[], AbstractStore]

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).factory()
        self.store.connect()
        self.model: Model = {}

    def teardown(self) -> None:
        for key in self.store.query_keys():
            self.store.delete(key)
        self.store.disconnect()

    @rule(key=keys, data=datas, metadata=metadata_dicts)
    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.store.set(key, (data, metadata))
        self.model[key] = (data, _json_copy(metadata))

    @rule(key=keys, data=datas)
    def set_data(self, key: str, data: bytes) -> None:
        self.store.set_data(key, data)
        self.model[key] = (data, self.model.get(key, (b"", {}))[1])

    @rule(key=keys, metadata=metadata_dicts)
    def set_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        self.store.set_metadata(key, metadata)
        self.model[key] = (self.model.get(key, (b"", {}))[0], _json_copy(metadata))

    @rule(key=keys, metadata=metadata_dicts)
    def update_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        if key not in self.model:
            try:
                self.store.update_metadata(key, metadata)
            except KeyNotFoundError:
                return
            raise AssertionError(f"update_metadata of missing {key!r} did not raise")
        self.store.update_metadata(key, metadata)
        data, old = self.model[key]
        self.model[key] = (data, {**old, **_json_copy(metadata)})

    @rule(key=keys)
    def delete(self, key: str) -> None:
        if key in self.model:
            self.store.delete(key)
            del self.model[key]
        else:
            try:
                self.store.delete(key)
            except KeyNotFoundError:
                return
            raise AssertionError(f"delete of missing {key!r} did not raise")

    @rule(key=keys, data=datas, stale=st.booleans())
    def conditional_set(self, key: str, data: bytes, stale: bool) -> None:
        version = self.store.get(key).version if key in self.model else None
        if stale or version is None:
            try:
                self.store.set(key, (data, {}), if_version=(version or "v") + "-stale")
            except ConflictError:
                return
            raise AssertionError("a stale if_version was accepted")
        self.store.set(key, (data, {}), if_version=version)
        self.model[key] = (data, {})

    @rule(key=keys, data=datas, metadata=metadata_dicts, fail=st.booleans())
    def transaction(self, key: str, data: bytes, metadata: dict[str, Any], fail: bool) -> None:
        try:
            with self.store.transaction("state machine"):
                self.store.set(key, (data, metadata))
                self.store.set_data(key + "~", data)
                if fail:
                    raise _AbortTransactionError  # noqa: TRY301 - the abort is the point
        except _AbortTransactionError:
            return
        self.model[key] = (data, _json_copy(metadata))
        self.model[key + "~"] = (data, self.model.get(key + "~", (b"", {}))[1])

    @invariant()
    def store_matches_model(self) -> None:
        assert sorted(self.store.query_keys()) == sorted(self.model)
        for key, (data, metadata) in self.model.items():
            assert self.store.to_bytes(key) == data, key
            assert self.store.get_metadata(key) == metadata, key


class _AbortTransactionError(Exception):
    pass


def _json_copy(metadata: dict[str, Any]) -> dict[str, Any]:
    import json

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
        max_examples=max_examples, stateful_step_count=stateful_step_count, deadline=None
    )
    machine.TestCase().runTest()
