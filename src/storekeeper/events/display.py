"""A terminal display of progress events.

``ProgressDisplay`` listens for :class:`ProgressStartEvent`, :class:`ProgressStepEvent`
and :class:`ProgressEndEvent` on an event manager and draws every running operation:
a bar with the amount done and the total, the rate and the time left when the total is
known; the amount so far, the rate and the time elapsed otherwise. Byte counts (store
progress events, ``unit='bytes'``) show as sizes. An ended operation leaves one line:
``Copying: done, 3.0 MiB in 0:00:02 (1.5 MiB/s)`` or ``Copying: failed (disk gone)``.
Several operations may run at once. On a terminal it uses ``rich`` when installed (the
``[cli]`` extra) and redraws in place otherwise; when the output is not a terminal it
writes plain lines (start, at most one step line per ``interval`` seconds, end).
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

from storekeeper.events._manager import BaseEventManager, get_event_manager
from storekeeper.events._progress_text import Operation
from storekeeper.events.progress import ProgressEndEvent, ProgressStartEvent, ProgressStepEvent

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """Draws progress operations emitted on *event_manager* to *stream*.

    Use as a context manager (connects on enter, disconnects on exit) or call
    :meth:`connect` / :meth:`disconnect`. ``use_rich`` forces (``True``) or forbids
    (``False``) rich; by default rich is used when importable and *stream* is a TTY.
    On a terminal, steps redraw at most once per ``redraw_interval`` seconds (a start
    or an end redraws at once), so many small steps cost no more than a few.
    """

    def __init__(
        self,
        event_manager: BaseEventManager | None = None,
        stream: TextIO | None = None,
        *,
        use_rich: bool | None = None,
        interval: float = 1.0,
        redraw_interval: float = 0.1,
    ) -> None:
        self.event_manager = event_manager if event_manager is not None else get_event_manager()
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.redraw_interval = redraw_interval
        self._last_draw = float("-inf")
        self._lock = threading.Lock()
        self._operations: dict[Any, Operation] = {}
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._rich = self._make_rich(use_rich)
        self._rich_tasks: dict[Any, Any] = {}
        self._drawn_lines = 0
        self._connected = False

    def _make_rich(self, use_rich: bool | None) -> Any:
        if use_rich is False or (use_rich is None and not self._tty):
            return None
        try:
            from storekeeper.events._rich_display import make_progress
        except ImportError:
            if use_rich:
                raise
            return None
        return make_progress(self.stream, True if use_rich else None)

    # -- wiring -------------------------------------------------------------------------
    def connect(self) -> None:
        """Start listening for progress events (again, if it was disconnected)."""
        if self._connected:
            return
        self._connected = True
        self.event_manager.connect(ProgressStartEvent, self._on_start)
        self.event_manager.connect(ProgressStepEvent, self._on_step)
        self.event_manager.connect(ProgressEndEvent, self._on_end)
        if self._rich is not None:
            self._rich.start()

    def disconnect(self) -> None:
        """Stop listening; a rich display is finished. Does nothing if not connected."""
        if not self._connected:
            return
        self._connected = False
        self.event_manager.disconnect(ProgressStartEvent, self._on_start)
        self.event_manager.disconnect(ProgressStepEvent, self._on_step)
        self.event_manager.disconnect(ProgressEndEvent, self._on_end)
        if self._rich is not None:
            self._rich.stop()

    def __enter__(self) -> ProgressDisplay:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    # -- events -------------------------------------------------------------------------
    def _on_start(self, event: ProgressStartEvent) -> None:
        unit = event.unit if isinstance(event.unit, str) else ""
        operation = Operation(event.message, event.steps, unit)
        with self._lock:
            self._operations[event.operation_id] = operation
            if self._rich is not None:
                self._rich_tasks[event.operation_id] = self._rich.add_task(
                    event.message, total=operation.total, unit=unit
                )
                self._rich.refresh()
            elif not self._tty:
                self._line(f"{event.message}: started")
            else:
                self._redraw()

    def _on_step(self, event: ProgressStepEvent) -> None:
        with self._lock:
            operation = self._operations.get(event.operation_id)
            if operation is None:
                return
            operation.step = event.step if event.step >= 0 else operation.step + 1
            if self._rich is not None:
                self._rich.update(self._rich_tasks[event.operation_id], completed=operation.step)
                if self._due():
                    self._rich.refresh()
            elif not self._tty:
                now = time.monotonic()
                if now - operation.last_line >= self.interval:
                    operation.last_line = now
                    self._line(operation.describe())
            elif self._due():
                self._redraw()

    def _due(self) -> bool:
        """Whether a step may redraw now (the last redraw is old enough); if so, it is
        counted as done."""
        now = time.monotonic()
        if now - self._last_draw < self.redraw_interval:
            return False
        self._last_draw = now
        return True

    def _on_end(self, event: ProgressEndEvent) -> None:
        with self._lock:
            operation = self._operations.pop(event.operation_id, None)
            if operation is None:
                return
            rich = self._rich is not None
            summary = operation.summary(event.exit_state, event.message, figures=not rich)
            if self._rich is not None:
                task = self._rich_tasks.pop(event.operation_id)
                finished = event.exit_state == "normal" and operation.total is None
                # A finished operation of unknown size shows a full bar, not an empty one.
                total = operation.step if finished else operation.total
                self._rich.update(task, description=summary, total=total)
                self._rich.stop_task(task)
                self._rich.refresh()
            elif not self._tty:
                self._line(summary)
            else:
                self._redraw(finished=summary)

    # -- plain rendering ----------------------------------------------------------------
    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _redraw(self, finished: str | None = None) -> None:
        # Move up over what we drew last time, then draw the running operations again.
        out = ["\x1b[F\x1b[K" * self._drawn_lines]
        if finished is not None:
            out.append(finished + "\n")
        lines = [operation.describe() for operation in self._operations.values()]
        out.extend(line + "\n" for line in lines)
        self._drawn_lines = len(lines)
        self.stream.write("".join(out))
        self.stream.flush()
