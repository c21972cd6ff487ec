"""Concurrency helpers: locks, futures with tracebacks, executors and work schedulers.

- :func:`synchronized` / :func:`synchronized_method`: serialise calls with one lock
  per function or one lock per instance.
- :class:`Future`: a ``concurrent.futures.Future`` whose :meth:`Future.traceback`
  returns the worker-side traceback of a failure; :func:`future_traceback` does the
  same for any future.
- :class:`SynchronousExecutor`: runs each call inline, in the submitting thread.
- :class:`EnhancedThreadPoolExecutor`: a thread pool with per-thread
  initializer/uninitializer hooks, named workers, and a choice of whether
  interpreter exit waits for its work.
- Work schedulers that run at most one operation at a time on any executor:
  :class:`Asynchronizer` (latest submission wins), :class:`DelayedAsynchronizer`
  (latest wins, starts spaced out), :class:`Serializer` (every submission, in
  order) and :class:`SerializingAsynchronizer` (latest per operation, in order).
"""

from __future__ import annotations

from storekeeper.concurrent._future import Future, future_traceback
from storekeeper.concurrent._pool import EnhancedThreadPoolExecutor
from storekeeper.concurrent._synchronized import synchronized, synchronized_method
from storekeeper.concurrent._synchronous import SynchronousExecutor
from storekeeper.concurrent.schedulers import (
    ABCWorkScheduler,
    Asynchronizer,
    DelayedAsynchronizer,
    Serializer,
    SerializingAsynchronizer,
    Timer,
    TimerFactory,
)

__all__ = [
    "ABCWorkScheduler",
    "Asynchronizer",
    "DelayedAsynchronizer",
    "EnhancedThreadPoolExecutor",
    "Future",
    "Serializer",
    "SerializingAsynchronizer",
    "SynchronousExecutor",
    "Timer",
    "TimerFactory",
    "future_traceback",
    "synchronized",
    "synchronized_method",
]
