"""pytest plugin: service-test policy shared by storekeeper and third-party backends."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "require_service"]


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
