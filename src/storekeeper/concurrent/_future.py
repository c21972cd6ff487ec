"""A Future that remembers where its exception was raised."""

from __future__ import annotations

import concurrent.futures
import traceback as _traceback
from typing import Any, TypeVar

__all__ = ["Future", "future_traceback"]

_T = TypeVar("_T")


def _format(exception: BaseException) -> str:
    return "".join(_traceback.format_exception(exception))


class Future(concurrent.futures.Future[_T]):
    """A ``concurrent.futures.Future`` that also keeps the failure's formatted traceback.

    The traceback is formatted when :meth:`set_exception` is called, from the
    exception's ``__traceback__``, so it shows the frames of the worker that failed
    even if the exception is later re-raised (which grows ``__traceback__``) and even
    when ``set_exception`` is called outside the ``except`` block. Everything else,
    including ``InvalidStateError`` on a second completion, is the standard
    behaviour.
    """

    # (exception, its formatted traceback); compared by identity with the stored
    # exception, so a rejected second set_exception can never mislabel the first.
    _captured: tuple[BaseException, str] | None = None

    def set_exception(self, exception: BaseException | None) -> None:
        """Fail the future with *exception*, recording its traceback first.

        Recording happens before waiters are woken, so they always see it.
        """
        if exception is not None:
            self._captured = (exception, _format(exception))
        super().set_exception(exception)

    def traceback(self, timeout: float | None = None) -> str | None:
        """The formatted traceback of the failure, or ``None`` if the call succeeded.

        Waits like :meth:`exception`: up to *timeout* seconds (forever if ``None``),
        raising ``TimeoutError`` if still not done and ``CancelledError`` if the
        future was cancelled.
        """
        exception = self.exception(timeout)
        if exception is None:
            return None
        captured = self._captured
        if captured is not None and captured[0] is exception:
            return captured[1]
        return _format(exception)


def future_traceback(
    future: concurrent.futures.Future[Any], timeout: float | None = None
) -> str | None:
    """The formatted traceback of *future*'s failure, for any kind of future.

    Uses :meth:`Future.traceback` for this package's futures; for any other
    ``concurrent.futures.Future`` formats ``future.exception().__traceback__``.
    Returns ``None`` if the call succeeded; waits and raises like
    ``future.exception(timeout)``.
    """
    if isinstance(future, Future):
        return future.traceback(timeout)
    exception = future.exception(timeout)
    return None if exception is None else _format(exception)
