"""Metadata encoding: the fast path writes exactly what json writes, and refuses the same."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storekeeper.errors import InvalidMetadataError
from storekeeper.store._validate import decode_metadata, encode_metadata

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
