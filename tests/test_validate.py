"""Metadata encoding: the fast path writes exactly what json writes, and refuses the same."""

from __future__ import annotations

import gc
import json
import json.encoder
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storekeeper.errors import InvalidMetadataError
from storekeeper.store import _validate
from storekeeper.store._validate import MAX_METADATA_DEPTH, decode_metadata, encode_metadata

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
)
metadata = st.dictionaries(st.text(), values, max_size=6)


@given(metadata)
def test_encoding_matches_json_and_round_trips(document: dict[str, Any]) -> None:
    text = encode_metadata(document)
    assert text == json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert decode_metadata(text) == json.loads(text)


@pytest.mark.parametrize(
    "bad",
    [{2: "x"}, {"a": float("nan")}, {"a": {"b": float("-inf")}}, {"a": b"x"}, {"a": object()}],
)
def test_refused_like_json_refuses(bad: dict[Any, Any]) -> None:
    with pytest.raises(InvalidMetadataError):
        encode_metadata(bad)
    with pytest.raises(InvalidMetadataError):
        encode_metadata(OrderedDict(bad))  # the general path, for other mappings


def test_circular_metadata_is_refused_not_a_crash() -> None:
    loop: dict[str, Any] = {}
    loop["again"] = {"deeper": loop}
    with pytest.raises(InvalidMetadataError, match="circular"):
        encode_metadata(loop)


def _recurse(depth: int) -> int:
    return 0 if depth == 0 else 1 + _recurse(depth - 1)


def test_refusing_deep_metadata_leaves_finalizers_the_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A garbage collection may start at any allocation and runs every pending finalizer
    (anyone's objects) where it starts. json's encoder recurses once per level up to the
    recursion limit, so refusing absurdly deep or circular metadata that way left the
    finalizers no stack: each failed with RecursionError, reported as unraisable (a
    flaky failure of the conformance suite's ``deep`` case, under load). With a
    collection at every allocation, each one must find room to run Python code."""
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = {"d": [deep]}
    loop: list[Any] = []
    loop.append({"again": loop})
    starved: list[dict[str, Any]] = []

    def probe(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            try:
                _recurse(100)
            except RecursionError:
                starved.append(info)

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    threshold = gc.get_threshold()
    gc.collect()
    gc.callbacks.append(probe)
    gc.set_threshold(1)
    try:
        for document in ({"a": deep}, {"a": loop}, OrderedDict(a=deep)):
            with pytest.raises(InvalidMetadataError, match="too deeply"):
                encode_metadata(document)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(probe)
    assert not unraisable
    assert not starved, f"{len(starved)} collections started with no stack left"


def test_metadata_depth_limit_is_exact_and_the_same_on_both_paths() -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: Any = "leaf"
        for level in range(levels - 1):
            value = [value] if level % 2 else {"d": value}
        return {"a": value}

    for document in (nested(MAX_METADATA_DEPTH), {"a": [[1], {"b": ([2],)}]}):
        text = encode_metadata(document)
        assert decode_metadata(text) == json.loads(text)
        assert encode_metadata(OrderedDict(document)) == text
    for document in (nested(MAX_METADATA_DEPTH + 1), {"a": [{"b": nested(MAX_METADATA_DEPTH)}]}):
        with pytest.raises(InvalidMetadataError, match="too deeply"):
            encode_metadata(document)
        with pytest.raises(InvalidMetadataError, match="too deeply"):
            encode_metadata(OrderedDict(document))


# -- the prebuilt C encoder is an optimisation over a private json API ---------------------------
_REAL_MAKE = json.encoder.c_make_encoder  # type: ignore[attr-defined]


def _signature_changed(*args: Any) -> Any:
    raise TypeError("c_make_encoder() takes exactly 10 arguments (9 given)")


def _separators_moved(*args: Any) -> Any:
    return _REAL_MAKE(*args[:4], ", ", ": ", *args[6:])


def _allows_nan(*args: Any) -> Any:
    return _REAL_MAKE(*args[:-1], True)


def _returns_bytes(*args: Any) -> Any:
    return lambda value, level: (b"{}",)


@pytest.mark.parametrize(
    "make", [None, _signature_changed, _separators_moved, _allows_nan, _returns_bytes]
)
def test_a_missing_or_changed_c_encoder_is_not_used(make: Callable[..., Any] | None) -> None:
    assert _validate._build_c_encoder(make) is None
    assert _validate._build_c_encoder(_REAL_MAKE) is not None  # this Python's, as it is


@given(metadata)
def test_without_the_c_encoder_the_text_and_refusals_are_the_same(document: dict[str, Any]) -> None:
    fast = encode_metadata(document)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_validate, "_C_ENCODE", None)
        assert encode_metadata(document) == fast
        for bad in ({2: "x"}, {"a": float("nan")}, {"a": {"b": float("inf")}}, {"a": b"x"}):
            with pytest.raises(InvalidMetadataError):
                encode_metadata(bad)
        loop: dict[str, Any] = {}
        loop["again"] = [loop]
        with pytest.raises(InvalidMetadataError, match=r"(?i)circular"):
            encode_metadata(loop)


def test_storekeeper_imports_and_encodes_when_the_private_encoder_changed() -> None:
    code = (
        "import json.encoder\n"
        "def changed(*args):\n"
        "    raise TypeError('c_make_encoder() takes a different signature now')\n"
        "real, json.encoder.c_make_encoder = json.encoder.c_make_encoder, changed\n"
        "from storekeeper.store import _validate\n"
        "json.encoder.c_make_encoder = real  # json's own calls match its own signature\n"
        "assert _validate._C_ENCODE is None\n"
        "print(_validate.encode_metadata({'a': [1, 'é'], 'b': {'c': None}}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == '{"a":[1,"é"],"b":{"c":null}}'
