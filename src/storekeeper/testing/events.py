"""Conformance tests of the events every store emits: which class, and what they carry.

:class:`EventConformance` is a mixin of :class:`storekeeper.testing.store.StoreTests`
(it uses that class's ``store`` and ``event_manager`` fixtures), so every backend and
composite runs it:

- every ``set``, ``set_data``, ``set_metadata`` and ``multiset*`` call emits one
  :class:`StoreSetEvent` per key, whether the key existed or not;
  ``update_metadata`` and ``multiupdate_metadata`` emit :class:`StoreUpdateEvent`;
- ``to_bytes`` of a value larger than one buffer emits progress events as ``to_file``
  does, and not for a value that fits in one;
- progress events carry the key's metadata where the operation knows it, and the size
  of a stream whose size can be told (a regular file) as their ``steps``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from storekeeper.events import BaseEvent, EventManager
from storekeeper.store import (
    AbstractStore,
    StoreEvent,
    StoreModificationEvent,
    StoreProgressEndEvent,
    StoreProgressEvent,
    StoreProgressStartEvent,
    StoreProgressStepEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)

__all__ = ["EventConformance"]


def _record(manager: EventManager) -> list[BaseEvent]:
    seen: list[BaseEvent] = []
    manager.connect(StoreEvent, seen.append)
    return seen


def _changes(seen: list[BaseEvent]) -> list[tuple[str, str, Any]]:
    """``(class name, key, metadata)`` of the modification events in *seen*."""
    return [
        (type(e).__name__, e.key, e.metadata) for e in seen if isinstance(e, StoreModificationEvent)
    ]


def _of(seen: list[BaseEvent], cls: type[BaseEvent]) -> list[Any]:
    return [event for event in seen if isinstance(event, cls)]


class EventConformance:
    """Event promises every store keeps (a mixin of ``StoreTests``)."""

    def test_every_kind_of_set_emits_a_set_event_new_key_or_not(
        self, store: AbstractStore, event_manager: EventManager
    ) -> None:
        seen = _record(event_manager)
        store.set("a", (b"1", {"n": 1}))  # new
        store.set("a", (b"2", {"n": 2}))  # existing
        store.set_data("b", b"3")  # new
        store.set_data("a", b"4")  # existing: keeps its metadata
        store.set_metadata("c", {"m": 1})  # new
        store.set_metadata("a", {"n": 3})  # existing
        assert _changes(seen) == [
            ("StoreSetEvent", "a", {"n": 1}),
            ("StoreSetEvent", "a", {"n": 2}),
            ("StoreSetEvent", "b", {}),
            ("StoreSetEvent", "a", {"n": 2}),
            ("StoreSetEvent", "c", {"m": 1}),
            ("StoreSetEvent", "a", {"n": 3}),
        ]
        assert all(event.source is store for event in _of(seen, StoreModificationEvent))

    def test_multisets_emit_a_set_event_per_key_and_updates_an_update_event(
        self, store: AbstractStore, event_manager: EventManager
    ) -> None:
        store.set("old", (b"", {"o": 1}))
        seen = _record(event_manager)
        store.multiset(["old", "new"], [(b"1", {"v": 1}), (b"2", {"v": 2})])
        store.multiset_data(["old", "other"], [b"3", b"4"])
        store.multiset_metadata(["new", "third"], [{"w": 1}, {"w": 2}])
        assert sorted(_changes(seen), key=repr) == sorted(
            [
                ("StoreSetEvent", "old", {"v": 1}),
                ("StoreSetEvent", "new", {"v": 2}),
                ("StoreSetEvent", "old", {"v": 1}),
                ("StoreSetEvent", "other", {}),
                ("StoreSetEvent", "new", {"w": 1}),
                ("StoreSetEvent", "third", {"w": 2}),
            ],
            key=repr,
        )
        seen.clear()
        store.update_metadata("old", {"u": 1})
        store.multiupdate_metadata(["new", "third"], [{"u": 2}, {"u": 3}])
        assert sorted(_changes(seen), key=repr) == sorted(
            [
                ("StoreUpdateEvent", "old", {"v": 1, "u": 1}),
                ("StoreUpdateEvent", "new", {"w": 1, "u": 2}),
                ("StoreUpdateEvent", "third", {"w": 2, "u": 3}),
            ],
            key=repr,
        )
        assert not _of(seen, StoreSetEvent)
        assert len(_of(seen, StoreUpdateEvent)) == 3

    def test_to_bytes_of_a_large_value_reports_progress_with_the_metadata(
        self, store: AbstractStore, event_manager: EventManager
    ) -> None:
        store.set("k", (b"x" * 100, {"kind": "blob"}))
        seen = _record(event_manager)
        assert store.to_bytes("k", buffer_size=40) == b"x" * 100
        starts = _of(seen, StoreProgressStartEvent)
        assert len(starts) == 1 and len(_of(seen, StoreProgressEndEvent)) == 1
        assert starts[0].steps == 100 and starts[0].key == "k" and starts[0].source is store
        assert [e.step for e in _of(seen, StoreProgressStepEvent)] == [40, 80, 100]
        assert _of(seen, StoreProgressEndEvent)[0].exit_state == "normal"
        progress = _of(seen, StoreProgressEvent)
        assert all(event.metadata == {"kind": "blob"} for event in progress)
        seen.clear()
        assert store.to_bytes("k", buffer_size=100) == b"x" * 100  # one buffer: no progress
        assert _of(seen, StoreProgressEvent) == []

    def test_to_file_progress_carries_the_metadata(
        self, store: AbstractStore, event_manager: EventManager, tmp_path: Path
    ) -> None:
        store.set("k", (b"y" * 50, {"kind": "file"}))
        seen = _record(event_manager)
        store.to_file("k", tmp_path / "out", buffer_size=20)
        progress = _of(seen, StoreProgressEvent)
        assert progress and all(event.metadata == {"kind": "file"} for event in progress)

    def test_streamed_set_progress_carries_the_written_metadata(
        self, store: AbstractStore, event_manager: EventManager
    ) -> None:
        seen = _record(event_manager)
        store.set("k", (io.BytesIO(b"z" * 90), {"kind": "stream"}), buffer_size=30)
        progress = _of(seen, StoreProgressEvent)
        assert progress and all(event.metadata == {"kind": "stream"} for event in progress)
        assert _of(seen, StoreProgressStartEvent)[0].steps == 90  # a BytesIO's size is known

    def test_from_file_progress_knows_the_file_size(
        self, store: AbstractStore, event_manager: EventManager, tmp_path: Path
    ) -> None:
        path = tmp_path / "source.bin"
        path.write_bytes(b"f" * 120)
        seen = _record(event_manager)
        store.from_file("k", path, buffer_size=50)
        starts = _of(seen, StoreProgressStartEvent)
        assert [event.steps for event in starts] == [120]
        assert [e.step for e in _of(seen, StoreProgressStepEvent)][-1] == 120
        assert store.to_bytes("k") == b"f" * 120
