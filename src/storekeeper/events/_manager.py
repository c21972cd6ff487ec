"""Event managers: who listens to which event class, and dispatch."""

from __future__ import annotations

import abc
import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from storekeeper.events._event import BaseEvent

__all__ = [
    "BaseEventManager",
    "Delivery",
    "EventManager",
    "get_event_manager",
    "set_event_manager",
]

_log = logging.getLogger("storekeeper.events")
_MISSING = object()
Listener = Callable[[Any], object]


class BaseEventManager(abc.ABC):
    """The event manager API: connect listeners to event classes and emit events.

    Besides the abstract core, a manager may report who listens, so that emitters skip
    building events nobody receives and composites forward their children's events only
    while someone listens: :meth:`has_listeners`, :meth:`may_deliver`, :meth:`watch` and
    :meth:`unwatch`. The defaults here answer as a manager that cannot tell: every
    event may have a listener and changes are not reported, which costs work, never
    correctness.
    """

    @abc.abstractmethod
    def connect(
        self,
        cls: type[BaseEvent],
        func: Listener,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the public keyword
        priority: int = 0,
    ) -> None:
        """Call *func(event)* for every emitted event that is an instance of *cls*."""

    @abc.abstractmethod
    def disconnect(self, cls: type[BaseEvent], func: Listener) -> None:
        """Stop calling *func* for *cls*; ``KeyError`` if it is not connected to *cls*."""

    @abc.abstractmethod
    def emit(self, event: BaseEvent, block: bool = True) -> Delivery | None:
        """Deliver *event* to its listeners (see :class:`EventManager`)."""

    @abc.abstractmethod
    def enable(self, cls: type[BaseEvent]) -> None:
        """Re-enable events of *cls* (and of subclasses not disabled on their own)."""

    @abc.abstractmethod
    def disable(self, cls: type[BaseEvent]) -> None:
        """Drop events of *cls* and its subclasses until :meth:`enable`."""

    @abc.abstractmethod
    def is_enabled(self, cls: type[BaseEvent]) -> bool:
        """Whether events of *cls* are delivered (no class in its MRO is disabled)."""

    # -- listener introspection (optional; the defaults assume someone listens) --------
    def has_listeners(self, cls: type[BaseEvent]) -> bool:
        """Whether an event of class *cls* emitted now could reach a listener.

        ``False`` is a promise (the emitter may skip building the event); ``True`` may be
        a guess. Default: ``True``.
        """
        return True

    def may_deliver(self, cls: type[BaseEvent], ignore: Listener | None = None) -> bool:
        """Whether some event of *cls* or of a subclass could reach a listener other than
        *ignore*. ``False`` is a promise; ``True`` may be a guess. Default: ``True``."""
        return True

    def watch(self, callback: Callable[[], object]) -> bool:
        """Ask for ``callback()`` after each change of the connected listeners.

        Returns whether the manager will do so: ``False`` (the default) means changes are
        not reported, so a caller that wants to work only while someone listens must
        work all the time.
        """
        return False

    def unwatch(self, callback: Callable[[], object]) -> None:
        """Stop calling *callback*; nothing happens if it was not watching (default:
        nothing to stop)."""


class Delivery(Future[None]):
    """What ``emit(event, block=False)`` returns: the delivery running in the background.

    A :class:`~concurrent.futures.Future` that completes when every listener has run,
    with the thread-like :meth:`join` and :meth:`is_alive` as well, so code that waits for
    a background emit the way it waits for a thread works unchanged.
    """

    def join(self, timeout: float | None = None) -> None:
        """Wait until the delivery has finished or *timeout* seconds have passed.

        Like ``Thread.join`` it returns ``None`` either way (listener failures are logged,
        not raised); call :meth:`is_alive` afterwards to know whether it finished.
        """
        wait([self], timeout)

    def is_alive(self) -> bool:
        """Whether the delivery has not finished yet."""
        return not self.done()


def _attribute_path(name: object) -> tuple[str, ...]:
    """The attribute names of a filter key: ``"payload.real"`` -> ``("payload", "real")``."""
    if not isinstance(name, str):
        raise TypeError(f"filter keys must be attribute names (str), not {name!r}")
    parts = tuple(name.split("."))
    if not all(parts):
        raise ValueError(f"filter key {name!r} is not a dotted attribute path")
    return parts


def _follow(event: BaseEvent, path: tuple[str, ...]) -> Any:
    """The value at the attribute *path* of *event*; ``_MISSING`` if a step is missing."""
    target: Any = event
    for name in path:
        target = getattr(target, name, _MISSING)
        if target is _MISSING:
            break
    return target


@dataclass(eq=False, slots=True)
class _Connection:
    """One listener. A bound method is kept as its function plus a weak reference to
    its object (``owner``), so dispatch calls ``func(owner(), event)`` without
    rebuilding a bound method; any other callable has ``owner=None``."""

    cls: type[BaseEvent]
    func: Callable[..., object]
    owner: weakref.ref[Any] | None
    key: object
    filter: tuple[tuple[tuple[str, ...], Any], ...]
    priority: int
    order: int

    def accepts(self, event: BaseEvent) -> bool:
        for path, expected in self.filter:
            found = _follow(event, path)
            if found is _MISSING or found != expected:
                return False
        return True


def _identity(func: Callable[..., object]) -> object:
    """What makes two listeners "the same": bound methods compare by object and function."""
    self_ = getattr(func, "__self__", None)
    if self_ is not None and hasattr(func, "__func__"):
        return (id(self_), func.__func__)
    return func


class EventManager(BaseEventManager):
    """A thread-safe event manager.

    - Listeners of a class also receive events of its subclasses. Higher ``priority``
      runs first; equal priorities run in connection order. Reconnecting the same
      listener to the same class replaces its earlier connection.
    - ``filter`` maps attribute names to values; an event passes when every attribute
      equals its value. A name may be a dotted path: ``{"payload.real": 0}`` compares
      ``event.payload.real``. **An event lacking a filtered attribute (at any step of
      the path) does not pass.** Filters are evaluated after the event's ``pre_emit``.
    - A bound-method listener is held weakly: it disconnects when its object is
      collected. Other callables are held strongly.
    - A listener that raises is logged with its traceback; dispatch continues.
    - ``disconnect`` of a listener that is not connected to the class raises
      ``KeyError``.
    - ``emit(event)`` dispatches in the calling thread and returns ``None``;
      ``emit(event, block=False)`` dispatches on a small shared worker pool and returns a
      :class:`Delivery`: a future that completes when every listener has run, which can
      also be waited for with ``join()`` like a thread.
    """

    def __init__(self, max_workers: int = 2) -> None:
        self._lock = threading.RLock()
        self._connections: dict[type[BaseEvent], list[_Connection]] = {}
        self._disabled: set[type[BaseEvent]] = set()
        self._cache: dict[type[BaseEvent], tuple[_Connection, ...]] = {}
        self._order = itertools.count()
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._watchers: dict[object, tuple[Callable[..., object], weakref.ref[Any] | None]] = {}

    def connect(
        self,
        cls: type[BaseEvent],
        func: Listener,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the public keyword
        priority: int = 0,
    ) -> None:
        """Connect *func* to *cls* (see the class documentation)."""
        if not callable(func):
            raise TypeError(f"listener must be callable, not {func!r}")
        paths = tuple((_attribute_path(name), value) for name, value in (filter or {}).items())
        key = _identity(func)
        with self._lock:
            self._remove(cls, key)
            target, owner = self._reference(cls, func, key)
            connection = _Connection(
                cls,
                target,
                owner,
                key,
                paths,
                priority,
                next(self._order),
            )
            self._connections.setdefault(cls, []).append(connection)
            self._cache.clear()
        self._notify_watchers()

    def _reference(
        self, cls: type[BaseEvent], func: Listener, key: object
    ) -> tuple[Callable[..., object], weakref.ref[Any] | None]:
        """``(function, weak reference to its object)`` for a bound method (which then
        disconnects when its object is collected), ``(func, None)`` for the rest."""
        target = getattr(func, "__self__", None)
        function = getattr(func, "__func__", None)
        if target is None or function is None:
            return func, None
        manager = weakref.ref(self)

        def collected(_: object) -> None:
            owner = manager()
            if owner is not None:
                with owner._lock:
                    owner._remove(cls, key)
                    owner._cache.clear()

        return function, weakref.ref(target, collected)

    def _remove(self, cls: type[BaseEvent], key: object) -> bool:
        """Drop *key*'s connection to *cls*; whether there was one."""
        existing = self._connections.get(cls)
        if not existing:
            return False
        kept = [c for c in existing if c.key != key]
        if len(kept) == len(existing):
            return False
        existing[:] = kept
        return True

    def disconnect(self, cls: type[BaseEvent], func: Listener) -> None:
        """Disconnect *func* from *cls*; ``KeyError`` if it is not connected to *cls*."""
        with self._lock:
            if not self._remove(cls, _identity(func)):
                raise KeyError(f"{func!r} is not connected to {cls.__name__}")
            self._cache.clear()
        self._notify_watchers()

    def watch(self, callback: Callable[[], object]) -> bool:
        """Call ``callback()`` after each :meth:`connect` and :meth:`disconnect`; returns
        ``True`` (this manager reports changes).

        For code that does work only while someone listens (composite stores forward
        their children's events only then). A bound method is held weakly. Listeners
        that go away because their object was collected are not reported: a watcher
        then keeps doing work that nobody needs, which is slower, never wrong.
        """
        key = _identity(callback)
        target = getattr(callback, "__self__", None)
        function = getattr(callback, "__func__", None)
        with self._lock:
            if target is None or function is None:
                self._watchers[key] = (callback, None)
            else:
                self._watchers[key] = (function, weakref.ref(target))
        return True

    def unwatch(self, callback: Callable[[], object]) -> None:
        """Stop calling *callback*; nothing happens if it was not watching."""
        with self._lock:
            self._watchers.pop(_identity(callback), None)

    def _notify_watchers(self) -> None:
        # Outside the lock: a watcher may connect or disconnect listeners itself.
        with self._lock:
            watchers = list(self._watchers.items())
        for key, (function, owner) in watchers:
            if owner is None:
                function()
                continue
            target = owner()
            if target is None:
                with self._lock:
                    self._watchers.pop(key, None)
            else:
                function(target)

    def may_deliver(self, cls: type[BaseEvent], ignore: Listener | None = None) -> bool:
        """Whether a listener is connected to *cls*, a base or a subclass of it: whether
        some event of *cls* or of a subclass could reach a listener. Connections of
        *ignore* do not count; filters and disabled classes are not considered."""
        skip = None if ignore is None else _identity(ignore)
        with self._lock:
            return any(
                connection.key != skip
                for connected, connections in self._connections.items()
                if issubclass(connected, cls) or issubclass(cls, connected)
                for connection in connections
            )

    def enable(self, cls: type[BaseEvent]) -> None:
        """Enable *cls* again."""
        with self._lock:
            self._disabled.discard(cls)

    def disable(self, cls: type[BaseEvent]) -> None:
        """Disable *cls* and, through it, its subclasses."""
        with self._lock:
            self._disabled.add(cls)

    def is_enabled(self, cls: type[BaseEvent]) -> bool:
        """Whether no class in *cls*'s MRO is disabled."""
        disabled = self._disabled
        return not disabled or not any(base in disabled for base in cls.__mro__)

    def has_listeners(self, cls: type[BaseEvent]) -> bool:
        """Whether any listener would receive an event of class *cls*."""
        # Asked before every write of a store: the cache lookup comes first.
        cached = self._cache.get(cls)
        return bool(self._resolve(cls) if cached is None else cached)

    def _resolve(self, cls: type[BaseEvent]) -> tuple[_Connection, ...]:
        cached = self._cache.get(cls)
        if cached is not None:
            return cached
        with self._lock:
            found = [
                connection for base in cls.__mro__ for connection in self._connections.get(base, ())
            ]
            found.sort(key=lambda c: (-c.priority, c.order))
            result = tuple(found)
            self._cache[cls] = result
        return result

    def emit(self, event: BaseEvent, block: bool = True) -> Delivery | None:
        """Deliver *event*; see the class documentation for ``block``."""
        cls = type(event)
        if not self.is_enabled(cls):
            return None
        connections = self._resolve(cls)
        if block:
            self._dispatch(event, connections)
            return None
        delivery = Delivery()
        self._executor().submit(self._dispatch_later, delivery, event, connections)
        return delivery

    def _dispatch_later(
        self, delivery: Delivery, event: BaseEvent, connections: tuple[_Connection, ...]
    ) -> None:
        """:meth:`_dispatch` in a pool worker, reporting the outcome to *delivery*."""
        if not delivery.set_running_or_notify_cancel():
            return
        try:
            self._dispatch(event, connections)
        except BaseException as exc:  # noqa: BLE001 - a hook failed; the caller may look
            delivery.set_exception(exc)
        else:
            delivery.set_result(None)

    def _dispatch(self, event: BaseEvent, connections: tuple[_Connection, ...]) -> None:
        event.pre_emit()
        for connection in connections:
            if event._handled:
                break
            if connection.filter and not connection.accepts(event):
                continue
            owner = connection.owner
            try:
                if owner is None:
                    connection.func(event)
                else:
                    target = owner()
                    if target is not None:
                        connection.func(target, event)
            except Exception:  # noqa: BLE001 - a failing listener must not stop the others
                _log.exception("listener %r failed on %r", connection.func, event)
        event.post_emit()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="storekeeper-events"
                )
            return self._pool

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker pool used by ``emit(block=False)`` (it restarts on demand)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)


_default: BaseEventManager | None = None
_default_lock = threading.Lock()


def get_event_manager() -> BaseEventManager:
    """The process-wide default event manager (created on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = EventManager()
    return _default


def set_event_manager(manager: BaseEventManager) -> None:
    """Replace the process-wide default event manager."""
    global _default
    with _default_lock:
        _default = manager
