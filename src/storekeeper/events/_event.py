"""``BaseEvent``: the base class of every event."""

from __future__ import annotations

from typing import Any

__all__ = ["BaseEvent"]


class BaseEvent:
    """An event: ``source`` (what emitted it) plus any keyword attributes.

    ``BaseEvent(source, key="a")`` has ``event.source`` and ``event.key``. A listener
    that calls :meth:`mark_as_handled` stops delivery to lower-priority listeners.
    :meth:`pre_emit` and :meth:`post_emit` run around each dispatch; override them for
    validation or bookkeeping.
    """

    def __init__(self, source: Any = None, **attributes: Any) -> None:
        self.source = source
        self._handled = False
        self.__dict__.update(attributes)

    def mark_as_handled(self) -> None:
        """Stop delivery of this event to listeners of lower priority."""
        self._handled = True

    @property
    def is_handled(self) -> bool:
        """Whether a listener marked the event as handled."""
        return self._handled

    def pre_emit(self) -> None:
        """Hook run before the first listener is called (default: nothing)."""

    def post_emit(self) -> None:
        """Hook run after the last listener was called (default: nothing)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
