"""Test-suite set-up shared by every test module."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The suite's markers come from storekeeper's opt-in pytest plugin, as they would for a
# third-party backend's test suite.
pytest_plugins = ["storekeeper.testing.plugin"]

# Crash tests fork writers from a multiprocessing fork server that preloads the test
# module, so each writer starts in milliseconds. Python 3.11's fork server ignores the
# parent's sys.path when preloading, so the tests directory must be on PYTHONPATH for the
# preload to find the module (otherwise every writer re-imports it, ~0.4 s each).
_TESTS = str(Path(__file__).parent)
_PATH = os.environ.get("PYTHONPATH", "")
if _TESTS not in _PATH.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, _PATH) if p)


@pytest.fixture
def read_only_filesystem() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A context manager in which opening any file for writing fails with EROFS."""

    @contextlib.contextmanager
    def active() -> Iterator[None]:
        real_open = os.open

        def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, "Read-only file system", path)
            return real_open(path, flags, *args, **kwargs)

        os.open = read_only
        try:
            yield
        finally:
            os.open = real_open

    return active
