"""An executor that runs each call at once, in the submitting thread."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

from storekeeper.concurrent._future import Future

__all__ = ["SynchronousExecutor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SynchronousExecutor(Executor):
    """An ``Executor`` that runs every submission immediately, in the caller's thread.

    :meth:`submit` returns an already completed :class:`Future`. Any exception the
    call raises is stored in the future, except ``KeyboardInterrupt`` and
    ``SystemExit``: those propagate out of :meth:`submit` as if the function had
    been called directly, so Ctrl-C and ``sys.exit()`` keep working in the calling
    thread. After :meth:`shutdown`, :meth:`submit` raises ``RuntimeError``.

    Useful in tests and wherever code written for an executor should run inline.
    :attr:`name` is *name* or, by default, the class name.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self._shutdown = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Call ``fn(*args, **kwargs)`` now and return a completed future of the outcome."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[_T] = Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit) as exc:
            future.set_exception(exc)
            raise
        except BaseException as exc:  # noqa: BLE001 - the future carries it to the caller
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further submissions; nothing is ever pending, so there is nothing to wait for."""
        self._shutdown = True
