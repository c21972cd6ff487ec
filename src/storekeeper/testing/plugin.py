"""pytest plugin: the service-test policy shared by storekeeper and third-party backends.

The plugin is opt-in: a test suite that wants it names it in its ``conftest.py``::

    pytest_plugins = ["storekeeper.testing.plugin"]

It registers the markers the conformance suite uses (``service``, ``postgres``, ``redis``,
``s3``, ``crash``, ``soak``, ``slow``), so a suite running with ``--strict-markers`` needs
no configuration of its own. :func:`require_service` works with or without the plugin.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["MARKERS", "in_ci", "pytest_configure", "require_service"]

#: The markers the conformance suite puts on its tests, with what each one means.
MARKERS = {
    "service": "needs a running service (PostgreSQL, Redis, S3); skips outside CI when absent",
    "postgres": "needs PostgreSQL",
    "redis": "needs Redis",
    "s3": "needs an S3-compatible server",
    "crash": "kills real writer processes (SIGKILL) to test crash safety",
    "soak": "long-running; only under make soak",
    "slow": "takes more than a few seconds",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register :data:`MARKERS` with pytest."""
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def in_ci() -> bool:
    """Return whether we run under CI (``CI`` set to a true-ish value)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def require_service(name: str, reason: str) -> NoReturn:
    """Give up on a test because the service *name* is unavailable.

    Outside CI the test is skipped with *reason*; under ``CI=true`` the test fails,
    because CI must never silently skip what it is meant to run.
    """
    message = f"{name} is not available: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true forbids skipping service tests)", pytrace=False)
    pytest.skip(message)
