"""EnhancedThreadPoolExecutor: hooks, names, reuse, map, shutdown, exit behaviour."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import CancelledError

import pytest

from storekeeper.concurrent import EnhancedThreadPoolExecutor, Future

TIMEOUT = 5.0


@pytest.fixture
def pool() -> Iterator[EnhancedThreadPoolExecutor]:
    executor = EnhancedThreadPoolExecutor(max_workers=2, name="Test")
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def thread_name() -> str:
    return threading.current_thread().name


def subtract(a: int, b: int = 0) -> int:
    return a - b


def test_submit_returns_our_future_with_the_result(pool: EnhancedThreadPoolExecutor) -> None:
    future = pool.submit(subtract, 5, b=2)
    assert isinstance(future, Future)
    assert future.result(TIMEOUT) == 3


def test_failure_is_captured_with_worker_traceback(pool: EnhancedThreadPoolExecutor) -> None:
    def failing_job() -> None:
        raise KeyError("lost")

    future = pool.submit(failing_job)
    assert isinstance(future.exception(TIMEOUT), KeyError)
    assert "failing_job" in (future.traceback() or "")


def test_system_exit_in_a_job_is_captured(pool: EnhancedThreadPoolExecutor) -> None:
    future = pool.submit(sys.exit, 3)
    assert isinstance(future.exception(TIMEOUT), SystemExit)
    assert pool.submit(int, "4").result(TIMEOUT) == 4


def test_initializer_and_uninitializer_run_once_per_thread() -> None:
    lock = threading.Lock()
    started: list[str] = []
    stopped: list[str] = []

    def record(into: list[str]) -> None:
        with lock:
            into.append(thread_name())

    everyone = threading.Barrier(3, timeout=TIMEOUT)
    executor = EnhancedThreadPoolExecutor(
        max_workers=3, initializer=lambda: record(started), uninitializer=lambda: record(stopped)
    )
    futures = [executor.submit(everyone.wait) for _ in range(3)]  # forces three threads
    futures += [executor.submit(int) for _ in range(30)]
    for future in futures:
        future.result(TIMEOUT)
    assert len(started) == 3
    executor.shutdown(wait=True)
    assert sorted(started) == sorted(stopped)
    assert len(set(started)) == 3


def test_failing_hooks_are_logged_and_the_pool_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_initializer() -> None:
        raise RuntimeError("init broke")

    def broken_uninitializer() -> None:
        raise RuntimeError("uninit broke")

    with caplog.at_level(logging.ERROR, logger="storekeeper.concurrent"):
        executor = EnhancedThreadPoolExecutor(
            max_workers=1,
            initializer=broken_initializer,
            uninitializer=broken_uninitializer,
            name="Hooked",
        )
        assert [executor.submit(pow, 2, n).result(TIMEOUT) for n in range(3)] == [1, 2, 4]
        executor.shutdown(wait=True)

    records = [r for r in caplog.records if r.name == "storekeeper.concurrent"]
    assert [r.getMessage() for r in records] == [
        "HookedWorker-1 initializer failed; the worker carries on",
        "HookedWorker-1 uninitializer failed; the worker carries on",
    ]
    assert all(r.levelno >= logging.ERROR and r.exc_info for r in records)
    assert "init broke" in caplog.text and "uninit broke" in caplog.text


def test_worker_threads_are_named_and_numbered_from_one() -> None:
    gate = threading.Barrier(3, timeout=TIMEOUT)

    def meet() -> str:
        gate.wait()
        return thread_name()

    with EnhancedThreadPoolExecutor(max_workers=3, name="Saver") as executor:
        names = {f.result(TIMEOUT) for f in [executor.submit(meet) for _ in range(3)]}
    assert names == {"SaverWorker-1", "SaverWorker-2", "SaverWorker-3"}


def test_default_thread_name_uses_the_class_name() -> None:
    class Custom(EnhancedThreadPoolExecutor):
        pass

    with EnhancedThreadPoolExecutor(max_workers=1) as plain, Custom(max_workers=1) as custom:
        assert plain.submit(thread_name).result(TIMEOUT) == "EnhancedThreadPoolExecutorWorker-1"
        assert custom.submit(thread_name).result(TIMEOUT) == "CustomWorker-1"


def test_idle_worker_is_reused_before_starting_a_thread() -> None:
    with EnhancedThreadPoolExecutor(max_workers=4) as executor:
        names = {executor.submit(thread_name).result(TIMEOUT) for _ in range(50)}
    assert names == {"EnhancedThreadPoolExecutorWorker-1"}


def test_never_more_threads_than_max_workers() -> None:
    with EnhancedThreadPoolExecutor(max_workers=2) as executor:
        names = {f.result(TIMEOUT) for f in [executor.submit(thread_name) for _ in range(200)]}
    assert len(names) <= 2


def test_invalid_max_workers() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        EnhancedThreadPoolExecutor(max_workers=0)


def test_worker_drops_the_work_item_after_running_it(pool: EnhancedThreadPoolExecutor) -> None:
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    pool.submit(id, payload).result(TIMEOUT)
    del payload
    deadline = time.monotonic() + TIMEOUT
    while ref() is not None and time.monotonic() < deadline:
        time.sleep(0.001)  # the worker drops the item just after completing the future
    assert ref() is None


def test_map_returns_results_in_order(pool: EnhancedThreadPoolExecutor) -> None:
    assert list(pool.map(pow, range(10), [2] * 10)) == [n * n for n in range(10)]
    assert list(pool.map(pow, [], [])) == []
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(abs, [1], chunksize=0)


def test_map_submits_everything_immediately(pool: EnhancedThreadPoolExecutor) -> None:
    ran = threading.Semaphore(0)
    results = pool.map(lambda n: ran.release(), range(5))
    for _ in range(5):
        assert ran.acquire(timeout=TIMEOUT)  # all ran without the iterator being touched
    assert list(results) == [None] * 5


def test_map_timeout_is_measured_from_the_call(pool: EnhancedThreadPoolExecutor) -> None:
    release = threading.Event()

    def job(n: int) -> int:
        if n == 1:
            release.wait(TIMEOUT)
        return n

    results = pool.map(job, [0, 1], timeout=0.2)
    time.sleep(0.3)  # let the deadline pass before asking for anything
    assert next(results) == 0  # already done: returned despite the deadline
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    assert time.monotonic() - began < 0.15  # no fresh 0.2 s allowance per item
    release.set()


@pytest.mark.parametrize("how", ["closed", "dropped"])
def test_closing_or_dropping_map_after_reading_cancels_the_rest(how: str) -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def job(n: int) -> int:
        ran.append(n)
        if n == 1:
            started.set()
            release.wait(TIMEOUT)
        return n

    with EnhancedThreadPoolExecutor(max_workers=1) as executor:
        results = executor.map(job, range(6))
        assert next(results) == 0
        assert started.wait(TIMEOUT)
        if how == "closed":
            results.close()  # type: ignore[attr-defined]
        else:
            del results  # as a half-read generator is closed when it is collected
            gc.collect()
        release.set()
    assert ran == [0, 1]


def test_closing_map_before_first_next_cancels_everything_pending() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def job(n: int) -> None:
        ran.append(n)
        started.set()
        release.wait(TIMEOUT)

    with EnhancedThreadPoolExecutor(max_workers=1) as executor:
        results = executor.map(job, range(4))
        assert started.wait(TIMEOUT)
        results.close()  # type: ignore[attr-defined]
        release.set()
    assert ran == [0]


def test_failed_map_item_cancels_the_rest() -> None:
    second_started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def job(n: int) -> int:
        ran.append(n)
        if n == 0:
            raise ValueError(n)
        second_started.set()
        release.wait(TIMEOUT)
        return n

    with EnhancedThreadPoolExecutor(max_workers=1) as executor:
        results = executor.map(job, range(4))
        assert second_started.wait(TIMEOUT)
        with pytest.raises(ValueError, match="0"):
            next(results)
        release.set()
    assert ran == [0, 1]


def test_shutdown_waits_for_submitted_work() -> None:
    executor = EnhancedThreadPoolExecutor(max_workers=2)
    futures = [executor.submit(time.sleep, 0.01) for _ in range(10)]
    executor.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in futures)


def test_shutdown_cancel_futures_cancels_pending_work() -> None:
    started = threading.Event()
    release = threading.Event()

    def block() -> str:
        started.set()
        release.wait(TIMEOUT)
        return "finished"

    executor = EnhancedThreadPoolExecutor(max_workers=1)
    running = executor.submit(block)
    assert started.wait(TIMEOUT)
    pending = [executor.submit(int) for _ in range(5)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    release.set()
    assert running.result(TIMEOUT) == "finished"
    executor.shutdown(wait=True)
    with pytest.raises(CancelledError):
        pending[0].result()


def test_submit_after_shutdown_raises() -> None:
    with EnhancedThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(int).result(TIMEOUT)
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(int)
    executor.shutdown()  # a second shutdown is harmless


def test_shutdown_from_a_worker_does_not_deadlock() -> None:
    executor = EnhancedThreadPoolExecutor(max_workers=1)
    future = executor.submit(executor.shutdown, wait=True)
    assert future.exception(TIMEOUT) is None
    with pytest.raises(RuntimeError):
        executor.submit(int)


def test_workers_stop_when_the_executor_is_garbage_collected() -> None:
    executor = EnhancedThreadPoolExecutor(max_workers=1)
    worker = executor.submit(threading.current_thread).result(TIMEOUT)
    del executor
    gc.collect()
    worker.join(TIMEOUT)
    assert not worker.is_alive()


def test_custom_future_class() -> None:
    class TaggedFuture(Future[object]):
        tag = "custom"

    class TaggingExecutor(EnhancedThreadPoolExecutor):
        _future_factory = TaggedFuture

    with TaggingExecutor(max_workers=1) as executor:
        future = executor.submit(int, "5")
        assert isinstance(future, TaggedFuture)
        assert future.result(TIMEOUT) == 5
        assert list(executor.map(abs, [-1, -2])) == [1, 2]


def run_script(code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_wait_at_exit_finishes_work_before_the_interpreter_exits() -> None:
    done = run_script(
        """
        import time
        from storekeeper.concurrent import EnhancedThreadPoolExecutor

        def job():
            time.sleep(0.3)
            print("job finished", flush=True)

        executor = EnhancedThreadPoolExecutor(max_workers=1, wait_at_exit=True)
        executor.submit(job)
        print("main done", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["main done", "job finished"]


def test_no_wait_at_exit_abandons_a_job_that_never_ends() -> None:
    began = time.monotonic()
    done = run_script(
        """
        import threading
        from storekeeper.concurrent import EnhancedThreadPoolExecutor

        executor = EnhancedThreadPoolExecutor(max_workers=1, wait_at_exit=False)
        started = threading.Event()
        executor.submit(lambda: (started.set(), threading.Event().wait()))
        assert started.wait(5)
        print("main done", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["main done"]
    assert time.monotonic() - began < 15
