"""Test support for storekeeper and for third-party backends.

``storekeeper.testing.plugin`` is a pytest plugin (registered through the ``pytest11``
entry point) that enforces the service-test rule: a test that needs a server skips when
the server is absent, except under ``CI=true`` where that skip becomes a failure.
"""

from __future__ import annotations

from storekeeper.testing.plugin import require_service

__all__ = ["require_service"]
