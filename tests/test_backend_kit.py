"""The backend kit's error messages stay short whatever the key's length."""

from __future__ import annotations

from pathlib import Path

import pytest

from storekeeper import DictMemoryStore, SqliteStore
from storekeeper.errors import ConflictError, KeyNotFoundError
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import SHOWN_KEY_LENGTH, check_precondition, missing, shown_key

HUGE = "k" * 100_000 + "tail"


def test_short_keys_are_shown_whole() -> None:
    assert shown_key("a/b\n") == repr("a/b\n")
    assert shown_key("x" * SHOWN_KEY_LENGTH) == repr("x" * SHOWN_KEY_LENGTH)


def test_a_huge_key_is_cut_and_its_length_given() -> None:
    shown = shown_key(HUGE)
    assert len(shown) < SHOWN_KEY_LENGTH + 40
    assert shown.startswith(repr("k" * SHOWN_KEY_LENGTH)) and "100,004 characters" in shown


@pytest.mark.parametrize(
    ("current", "if_version", "if_exists"),
    [(None, None, True), ("v1", None, False), ("v1", "v2", None), (None, "v2", None)],
)
def test_conflicts_name_a_huge_key_briefly(
    current: str | None, if_version: str | None, if_exists: bool | None
) -> None:
    with pytest.raises(ConflictError) as caught:
        check_precondition(HUGE, current, if_version, if_exists)
    assert len(str(caught.value)) < 400 and "100,004 characters" in str(caught.value)


def test_missing_key_error_is_brief() -> None:
    assert len(str(missing(HUGE))) < 400


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AbstractStore:
    made: AbstractStore = (
        DictMemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    )
    made.connect()
    return made


def test_stores_report_huge_keys_briefly(store: AbstractStore) -> None:
    store.set(HUGE, (b"data", {}))
    with pytest.raises(ConflictError) as conflict:
        store.set(HUGE, (b"new", {}), if_exists=False)
    assert len(str(conflict.value)) < 400
    store.delete(HUGE)
    with pytest.raises(KeyNotFoundError) as gone:
        store.get(HUGE)
    assert len(str(gone.value)) < 400
