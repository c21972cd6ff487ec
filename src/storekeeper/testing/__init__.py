"""Test support for storekeeper and for third-party backends.

:class:`StoreTests` is the conformance suite: subclass it in a test module, implement
``create_store``, and pytest runs every documented behaviour of the store API against the
store. :mod:`storekeeper.testing.plugin` is an opt-in pytest plugin (name it in
``pytest_plugins``) that registers the suite's markers; :func:`require_service` enforces
the service-test rule: a test that needs a server skips when the server is absent, except
under ``CI=true`` where that skip becomes a failure.
"""

from __future__ import annotations

from storekeeper.testing.plugin import require_service
from storekeeper.testing.store import WEIRD_KEYS, StoreTests

__all__ = ["WEIRD_KEYS", "StoreTests", "require_service"]
