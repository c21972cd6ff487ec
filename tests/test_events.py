"""The event system: delivery rules, filters, priorities, weak listeners, threads."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import pytest

from storekeeper.events import (
    BaseEvent,
    EventManager,
    ProgressEndEvent,
    ProgressEvent,
    ProgressManager,
    ProgressStartEvent,
    ProgressStepEvent,
    get_event_manager,
    set_event_manager,
)


class FileEvent(BaseEvent):
    pass


class SaveEvent(FileEvent):
    pass


class OpenEvent(FileEvent):
    pass


def test_attributes_and_source() -> None:
    event = SaveEvent(source="doc", path="a.txt")
    assert (event.source, event.path) == ("doc", "a.txt")  # type: ignore[attr-defined]
    assert BaseEvent().source is None
    assert not event.is_handled


def test_superclass_listeners_receive_subclass_events() -> None:
    manager = EventManager()
    seen: list[str] = []
    manager.connect(FileEvent, lambda e: seen.append("file:" + type(e).__name__))
    manager.connect(SaveEvent, lambda e: seen.append("save"))
    manager.emit(SaveEvent())
    manager.emit(OpenEvent())
    assert sorted(seen[:2]) == ["file:SaveEvent", "save"]
    assert seen[2:] == ["file:OpenEvent"]


def test_seed_example_save_logger_priority_and_handled() -> None:
    manager = EventManager()
    log: list[str] = []

    def save_logger(event: Any) -> None:
        log.append(f"saved {event.path}")
        event.mark_as_handled()

    def file_logger(event: Any) -> None:
        log.append(f"file {event.path}")

    manager.connect(FileEvent, file_logger)
    manager.connect(SaveEvent, save_logger, priority=100)
    manager.emit(SaveEvent(path="x"))
    manager.emit(OpenEvent(path="y"))
    assert log == ["saved x", "file y"]


def test_equal_priorities_run_in_connection_order_and_reconnect_replaces() -> None:
    manager = EventManager()
    order: list[int] = []
    first = lambda e: order.append(1)  # noqa: E731
    second = lambda e: order.append(2)  # noqa: E731
    manager.connect(BaseEvent, first)
    manager.connect(BaseEvent, second)
    manager.emit(BaseEvent())
    manager.connect(BaseEvent, first, priority=-1)  # replaces, now runs last
    manager.emit(BaseEvent())
    assert order == [1, 2, 2, 1]


def test_filters_and_missing_attributes() -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(BaseEvent, seen.append, filter={"source": "a", "kind": 1})
    manager.emit(BaseEvent("a", kind=1))
    manager.emit(BaseEvent("a", kind=2))
    manager.emit(BaseEvent("b", kind=1))
    manager.emit(BaseEvent("a"))  # lacks "kind": does not pass
    assert len(seen) == 1


def test_filter_sees_pre_emit_changes() -> None:
    class Stamped(BaseEvent):
        def pre_emit(self) -> None:
            self.stamped = True

    manager = EventManager()
    seen: list[Any] = []
    manager.connect(Stamped, seen.append, filter={"stamped": True})
    manager.emit(Stamped())
    assert len(seen) == 1


def test_disable_is_per_class_and_covers_subclasses() -> None:
    manager = EventManager()
    seen: list[str] = []
    manager.connect(FileEvent, lambda e: seen.append(type(e).__name__))
    manager.disable(FileEvent)
    manager.emit(SaveEvent())
    assert not manager.is_enabled(SaveEvent)
    manager.disable(SaveEvent)
    manager.enable(FileEvent)
    manager.emit(SaveEvent())
    manager.emit(OpenEvent())
    assert seen == ["OpenEvent"]
    manager.enable(SaveEvent)
    manager.emit(SaveEvent())
    assert seen == ["OpenEvent", "SaveEvent"]


def test_bound_method_listeners_are_weak() -> None:
    manager = EventManager()
    calls: list[int] = []

    class Listener:
        def on(self, event: BaseEvent) -> None:
            calls.append(1)

    listener = Listener()
    manager.connect(BaseEvent, listener.on)
    manager.emit(BaseEvent())
    del listener
    gc.collect()
    manager.emit(BaseEvent())
    assert calls == [1]
    assert not manager.has_listeners(BaseEvent)


def test_disconnect() -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(BaseEvent, seen.append)
    manager.disconnect(BaseEvent, seen.append)
    manager.emit(BaseEvent())
    assert seen == []


def test_failing_listener_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    manager = EventManager()
    seen: list[Any] = []

    def broken(event: BaseEvent) -> None:
        raise RuntimeError("listener bug")

    manager.connect(BaseEvent, broken, priority=1)
    manager.connect(BaseEvent, seen.append)
    with caplog.at_level(logging.ERROR, logger="storekeeper.events"):
        manager.emit(BaseEvent())
    assert len(seen) == 1
    assert "listener bug" in caplog.text


def test_non_blocking_emit_returns_a_future() -> None:
    manager = EventManager()
    done = threading.Event()
    thread_names: list[str] = []

    def slow(event: BaseEvent) -> None:
        thread_names.append(threading.current_thread().name)
        done.set()

    manager.connect(BaseEvent, slow)
    futures = [manager.emit(BaseEvent(), block=False) for _ in range(20)]
    for future in futures:
        assert future is not None
        future.result(10)
    assert done.is_set()
    assert len(set(thread_names)) <= 2  # a bounded pool, not a thread per event
    manager.shutdown()


def test_threads_hammering_connect_emit_disconnect() -> None:
    manager = EventManager()
    barrier = threading.Barrier(6)
    counts = [0] * 6
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        def listener(event: BaseEvent) -> None:
            counts[n] += 1

        try:
            barrier.wait()
            for _ in range(300):
                manager.connect(BaseEvent, listener)
                manager.emit(BaseEvent())
                manager.disconnect(BaseEvent, listener)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert all(count >= 300 for count in counts)
    assert not manager.has_listeners(BaseEvent)


def test_connecting_during_dispatch_does_not_break_it() -> None:
    manager = EventManager()
    seen: list[str] = []

    def adder(event: BaseEvent) -> None:
        seen.append("adder")
        manager.connect(BaseEvent, lambda e: seen.append("late"))

    manager.connect(BaseEvent, adder)
    manager.emit(BaseEvent())
    manager.emit(BaseEvent())
    assert seen == ["adder", "adder", "late"]


def test_default_manager_can_be_replaced() -> None:
    original = get_event_manager()
    replacement = EventManager()
    try:
        set_event_manager(replacement)
        assert get_event_manager() is replacement
    finally:
        set_event_manager(original)


def test_progress_manager_emits_start_steps_end() -> None:
    manager = EventManager()
    events: list[Any] = []
    manager.connect(ProgressEvent, events.append)
    with ProgressManager(manager, "src", message="Saving", steps=3) as progress:
        for step in range(1, 4):
            progress(step=step)
    kinds = [type(e) for e in events]
    assert kinds == [
        ProgressStartEvent,
        ProgressStepEvent,
        ProgressStepEvent,
        ProgressStepEvent,
        ProgressEndEvent,
    ]
    assert events[0].steps == 3
    assert [e.step for e in events[1:4]] == [1, 2, 3]
    assert events[-1].exit_state == "normal"
    assert len({e.operation_id for e in events}) == 1


def test_progress_manager_reports_exceptions_and_ends_once() -> None:
    manager = EventManager()
    ends: list[Any] = []
    manager.connect(ProgressEndEvent, ends.append)
    with pytest.raises(ValueError, match="disk on fire"), ProgressManager(manager):
        raise ValueError("disk on fire")
    progress = ProgressManager(manager)
    progress.start()
    progress.end("done", exit_state="warning")
    progress.end()
    assert [(e.exit_state, e.message) for e in ends] == [
        ("exception", "disk on fire"),
        ("warning", "done"),
    ]
    with pytest.raises(ValueError, match="exit_state"):
        ProgressManager(manager).end(exit_state="weird")
    assert ProgressManager(manager).operation_id != ProgressManager(manager).operation_id


def test_seed_progress_bar_example() -> None:
    manager = EventManager()
    lines: list[str] = []

    class Writer:
        def __init__(self, start: ProgressStartEvent) -> None:
            self.steps = start.steps
            lines.append(start.message)
            manager.connect(
                ProgressStepEvent, self.step, filter={"operation_id": start.operation_id}
            )
            manager.connect(ProgressEndEvent, self.end, filter={"operation_id": start.operation_id})

        def step(self, event: ProgressStepEvent) -> None:
            lines.append("[" + "*" * event.step + " " * (self.steps - event.step) + "]")

        def end(self, event: ProgressEndEvent) -> None:
            lines.append(f"{event.message}: {event.exit_state}")

    writers: list[Writer] = []
    manager.connect(ProgressStartEvent, lambda e: writers.append(Writer(e)))
    with ProgressManager(manager, message="Saving foo", steps=2) as progress:
        progress(step=1)
        progress(step=2)
    assert lines == ["Saving foo", "[* ]", "[**]", "Saving foo: normal"]


def test_watchers_hear_of_every_connect_and_disconnect() -> None:
    manager = EventManager()
    changes: list[bool] = []

    class Watcher:
        def changed(self) -> None:
            changes.append(manager.may_deliver(FileEvent))

    watcher = Watcher()
    manager.watch(watcher.changed)
    listener = lambda event: None  # noqa: E731
    manager.connect(SaveEvent, listener)  # a subclass: a FileEvent may reach it
    manager.disconnect(SaveEvent, listener)
    manager.connect(BaseEvent, listener)  # a base: every FileEvent reaches it
    manager.unwatch(watcher.changed)
    manager.disconnect(BaseEvent, listener)
    assert changes == [True, False, True]
    manager.watch(watcher.changed)
    del watcher
    gc.collect()
    manager.connect(OpenEvent, listener)  # a collected watcher is dropped, not called
    assert changes == [True, False, True]


def test_may_deliver_ignores_unrelated_classes_and_the_ignored_listener() -> None:
    manager = EventManager()

    class Other(BaseEvent):
        pass

    def own(event: BaseEvent) -> None:
        return None

    manager.connect(Other, lambda event: None)
    assert not manager.may_deliver(FileEvent)
    manager.connect(OpenEvent, own)
    assert manager.may_deliver(FileEvent)
    assert not manager.may_deliver(FileEvent, ignore=own)
    assert not manager.may_deliver(SaveEvent)  # a sibling class
