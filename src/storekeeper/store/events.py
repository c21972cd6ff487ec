"""Events emitted by key-value stores.

Class tree (listen on a superclass to hear all of its subclasses)::

    BaseEvent
    └── StoreEvent                       source: the store
        ├── StoreTransactionEvent        notes: the transaction's notes
        │   ├── StoreTransactionStartEvent
        │   └── StoreTransactionEndEvent state: 'done' or 'failed'
        └── StoreKeyEvent                key, metadata
            ├── StoreModificationEvent   action
            │   ├── StoreSetEvent        action='set'    (set, set_data, set_metadata)
            │   ├── StoreUpdateEvent     action='update' (update_metadata)
            │   └── StoreDeleteEvent     action='delete' (metadata: what it had)
            └── StoreProgressEvent       (also a ProgressEvent)
                ├── StoreProgressStartEvent
                ├── StoreProgressStepEvent
                └── StoreProgressEndEvent

Modification events are emitted after the change is committed, on the store's own
``event_manager``; inside a transaction they are held back until the outermost
transaction commits, and dropped if it rolls back.
"""

from __future__ import annotations

from typing import Any

from storekeeper.events import BaseEvent
from storekeeper.events.progress import (
    ProgressEndEvent,
    ProgressEvent,
    ProgressStartEvent,
    ProgressStepEvent,
)

__all__ = [
    "StoreDeleteEvent",
    "StoreEvent",
    "StoreKeyEvent",
    "StoreModificationEvent",
    "StoreProgressEndEvent",
    "StoreProgressEvent",
    "StoreProgressStartEvent",
    "StoreProgressStepEvent",
    "StoreSetEvent",
    "StoreTransactionEndEvent",
    "StoreTransactionEvent",
    "StoreTransactionStartEvent",
    "StoreUpdateEvent",
]


class StoreEvent(BaseEvent):
    """Base of every event a store emits; ``source`` is the store."""


class StoreTransactionEvent(StoreEvent):
    """Base of transaction start/end events; ``notes`` holds the transaction's notes."""


class StoreTransactionStartEvent(StoreTransactionEvent):
    """Emitted when the outermost transaction of a context begins."""


class StoreTransactionEndEvent(StoreTransactionEvent):
    """Emitted when the outermost transaction ends; ``state`` is ``'done'`` or ``'failed'``.

    It comes before the transaction's held-back modification events.
    """


class StoreKeyEvent(StoreEvent):
    """An event about one key: ``key`` and (when known) its ``metadata``."""

    key: str
    metadata: dict[str, Any] | None = None


class StoreModificationEvent(StoreKeyEvent):
    """A committed change of a key; ``action`` is ``'set'``, ``'update'`` or ``'delete'``."""

    action: str


class StoreSetEvent(StoreModificationEvent):
    """A key was written by ``set``, ``set_data``, ``set_metadata`` or a ``multiset*``
    call, whether it existed before or not; ``metadata`` is what it now holds.

    A composite store also emits it when a key it shows takes another value without a
    write through it (a child changed, or a deletion uncovered a lower layer's entry).
    """

    action = "set"


class StoreUpdateEvent(StoreModificationEvent):
    """An existing key's metadata was merged by ``update_metadata`` (or
    ``multiupdate_metadata``); its data did not change. ``metadata`` is what it now
    holds."""

    action = "update"


class StoreDeleteEvent(StoreModificationEvent):
    """A key was deleted; ``metadata`` is what it held before."""

    action = "delete"


class StoreProgressEvent(ProgressEvent, StoreKeyEvent):
    """Progress of a long store operation on ``key`` (see :class:`ProgressEvent`).

    Steps count bytes (``unit`` is ``'bytes'``). ``metadata`` is the key's metadata when
    the operation knows it (reads, and writes that set the metadata), else ``None``.
    """

    unit = "bytes"


class StoreProgressStartEvent(ProgressStartEvent, StoreProgressEvent):
    """A long store operation starts; ``steps`` is the byte count or -1 when unknown."""


class StoreProgressStepEvent(ProgressStepEvent, StoreProgressEvent):
    """A long store operation advanced; ``step`` is the number of bytes done so far."""


class StoreProgressEndEvent(ProgressEndEvent, StoreProgressEvent):
    """A long store operation ended; ``exit_state`` tells how."""
