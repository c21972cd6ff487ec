"""Progress events and :class:`ProgressManager`, which emits them around an operation."""

from __future__ import annotations

import itertools
import os
from types import TracebackType
from typing import Any

from storekeeper.events._event import BaseEvent
from storekeeper.events._manager import BaseEventManager, get_event_manager

__all__ = [
    "ProgressEndEvent",
    "ProgressEvent",
    "ProgressManager",
    "ProgressStartEvent",
    "ProgressStepEvent",
]

EXIT_STATES = ("normal", "warning", "error", "exception")
_ids = itertools.count(1)


class ProgressEvent(BaseEvent):
    """Base of progress events: ``operation_id`` and a human-readable ``message``.

    ``unit`` says what a step counts, for displays: ``""`` (the default) for plain
    counts, ``"bytes"`` for byte counts (store progress events).
    """

    operation_id: Any = None
    message: str = ""
    unit: str = ""


class ProgressStartEvent(ProgressEvent):
    """An operation starts; ``steps`` is the number of steps, -1 if unknown."""

    steps: int = -1


class ProgressStepEvent(ProgressEvent):
    """An operation advanced; ``step`` is the step count so far, -1 if unknown."""

    step: int = -1


class ProgressEndEvent(ProgressEvent):
    """An operation ended; ``exit_state`` is normal, warning, error or exception."""

    exit_state: str = "normal"


class ProgressManager:
    """Emits start, step and end events for one operation.

    As a context manager it emits the start event on entry and the end event on exit
    (``exit_state='exception'`` with the exception's message if the block raised).
    Calling it (``progress(step=n)``) emits a step. Subclasses change the event classes
    through ``StartEventType``, ``StepEventType`` and ``EndEventType``. The default
    ``operation_id`` is unique in the process.
    """

    StartEventType: type[ProgressStartEvent] = ProgressStartEvent
    StepEventType: type[ProgressStepEvent] = ProgressStepEvent
    EndEventType: type[ProgressEndEvent] = ProgressEndEvent

    def __init__(
        self,
        event_manager: BaseEventManager | None = None,
        source: Any = None,
        operation_id: Any = None,
        message: str = "Performing operation",
        steps: int = -1,
        **kwargs: Any,
    ) -> None:
        self.event_manager = event_manager if event_manager is not None else get_event_manager()
        self.source = source
        self.operation_id = (
            operation_id if operation_id is not None else f"{os.getpid()}-{next(_ids)}"
        )
        self.message = message
        self.steps = steps
        self.extra = kwargs
        self.step_count = 0
        self._ended = False

    def _emit(self, cls: type[ProgressEvent], **attributes: Any) -> None:
        self.event_manager.emit(
            cls(self.source, operation_id=self.operation_id, **{**self.extra, **attributes})
        )

    def start(self, **extra_kwargs: Any) -> None:
        """Emit the start event."""
        self._emit(self.StartEventType, message=self.message, steps=self.steps, **extra_kwargs)

    def step(
        self, message: str | None = None, step: int | None = None, **extra_kwargs: Any
    ) -> None:
        """Emit a step event; *step* defaults to an internal counter."""
        self.step_count = self.step_count + 1 if step is None else step
        self._emit(
            self.StepEventType,
            message=self.message if message is None else message,
            step=self.step_count,
            **extra_kwargs,
        )

    __call__ = step

    def end(
        self, message: str | None = None, exit_state: str = "normal", **extra_kwargs: Any
    ) -> None:
        """Emit the end event (once; later calls do nothing)."""
        if exit_state not in EXIT_STATES:
            raise ValueError(f"exit_state must be one of {EXIT_STATES}, not {exit_state!r}")
        if self._ended:
            return
        self._ended = True
        self._emit(
            self.EndEventType,
            message=self.message if message is None else message,
            exit_state=exit_state,
            **extra_kwargs,
        )

    def __enter__(self) -> ProgressManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.end()
        else:
            self.end(
                message=str(exc) or exc_type.__name__ if exc_type else "", exit_state="exception"
            )
