"""Future.traceback, future_traceback and SynchronousExecutor."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from storekeeper.concurrent import Future, SynchronousExecutor, future_traceback


def worker_that_fails() -> None:
    raise ValueError("worker broke")


def caught() -> BaseException:
    try:
        worker_that_fails()
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def subtract(a: int, b: int = 0) -> int:
    return a - b


def test_traceback_names_the_worker_function() -> None:
    future: Future[None] = Future()
    future.set_exception(caught())  # outside the except block on purpose
    trace = future.traceback()
    assert trace is not None
    assert "worker_that_fails" in trace
    assert "ValueError: worker broke" in trace


def test_traceback_is_captured_when_set_not_when_asked() -> None:
    future: Future[None] = Future()
    future.set_exception(caught())
    before = future.traceback()
    with pytest.raises(ValueError, match="worker broke"):
        future.result()  # re-raising prepends frames to __traceback__
    assert future.traceback() == before
    assert "test_traceback_is_captured_when_set" not in (before or "")


def test_traceback_is_none_on_success() -> None:
    future: Future[int] = Future()
    future.set_result(3)
    assert future.traceback() is None


def test_traceback_waits_and_times_out_like_exception() -> None:
    future: Future[int] = Future()
    with pytest.raises(TimeoutError):
        future.traceback(timeout=0.01)
    future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.traceback()


def test_traceback_from_another_thread() -> None:
    future: Future[None] = Future()

    def fail_in_thread() -> None:
        try:
            worker_that_fails()
        except ValueError as exc:
            future.set_exception(exc)

    thread = threading.Thread(target=fail_in_thread)
    thread.start()
    trace = future.traceback(timeout=5)
    thread.join()
    assert trace is not None and "fail_in_thread" in trace


def test_second_completion_still_raises_invalid_state_and_keeps_first_outcome() -> None:
    future: Future[int] = Future()
    future.set_result(1)
    with pytest.raises(concurrent.futures.InvalidStateError):
        future.set_exception(caught())
    assert future.result() == 1
    assert future.traceback() is None

    failed: Future[int] = Future()
    first = caught()
    failed.set_exception(first)
    with pytest.raises(concurrent.futures.InvalidStateError):
        failed.set_exception(KeyError("second"))
    assert failed.exception() is first
    assert "ValueError: worker broke" in (failed.traceback() or "")


def test_future_traceback_works_for_a_stdlib_future() -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        failed = pool.submit(worker_that_fails)
        succeeded = pool.submit(int, "7")
        trace = future_traceback(failed)
        assert future_traceback(succeeded) is None
    assert trace is not None and "worker_that_fails" in trace
    assert not hasattr(failed, "traceback")


def test_future_traceback_delegates_to_ours() -> None:
    future: Future[None] = Future()
    future.set_exception(caught())
    assert future_traceback(future) == future.traceback()


def test_synchronous_executor_runs_in_the_calling_thread() -> None:
    executor = SynchronousExecutor()
    future = executor.submit(threading.get_ident)
    assert isinstance(future, Future)
    assert future.done()
    assert future.result() == threading.get_ident()


def test_synchronous_executor_captures_exceptions() -> None:
    future = SynchronousExecutor().submit(worker_that_fails)
    assert isinstance(future.exception(), ValueError)
    assert "worker_that_fails" in (future.traceback() or "")


def test_synchronous_executor_passes_arguments() -> None:
    future = SynchronousExecutor().submit(subtract, 5, b=2)
    assert future.result() == 3


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_synchronous_executor_lets_interrupts_and_exit_propagate(
    exc_type: type[BaseException],
) -> None:
    def interrupt() -> None:
        raise exc_type

    with pytest.raises(exc_type):
        SynchronousExecutor().submit(interrupt)


def test_synchronous_executor_captures_other_base_exceptions() -> None:
    class Custom(BaseException):
        pass

    def raise_custom() -> None:
        raise Custom

    future = SynchronousExecutor().submit(raise_custom)
    assert isinstance(future.exception(), Custom)


def test_synchronous_executor_refuses_after_shutdown() -> None:
    with SynchronousExecutor() as executor:
        assert executor.submit(int).result() == 0
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(int)


def test_synchronous_executor_map() -> None:
    executor = SynchronousExecutor()
    assert list(executor.map(pow, [2, 3], [3, 2])) == [8, 9]
