"""Work schedulers: run submitted operations on an executor, at most one at a time.

Each scheduler differs only in which pending submissions it keeps:

- :class:`Asynchronizer` keeps only the latest one;
- :class:`DelayedAsynchronizer` keeps only the latest one and spaces starts out;
- :class:`Serializer` keeps all of them, first in first out;
- :class:`SerializingAsynchronizer` keeps the latest one per operation.

They work with any ``concurrent.futures.Executor``. A failed operation is logged
once, at ERROR, with the worker's traceback; it never stops the scheduler.
"""

from __future__ import annotations

import abc
import functools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as _AnyFuture
from typing import Any, Protocol

from storekeeper.concurrent._future import Future, future_traceback

__all__ = [
    "ABCWorkScheduler",
    "Asynchronizer",
    "DelayedAsynchronizer",
    "Serializer",
    "SerializingAsynchronizer",
    "Timer",
    "TimerFactory",
]

_log = logging.getLogger("storekeeper.concurrent")

Operation = Callable[..., Any]
Callback = Callable[[_AnyFuture[Any]], object]


class _Job:
    """One submission: an operation and its arguments."""

    __slots__ = ("args", "kwargs", "operation")

    def __init__(self, operation: Operation, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.operation = operation
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> Any:
        return self.operation(*self.args, **self.kwargs)


class ABCWorkScheduler(abc.ABC):
    """Runs submitted operations on *executor*, never more than one at a time.

    Subclasses decide which pending submissions are kept (see the module docstring).
    *name* labels log messages (default: the class name). *callback*, if given, is
    called as ``callback(future)`` after every operation ends, with the future the
    executor returned (failed, cancelled or successful); it runs in the thread that
    completed the future and must not call :meth:`wait` or :meth:`shutdown`, which
    would wait for itself.

    Work accepted by :meth:`submit` is never silently dropped by :meth:`shutdown`:
    shutdown refuses new submissions and waits for the accepted ones that the
    subclass keeps. A failing operation or callback (or a submission the executor
    refuses) is logged once at ERROR, with its traceback, and the scheduler carries
    on; a cancelled one is logged at WARNING. An operation may :meth:`submit` to its own scheduler,
    even on an executor that runs calls inline (``SynchronousExecutor``): the
    scheduler then loops rather than recursing.
    """

    def __init__(
        self, executor: Executor, name: str | None = None, callback: Callback | None = None
    ) -> None:
        self._executor = executor
        self.name = name or type(self).__name__
        self._callback = callback
        # Re-entrant: a completion may arrive inline, in a thread already inside.
        self._condition = threading.Condition(threading.RLock())
        self._shutdown = False
        # True from the first submission until nothing is running, pending or timed.
        self._busy = False
        # Hand-off between the thread launching a job and the thread completing it:
        # whichever comes second continues with the next job, so nothing recurses.
        self._launching = False
        self._finished_early = False

    # -- public API ---------------------------------------------------------------

    def submit(self, operation: Operation, /, *args: Any, **kwargs: Any) -> None:
        """Schedule ``operation(*args, **kwargs)``; raise ``RuntimeError`` after shutdown.

        Returns at once unless the executor runs calls inline. Whether and when the
        call runs depends on the subclass.
        """
        with self._condition:
            if self._shutdown:
                raise RuntimeError(f"{self.name}: cannot submit after shutdown")
            self._put(_Job(operation, args, kwargs))
            if self._busy:
                return
            self._busy = True
        self._drive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is running or pending; ``False`` if *timeout* ran out."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._busy, timeout)

    def shutdown(self) -> None:
        """Refuse new submissions, then :meth:`wait` for the accepted ones to finish."""
        with self._condition:
            self._shutdown = True
        self.wait()

    # -- what subclasses define -----------------------------------------------------

    @abc.abstractmethod
    def _put(self, job: _Job) -> None:
        """Record a new submission (called with the lock held)."""

    @abc.abstractmethod
    def _take(self) -> _Job | None:
        """Remove and return the next job to run, or ``None`` (lock held)."""

    def _defer(self) -> bool:
        """Whether to hold back the pending jobs for now (lock held).

        A subclass that returns ``True`` must call :meth:`_drive` later itself.
        """
        return False

    def _started(self) -> None:
        """Called in the worker just before each operation starts."""

    # -- the engine ----------------------------------------------------------------

    def _drive(self) -> None:
        """Launch jobs until one runs asynchronously, none is pending, or they are deferred."""
        while True:
            with self._condition:
                if self._defer():
                    return
                job = self._take()
                if job is None:
                    self._busy = False
                    self._condition.notify_all()
                    return
                self._launching = True
                self._finished_early = False
            future = self._launch(job)
            del job
            future.add_done_callback(self._on_done)
            with self._condition:
                self._launching = False
                if not self._finished_early:
                    return

    def _launch(self, job: _Job) -> _AnyFuture[Any]:
        """Submit *job*; a refused submission becomes a failed future, so it is reported."""
        try:
            return self._executor.submit(self._run, job)
        except Exception as exc:  # noqa: BLE001 - reported through the future like any failure
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    def _run(self, job: _Job) -> Any:
        self._started()
        return job()

    def _on_done(self, future: _AnyFuture[Any]) -> None:
        try:
            self._report(future)
        finally:
            self._hand_off()

    def _hand_off(self) -> None:
        """Continue with the next job, unless the launching thread is still at it."""
        with self._condition:
            if self._launching:
                self._finished_early = True
                return
        self._drive()

    def _report(self, future: _AnyFuture[Any]) -> None:
        """Log a failure once, then call the user's callback (logging its failure)."""
        if future.cancelled():
            _log.warning("%s: operation was cancelled", self.name)
        else:
            trace = future_traceback(future)
            if trace is not None:
                _log.error("%s: operation failed\n%s", self.name, trace.rstrip("\n"))
        if self._callback is None:
            return
        try:
            self._callback(future)
        except Exception:  # noqa: BLE001 - logged with its traceback; the scheduler carries on
            _log.exception("%s: completion callback failed", self.name)


class Asynchronizer(ABCWorkScheduler):
    """Runs the most recent submission, dropping those overtaken while busy.

    While an operation runs, each :meth:`submit` replaces the single pending one;
    when the running operation ends, only the latest submission runs. Suits work
    where only the newest state matters (saving, redrawing, recomputing).
    """

    def __init__(
        self, executor: Executor, name: str | None = None, callback: Callback | None = None
    ) -> None:
        super().__init__(executor, name, callback)
        self._pending: _Job | None = None

    def _put(self, job: _Job) -> None:
        self._pending = job

    def _take(self) -> _Job | None:
        job, self._pending = self._pending, None
        return job


class Timer(Protocol):
    """What :class:`DelayedAsynchronizer` needs of a timer (``threading.Timer`` fits)."""

    def start(self) -> None:
        """Arrange for the action to be called once the delay has passed.

        Must return before the action is called: call it later, from another thread.
        """

    def cancel(self) -> None:
        """Stop the action from being called, if it has not been already."""


# Called as factory(delay_seconds, action); returns a timer not yet started.
TimerFactory = Callable[[float, Callable[[], None]], Timer]


def _daemon_timer(delay: float, action: Callable[[], None]) -> Timer:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    return timer


class DelayedAsynchronizer(Asynchronizer):
    """An :class:`Asynchronizer` whose operations start at least *interval* seconds apart.

    When the next operation would start sooner than *interval* seconds after the
    previous one started, it waits on a timer made by
    ``timer_factory(delay, action)`` (default: a daemon ``threading.Timer``); the
    newest submission made meanwhile is what runs when it fires. :meth:`wait` waits
    for the timer too.

    :meth:`shutdown` cancels a pending timer and runs the pending operation at once,
    without waiting out the interval: the latest submission is never lost, and
    shutdown takes only as long as that operation.
    """

    def __init__(
        self,
        executor: Executor,
        interval: float,
        name: str | None = None,
        callback: Callback | None = None,
        timer_factory: TimerFactory | None = None,
    ) -> None:
        super().__init__(executor, name, callback)
        self.interval = interval
        self._timer_factory = _daemon_timer if timer_factory is None else timer_factory
        self._timer: Timer | None = None
        self._timer_token: object | None = None
        # Monotonic time before which no operation may start.
        self._not_before = -math.inf

    def shutdown(self) -> None:
        """Refuse new submissions, run any delayed one now, then wait for it."""
        with self._condition:
            self._shutdown = True
            flush = self._cancel_timer()
        if flush:
            self._drive()
        self.wait()

    def _cancel_timer(self) -> bool:
        """Cancel the pending timer, if any (lock held); whether there was one."""
        timer, self._timer, self._timer_token = self._timer, None, None
        if timer is None:
            return False
        timer.cancel()
        return True

    def _started(self) -> None:
        with self._condition:
            self._not_before = time.monotonic() + self.interval

    def _defer(self) -> bool:
        if self._timer is not None:
            return True
        if self._pending is None or self._shutdown:
            return False
        delay = self._not_before - time.monotonic()
        if delay <= 0:
            return False
        # A fresh token per timer: a cancelled timer that fires anyway (cancel lost
        # the race) finds a different token and does nothing.
        token = object()
        try:
            timer = self._timer_factory(delay, functools.partial(self._on_timer, token))
            timer.start()
        except Exception:  # noqa: BLE001 - better early than never: run now instead
            _log.exception("%s: could not start the delay timer; running now", self.name)
            return False
        self._timer, self._timer_token = timer, token
        return True

    def _on_timer(self, token: object) -> None:
        with self._condition:
            if token is not self._timer_token:
                return
            self._timer = self._timer_token = None
            # The timer is the authority that the interval is over; a clock read
            # could disagree by a rounding error (or, with a fake timer, by design).
            self._not_before = -math.inf
        self._drive()


class Serializer(ABCWorkScheduler):
    """Runs every submission, one at a time, in the order submitted."""

    def __init__(
        self, executor: Executor, name: str | None = None, callback: Callback | None = None
    ) -> None:
        super().__init__(executor, name, callback)
        self._pending: deque[_Job] = deque()

    def _put(self, job: _Job) -> None:
        self._pending.append(job)

    def _take(self) -> _Job | None:
        return self._pending.popleft() if self._pending else None


class SerializingAsynchronizer(ABCWorkScheduler):
    """Runs the latest submission of each operation, operations in order.

    Pending submissions are keyed by the operation callable: resubmitting an
    operation that is already pending replaces its arguments but keeps its place in
    the queue; different operations run in the order they first became pending.
    """

    def __init__(
        self, executor: Executor, name: str | None = None, callback: Callback | None = None
    ) -> None:
        super().__init__(executor, name, callback)
        self._pending: OrderedDict[Operation, _Job] = OrderedDict()

    def _put(self, job: _Job) -> None:
        self._pending[job.operation] = job

    def _take(self) -> _Job | None:
        if not self._pending:
            return None
        return self._pending.popitem(last=False)[1]
