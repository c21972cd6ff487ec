"""The event system: events, event managers, the default manager, progress events.

Connect a listener to an event class; every emitted instance of that class (or of a
subclass) reaches it, in priority order::

    manager = EventManager()
    manager.connect(StoreSetEvent, lambda event: print(event.key))
"""

from __future__ import annotations

from storekeeper.events._event import BaseEvent
from storekeeper.events._manager import (
    BaseEventManager,
    Delivery,
    EventManager,
    get_event_manager,
    set_event_manager,
)
from storekeeper.events.progress import (
    ProgressEndEvent,
    ProgressEvent,
    ProgressManager,
    ProgressStartEvent,
    ProgressStepEvent,
)

__all__ = [
    "BaseEvent",
    "BaseEventManager",
    "Delivery",
    "EventManager",
    "ProgressEndEvent",
    "ProgressEvent",
    "ProgressManager",
    "ProgressStartEvent",
    "ProgressStepEvent",
    "get_event_manager",
    "set_event_manager",
]
