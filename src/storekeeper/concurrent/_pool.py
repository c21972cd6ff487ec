"""A thread pool with per-thread set-up and tear-down hooks and clean interpreter exit."""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar

from storekeeper.concurrent._future import Future

__all__ = ["EnhancedThreadPoolExecutor"]

_log = logging.getLogger("storekeeper.concurrent")

_P = ParamSpec("_P")
_T = TypeVar("_T")

Hook = Callable[[], object]

# Executors whose workers must be joined at interpreter exit. Weak, so registering
# never keeps an abandoned executor alive.
_waited_at_exit: weakref.WeakSet[EnhancedThreadPoolExecutor] = weakref.WeakSet()


class _WorkItem:
    """One submitted call and the future that receives its outcome."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self, mark_idle: Callable[[], object]) -> None:
        """Run the call and complete the future, calling *mark_idle* just before.

        Marking the worker idle before the future completes means a caller that
        submits again as soon as ``result()`` returns finds this worker available
        instead of starting another thread.
        """
        future = self.future
        if not future.set_running_or_notify_cancel():
            mark_idle()
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - the future carries it to the caller
            mark_idle()
            future.set_exception(exc)
            # The traceback keeps this frame alive; drop the frame's references so
            # item -> future -> exception -> frame -> item/future is not a cycle.
            self = future = None  # type: ignore[assignment]  # noqa: PLW0642
        else:
            mark_idle()
            future.set_result(result)


class _IdleWorkers:
    """How many workers are waiting for an item, while the pool may still grow.

    Once every thread has been started the count no longer decides anything, so
    both sides stop paying for the semaphore: one flag read per item instead.
    """

    __slots__ = ("_count", "all_started")

    def __init__(self) -> None:
        self._count = threading.Semaphore(0)
        self.all_started = False

    def mark(self) -> None:
        """Called by a worker about to wait for its next item."""
        if not self.all_started:
            self._count.release()

    def take(self) -> bool:
        """Claim a waiting worker for a new item; ``False`` if none is waiting."""
        return self._count.acquire(blocking=False)


# Put in the queue to tell workers to exit; each worker passes it on to the next.
_STOP = None
_Queue = queue.SimpleQueue[_WorkItem | None]


def _call_hook(hook: Hook | None, what: str) -> None:
    """Call a per-thread hook; a failure is logged and the worker carries on."""
    if hook is None:
        return
    try:
        hook()
    except BaseException:  # noqa: BLE001 - logged with its traceback; a hook must not kill a worker
        _log.exception("%s %s failed; the worker carries on", threading.current_thread().name, what)


def _work(
    work_queue: _Queue,
    idle: _IdleWorkers,
    initializer: Hook | None,
    uninitializer: Hook | None,
    keepalive: object,
) -> None:
    """The body of a worker thread: run items until told to stop.

    *keepalive* is the executor's weak reference whose callback stops the workers
    when the executor is garbage collected; holding it here keeps the callback armed.
    """
    _call_hook(initializer, "initializer")
    try:
        get = work_queue.get
        mark_idle = idle.mark
        while (item := get()) is not _STOP:
            item.run(mark_idle)
            # Drop the item before blocking so its arguments and result can be freed.
            del item
        work_queue.put(_STOP)
    finally:
        _call_hook(uninitializer, "uninitializer")


def _stop_workers(work_queue: _Queue, _ref: object) -> None:
    work_queue.put(_STOP)


class EnhancedThreadPoolExecutor(Executor):
    """A thread pool ``Executor`` with per-thread hooks and control over interpreter exit.

    - At most *max_workers* threads (default ``min(32, cpu_count + 4)``), started on
      demand; an idle worker is always reused before a new thread is started.
    - *initializer()* runs once in each worker thread before its first item and
      *uninitializer()* once when it exits. An exception in either is logged (with
      its traceback) and the worker keeps working: one faulty hook never breaks the
      pool.
    - :attr:`name` is *name* or, by default, the class name; worker threads are named
      ``f"{self.name}Worker-{n}"``, *n* counting from 1 within this executor.
    - *wait_at_exit*: if true, pending and running work is finished and the workers
      are joined when the interpreter exits (from an ``atexit`` hook); if false, the
      workers are daemon threads that are abandoned at exit.
    - A call that raises anything, ``SystemExit`` included, completes its future with
      that exception, as in the standard pool; ``KeyboardInterrupt`` never reaches
      worker threads.
    - Futures are instances of the class attribute :attr:`_future_factory` (this
      package's :class:`Future`, which keeps tracebacks); a subclass may set it to
      its own ``Future`` subclass.

    A context manager: leaving the block calls ``shutdown(wait=True)``.
    """

    _future_factory: type[Future[Any]] = Future

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Hook | None = None,
        uninitializer: Hook | None = None,
        name: str | None = None,
        wait_at_exit: bool = True,
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers
        self._initializer = initializer
        self._uninitializer = uninitializer
        self.name = name or type(self).__name__
        self._thread_prefix = f"{self.name}Worker-"
        self._queue: _Queue = queue.SimpleQueue()
        self._idle = _IdleWorkers()
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._shutdown = False
        self._wakeup = weakref.ref(self, functools.partial(_stop_workers, self._queue))
        if wait_at_exit:
            _waited_at_exit.add(self)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; return the future of its outcome.

        Raises ``RuntimeError`` after :meth:`shutdown`.
        """
        future: Future[_T] = self._future_factory()
        item = _WorkItem(future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put(item)
            idle = self._idle
            if not idle.all_started and not idle.take():
                self._start_worker()
        return future

    def _start_worker(self) -> None:
        """Start one more worker thread (called with the lock held, below the limit)."""
        thread = threading.Thread(
            target=_work,
            name=f"{self._thread_prefix}{next(self._numbers)}",
            args=(self._queue, self._idle, self._initializer, self._uninitializer, self._wakeup),
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        self._idle.all_started = len(self._threads) >= self._max_workers

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[_T]:
        """Like the builtin ``map``, with the calls run in the pool.

        Every call is submitted before this returns and, as with the standard
        library's executors, runs even if the iterator is never used: dropping it
        unread cancels nothing. The iterator yields results in order and raises
        ``TimeoutError`` once *timeout* seconds, measured from this call, have passed.
        Once it has been read from, dropping it, closing it or an exception from a call
        cancels the calls not yet started; :meth:`close <_Results.close>` cancels them
        at any time. *chunksize* is accepted for compatibility and must be at least 1;
        threads need no batching.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures: list[Future[_T]] = []
        try:
            futures.extend(self.submit(fn, *args) for args in zip(*iterables, strict=False))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return _Results(futures, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work, let the workers exit, and (if *wait*) join them.

        Work already submitted still runs unless *cancel_futures* is true, in which
        case the items not yet started are cancelled. Safe to call more than once and
        from a worker thread (which is not joined to itself).
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                self._cancel_pending()
            self._queue.put(_STOP)
            threads = list(self._threads)
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()

    def _cancel_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.future.cancel()


class _Results(Iterator[_T]):
    """The results of :meth:`EnhancedThreadPoolExecutor.map`, in submission order.

    :meth:`close` (or a failed or timed-out result) cancels every call not yet
    consumed. Dropping it cancels them only once it has been read from: like the
    standard library's generator, an iterator nobody read leaves every call to run.
    """

    def __init__(self, futures: list[Future[_T]], deadline: float | None) -> None:
        futures.reverse()  # popping from the end is O(1)
        self._futures = futures
        self._deadline = deadline
        self._started = False

    def __next__(self) -> _T:
        self._started = True
        if not self._futures:
            raise StopIteration
        # Popped first so no reference to a consumed future lingers here.
        future = self._futures.pop()
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        try:
            return future.result(remaining)
        except BaseException:
            future.cancel()
            self.close()
            raise

    def close(self) -> None:
        """Cancel the calls whose results were not consumed."""
        for future in self._futures:
            future.cancel()
        self._futures.clear()

    def __del__(self) -> None:
        # ``executor.map(fn, items)`` without reading the results is fire-and-forget.
        if self._started:
            self.close()


@atexit.register
def _join_at_exit() -> None:
    """Finish the work of every ``wait_at_exit`` executor still alive.

    Workers are daemon threads so the interpreter reaches ``atexit`` at all;
    ``atexit`` runs after non-daemon threads are joined, and this hook does the
    joining for the executors that asked for it.
    """
    for executor in list(_waited_at_exit):
        executor.shutdown(wait=True)
