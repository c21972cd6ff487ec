"""Work schedulers: which submissions run, failures, callbacks, shutdown, timing."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from storekeeper.concurrent import (
    ABCWorkScheduler,
    Asynchronizer,
    DelayedAsynchronizer,
    EnhancedThreadPoolExecutor,
    Serializer,
    SerializingAsynchronizer,
    SynchronousExecutor,
)

TIMEOUT = 5.0

Factory = Callable[..., ABCWorkScheduler]


def delayed(executor: Executor, **kwargs: Any) -> DelayedAsynchronizer:
    return DelayedAsynchronizer(executor, 0.0, **kwargs)


SCHEDULERS: dict[str, Factory] = {
    "Asynchronizer": Asynchronizer,
    "DelayedAsynchronizer": delayed,
    "Serializer": Serializer,
    "SerializingAsynchronizer": SerializingAsynchronizer,
}
EXECUTORS: dict[str, Callable[[], Executor]] = {
    "stdlib": lambda: ThreadPoolExecutor(max_workers=2),
    "enhanced": lambda: EnhancedThreadPoolExecutor(max_workers=2),
    "synchronous": SynchronousExecutor,
}


@pytest.fixture(params=list(EXECUTORS))
def any_executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    executor = EXECUTORS[request.param]()
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture(params=["stdlib", "enhanced"])
def pool(request: pytest.FixtureRequest) -> Iterator[Executor]:
    executor = EXECUTORS[request.param]()
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture(params=list(SCHEDULERS))
def make(request: pytest.FixtureRequest) -> Factory:
    return SCHEDULERS[request.param]


class Recorder:
    """An operation that records its arguments and can hold its first call."""

    def __init__(self, hold: object = None) -> None:
        self.calls: list[Any] = []
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, value: Any) -> Any:
        self.calls.append(value)
        if value == self.hold:
            self.holding.set()
            assert self.release.wait(TIMEOUT)
        return value


def failing_operation() -> None:
    raise ValueError("operation broke")


def in_thread(action: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- seed outcomes --------------------------------------------------------------------


def test_asynchronizer_runs_the_first_and_the_latest(pool: Executor) -> None:
    op = Recorder(hold=1)
    scheduler = Asynchronizer(pool)
    for n in range(1, 11):
        scheduler.submit(op, n)
    op.release.set()
    assert scheduler.wait(TIMEOUT)
    assert op.calls == [1, 10]


def test_serializer_runs_everything_in_order(pool: Executor) -> None:
    op = Recorder(hold=1)
    scheduler = Serializer(pool)
    for n in range(1, 11):
        scheduler.submit(op, n)
    op.release.set()
    assert scheduler.wait(TIMEOUT)
    assert op.calls == list(range(1, 11))


def test_serializing_asynchronizer_keeps_latest_per_operation(pool: Executor) -> None:
    worker1 = Recorder(hold=1)
    worker2 = Recorder()
    order: list[str] = []
    scheduler = SerializingAsynchronizer(pool, callback=lambda f: order.append(str(f.result())))
    scheduler.submit(worker1, 1)
    assert worker1.holding.wait(TIMEOUT)  # worker1's first call started at once
    for n in range(2, 11):
        scheduler.submit(worker1, n)
    for n in range(11, 21):
        scheduler.submit(worker2, n)
    worker1.release.set()
    assert scheduler.wait(TIMEOUT)
    assert worker1.calls == [1, 10]
    assert worker2.calls == [20]
    assert order == ["1", "10", "20"]


def test_serializing_asynchronizer_keeps_the_first_pending_position(pool: Executor) -> None:
    blocker = Recorder(hold="block")
    first, second = Recorder(), Recorder()
    scheduler = SerializingAsynchronizer(pool)
    scheduler.submit(blocker, "block")
    assert blocker.holding.wait(TIMEOUT)
    scheduler.submit(second, "a")
    scheduler.submit(first, "b")
    scheduler.submit(second, "c")  # replaces "a" but stays ahead of first
    ran: list[str] = []
    scheduler.submit(lambda: ran.append("end"))
    for op in (first, second):
        op.calls = ran  # both record into one list to show the order
    blocker.release.set()
    assert scheduler.wait(TIMEOUT)
    assert ran == ["c", "b", "end"]


# -- behaviour common to every scheduler, on every executor ---------------------------


def test_failure_is_logged_once_and_the_scheduler_carries_on(
    make: Factory, any_executor: Executor, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = make(any_executor, name="Saver")
    with caplog.at_level(logging.DEBUG):
        scheduler.submit(failing_operation)
        assert scheduler.wait(TIMEOUT)
        records = error_records(caplog)
        assert len(records) == 1
        assert records[0].levelno == logging.ERROR
        message = records[0].getMessage()
        assert message.startswith("Saver: operation failed")
        assert "failing_operation" in message and "ValueError: operation broke" in message

        op = Recorder()
        scheduler.submit(op, "next")
        assert scheduler.wait(TIMEOUT)
        assert op.calls == ["next"]
        assert len(error_records(caplog)) == 1


def test_callback_gets_each_future(make: Factory, any_executor: Executor) -> None:
    futures: list[Future[Any]] = []
    scheduler = make(any_executor, callback=futures.append)
    scheduler.submit(pow, 2, 5)
    assert scheduler.wait(TIMEOUT)
    scheduler.submit(failing_operation)
    assert scheduler.wait(TIMEOUT)
    assert [f.done() for f in futures] == [True, True]
    assert futures[0].result() == 32
    assert isinstance(futures[1].exception(), ValueError)


def test_raising_callback_is_logged_and_does_not_hang(
    make: Factory, any_executor: Executor, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[object] = []

    def bad_callback(future: Future[Any]) -> None:
        calls.append(future.result())
        raise RuntimeError("callback broke")

    scheduler = make(any_executor, name="Cb", callback=bad_callback)
    with caplog.at_level(logging.DEBUG):
        scheduler.submit(abs, -1)
        assert scheduler.wait(TIMEOUT)
        scheduler.submit(abs, -2)
        assert scheduler.wait(TIMEOUT)
    assert calls == [1, 2]
    records = error_records(caplog)
    assert [r.getMessage() for r in records] == ["Cb: completion callback failed"] * 2
    assert all(r.exc_info and "callback broke" in str(r.exc_info[1]) for r in records)


def test_submit_after_shutdown_raises(make: Factory, any_executor: Executor) -> None:
    scheduler = make(any_executor)
    op = Recorder()
    scheduler.submit(op, 1)
    scheduler.shutdown()
    assert op.calls == [1]
    with pytest.raises(RuntimeError, match="shutdown"):
        scheduler.submit(op, 2)


def test_wait_when_idle_returns_at_once(make: Factory, any_executor: Executor) -> None:
    assert make(any_executor).wait(timeout=0)


def test_operation_may_submit_to_its_own_scheduler_without_recursing(make: Factory) -> None:
    # On an inline executor a recursive design would blow the stack long before 3000.
    scheduler = make(SynchronousExecutor())
    ran: list[int] = []

    def countdown(n: int) -> None:
        ran.append(n)
        if n:
            scheduler.submit(countdown, n - 1)

    scheduler.submit(countdown, 3000)
    assert scheduler.wait(TIMEOUT)
    assert ran == list(range(3000, -1, -1))


def test_refused_submission_is_reported_not_hung(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()
    futures: list[Future[Any]] = []
    scheduler = make(executor, callback=futures.append)
    with caplog.at_level(logging.DEBUG):
        scheduler.submit(abs, -1)
        assert scheduler.wait(TIMEOUT)
    assert len(error_records(caplog)) == 1
    assert isinstance(futures[0].exception(), RuntimeError)


def test_cancelled_operation_is_reported_not_hung(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    executor.submit(release.wait, TIMEOUT)  # occupies the only worker
    futures: list[Future[Any]] = []
    scheduler = make(executor, callback=futures.append)
    with caplog.at_level(logging.DEBUG):
        scheduler.submit(abs, -1)
        executor.shutdown(wait=False, cancel_futures=True)
        release.set()
        assert scheduler.wait(TIMEOUT)
    executor.shutdown(wait=True)
    assert futures[0].cancelled()
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_shutdown_with_pending_work_finishes_it(make: Factory, pool: Executor) -> None:
    op = Recorder(hold=1)
    scheduler = make(pool)
    scheduler.submit(op, 1)
    assert op.holding.wait(TIMEOUT)
    scheduler.submit(op, 2)
    stopper = in_thread(scheduler.shutdown)
    stopper.join(0.05)
    assert stopper.is_alive()  # waits for the running operation
    with pytest.raises(RuntimeError):
        scheduler.submit(op, 3)
    op.release.set()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert op.calls == [1, 2]


def test_serializer_stress_keeps_order_and_exclusion(pool: Executor) -> None:
    threads, per_thread = 8, 500
    scheduler = Serializer(pool)
    guard = threading.Lock()
    active = 0
    most_active = 0
    ran: list[tuple[int, int]] = []

    def op(thread: int, n: int) -> None:
        nonlocal active, most_active
        with guard:
            active += 1
            most_active = max(most_active, active)
        ran.append((thread, n))
        with guard:
            active -= 1

    gate = threading.Barrier(threads, timeout=TIMEOUT)

    def submitter(thread: int) -> None:
        gate.wait()
        for n in range(per_thread):
            scheduler.submit(op, thread, n)

    workers = [in_thread(functools.partial(submitter, t)) for t in range(threads)]
    for worker in workers:
        worker.join(TIMEOUT)
    assert scheduler.wait(TIMEOUT)
    assert most_active == 1
    assert len(ran) == threads * per_thread
    for thread in range(threads):
        assert [n for t, n in ran if t == thread] == list(range(per_thread))


# -- DelayedAsynchronizer ---------------------------------------------------------------


class FakeTimer:
    def __init__(self, delay: float, action: Callable[[], None]) -> None:
        self.delay = delay
        self.action = action
        self.started = False
        self.cancelled = False

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert self.started and not self.cancelled
        self.action()


class FakeTimers(list[FakeTimer]):
    def __call__(self, delay: float, action: Callable[[], None]) -> FakeTimer:
        self.append(FakeTimer(delay, action))
        return self[-1]


def test_delayed_holds_the_next_start_until_the_timer_fires() -> None:
    timers = FakeTimers()
    op = Recorder()
    scheduler = DelayedAsynchronizer(SynchronousExecutor(), 60.0, timer_factory=timers)
    scheduler.submit(op, 1)
    assert op.calls == [1] and timers == []  # the first start is not delayed
    scheduler.submit(op, 2)
    scheduler.submit(op, 3)
    assert op.calls == [1]
    assert len(timers) == 1 and timers[0].started
    assert 59.0 < timers[0].delay <= 60.0
    assert not scheduler.wait(timeout=0.01)  # the pending timer counts as work
    timers[0].fire()
    assert op.calls == [1, 3]  # only the latest submission ran
    assert scheduler.wait(timeout=0)
    scheduler.submit(op, 4)  # soon after 3 started: delayed again
    assert op.calls == [1, 3] and len(timers) == 2
    timers[1].fire()
    assert op.calls == [1, 3, 4]


def test_delayed_shutdown_cancels_the_timer_and_runs_pending_work_now() -> None:
    timers = FakeTimers()
    op = Recorder()
    scheduler = DelayedAsynchronizer(SynchronousExecutor(), 60.0, timer_factory=timers)
    scheduler.submit(op, 1)
    scheduler.submit(op, 2)
    stopper = in_thread(scheduler.shutdown)
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert timers[0].cancelled
    assert op.calls == [1, 2]
    timers[0].action()  # a cancelled timer that fires anyway does nothing
    assert op.calls == [1, 2]


def test_delayed_shutdown_with_a_real_pending_timer_returns_promptly(pool: Executor) -> None:
    op = Recorder()
    scheduler = DelayedAsynchronizer(pool, 60.0)
    scheduler.submit(op, 1)
    assert scheduler.wait(TIMEOUT)
    scheduler.submit(op, 2)  # waits on a 60 s timer
    began = time.monotonic()
    stopper = in_thread(scheduler.shutdown)
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert time.monotonic() - began < 2
    assert op.calls == [1, 2]


def test_delayed_starts_are_at_least_interval_apart(pool: Executor) -> None:
    interval = 0.05
    starts: list[float] = []
    scheduler = DelayedAsynchronizer(pool, interval)
    for _ in range(4):
        scheduler.submit(lambda: starts.append(time.monotonic()))
        assert scheduler.wait(TIMEOUT)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 3
    assert all(gap >= interval for gap in gaps), gaps


def test_delayed_does_not_wait_when_the_interval_already_passed() -> None:
    timers = FakeTimers()
    op = Recorder()
    scheduler = DelayedAsynchronizer(SynchronousExecutor(), 0.01, timer_factory=timers)
    scheduler.submit(op, 1)
    time.sleep(0.02)
    scheduler.submit(op, 2)
    assert op.calls == [1, 2]
    assert timers == []


def test_delayed_runs_at_once_if_the_timer_cannot_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_factory(delay: float, action: Callable[[], None]) -> FakeTimer:
        raise RuntimeError("no timers today")

    op = Recorder()
    scheduler = DelayedAsynchronizer(SynchronousExecutor(), 60.0, timer_factory=broken_factory)
    with caplog.at_level(logging.DEBUG):
        scheduler.submit(op, 1)
        scheduler.submit(op, 2)
    assert op.calls == [1, 2]
    assert scheduler.wait(timeout=0)
    assert [r.getMessage() for r in error_records(caplog)] == [
        "DelayedAsynchronizer: could not start the delay timer; running now"
    ]
