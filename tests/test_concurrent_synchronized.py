"""synchronized and synchronized_method: mutual exclusion, re-entrancy, lock scope."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from storekeeper.concurrent import synchronized, synchronized_method

TIMEOUT = 5.0


def start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def finish(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "thread hung"


class Overlap:
    """Runs a first call that holds on until a second caller is at the door.

    The first call records "enter", waits until the second thread announces it is
    calling, lingers a moment so an unsynchronised second call would overtake it,
    then records "exit".
    """

    def __init__(self) -> None:
        self.log: list[str] = []
        self.first_inside = threading.Event()
        self.second_calling = threading.Event()

    def body(self, who: str) -> None:
        self.log.append(f"{who} enter")
        if who == "first":
            self.first_inside.set()
            assert self.second_calling.wait(TIMEOUT)
            time.sleep(0.05)
        self.log.append(f"{who} exit")

    def race(self, first: Callable[[], object], second: Callable[[], object]) -> list[str]:
        one = start(first)
        assert self.first_inside.wait(TIMEOUT)

        def call_second() -> None:
            self.second_calling.set()
            second()

        two = start(call_second)
        finish(one, two)
        return self.log


SERIAL = ["first enter", "first exit", "second enter", "second exit"]


def test_synchronized_function_runs_one_call_at_a_time() -> None:
    overlap = Overlap()
    guarded = synchronized(overlap.body)
    assert overlap.race(lambda: guarded("first"), lambda: guarded("second")) == SERIAL


def test_unsynchronized_function_would_overlap() -> None:
    # Shows the harness detects overlap, so the tests above can fail.
    overlap = Overlap()
    log = overlap.race(lambda: overlap.body("first"), lambda: overlap.body("second"))
    assert log != SERIAL


def test_synchronized_is_reentrant() -> None:
    @synchronized
    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * factorial(n - 1)

    results: list[int] = []
    finish(start(lambda: results.append(factorial(6))))
    assert results == [720]


def test_synchronized_keeps_name_doc_and_wrapped() -> None:
    def original(x: int) -> int:
        """Doubles."""
        return 2 * x

    wrapped = synchronized(original)
    assert wrapped.__name__ == "original"
    assert wrapped.__doc__ == "Doubles."
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
    assert wrapped(4) == 8


class Shared:
    """A synchronized (class-wide lock) and a synchronized_method (instance lock)."""

    def __init__(self, overlap: Overlap) -> None:
        self.overlap = overlap

    @synchronized
    def class_locked(self, who: str) -> None:
        self.overlap.body(who)

    @synchronized_method
    def instance_locked(self, who: str) -> None:
        self.overlap.body(who)

    @synchronized_method
    def outer(self) -> str:
        return self.inner()

    @synchronized_method
    def inner(self) -> str:
        return "inner"


def test_synchronized_method_decorator_shares_one_lock_across_instances() -> None:
    overlap = Overlap()
    a, b = Shared(overlap), Shared(overlap)
    log = overlap.race(lambda: a.class_locked("first"), lambda: b.class_locked("second"))
    assert log == SERIAL


def test_synchronized_method_serialises_calls_on_one_instance() -> None:
    overlap = Overlap()
    a = Shared(overlap)
    log = overlap.race(lambda: a.instance_locked("first"), lambda: a.instance_locked("second"))
    assert log == SERIAL


def test_synchronized_method_lets_two_instances_run_together() -> None:
    both_inside = threading.Barrier(2, timeout=TIMEOUT)

    class Meeting:
        @synchronized_method
        def meet(self) -> None:
            both_inside.wait()  # breaks (and raises) if the calls were serialised

    a, b = Meeting(), Meeting()
    errors: list[BaseException] = []

    def call(obj: Meeting) -> None:
        try:
            obj.meet()
        except threading.BrokenBarrierError as exc:
            errors.append(exc)

    finish(start(lambda: call(a)), start(lambda: call(b)))
    assert errors == []


def test_synchronized_method_is_reentrant_across_methods() -> None:
    results: list[str] = []
    finish(start(lambda: results.append(Shared(Overlap()).outer())))
    assert results == ["inner"]


def test_instance_lock_is_created_once_under_contention() -> None:
    threads = 16
    gate = threading.Barrier(threads, timeout=TIMEOUT)
    counter_lock = threading.Lock()
    inside = 0
    most_inside = 0

    class Counter:
        @synchronized_method
        def work(self) -> None:
            nonlocal inside, most_inside
            with counter_lock:
                inside += 1
                most_inside = max(most_inside, inside)
            time.sleep(0.001)
            with counter_lock:
                inside -= 1

    obj = Counter()

    def run() -> None:
        gate.wait()
        for _ in range(5):
            obj.work()

    finish(*[start(run) for _ in range(threads)])
    assert most_inside == 1
    locks = [v for v in vars(obj).values() if type(v) is type(threading.RLock())]
    assert len(locks) == 1


def test_synchronized_method_needs_an_instance_dict() -> None:
    class Slotted:
        __slots__ = ()

        @synchronized_method
        def method(self) -> None:
            pass

    with pytest.raises(TypeError, match="__dict__"):
        Slotted().method()
