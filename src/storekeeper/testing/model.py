"""Conformance mixin: the Hypothesis dict-model state machine on every store.

:class:`ModelTests` is one of :class:`~storekeeper.testing.store.StoreTests`' bases, so
every backend and composite test class runs :func:`~storekeeper.testing.stateful.run_state_machine`
on its own stores. ``make test`` runs a few short examples per class; ``make soak``
(``STOREKEEPER_SOAK=1``) runs many long ones.

Large-value paths must run too: the default :meth:`ModelTests.create_model_store` builds
the store under :func:`~storekeeper.testing.children.child_options` with a small
``inline_limit``, so the file and SQLite children of a composite keep most model values
in data files (or chunks). A backend test class whose ``create_store`` does not use
``child`` overrides :meth:`ModelTests.create_model_store` to do the same.
"""

from __future__ import annotations

import abc
import itertools
import os
from pathlib import Path

import pytest

from storekeeper.events import EventManager
from storekeeper.store import AbstractStore
from storekeeper.testing.children import child_options
from storekeeper.testing.stateful import run_state_machine

__all__ = ["SMALL_INLINE_LIMIT", "ModelTests"]

#: An inline limit under which most values the model writes (up to 64 bytes) are "large".
SMALL_INLINE_LIMIT = 16

_SOAK = os.environ.get("STOREKEEPER_SOAK") == "1"


class ModelTests(abc.ABC):
    """The dict-model state machine, bounded in ``make test`` and long in ``make soak``."""

    #: Examples (fresh stores) and steps per example in ``make test``.
    model_examples = 4
    model_steps = 15
    #: The same under ``make soak``.
    soak_model_examples = 150
    soak_model_steps = 40

    @abc.abstractmethod
    def create_store(self, tmp_path: Path, event_manager: EventManager) -> AbstractStore:
        """Return a new, empty, *unconnected* store using *event_manager*."""

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> AbstractStore:
        """A new, empty, unconnected store for one model run, in the fresh *tmp_path*.

        Default: :meth:`create_store` with children (see ``testing.children.child``)
        that keep values over :data:`SMALL_INLINE_LIMIT` bytes out of line and skip
        fsync. Override when ``create_store`` builds a store with a large inline limit.
        """
        with child_options(inline_limit=SMALL_INLINE_LIMIT, durable=False):
            return self.create_store(tmp_path, event_manager)

    def _run_model(self, tmp_path: Path, examples: int, steps: int) -> None:
        numbers = itertools.count()

        def factory() -> AbstractStore:
            directory = tmp_path / f"model-{next(numbers)}"
            directory.mkdir()
            return self.create_model_store(directory, EventManager())

        run_state_machine(factory, max_examples=examples, stateful_step_count=steps)

    def test_model_state_machine(self, tmp_path: Path) -> None:
        self._run_model(tmp_path, self.model_examples, self.model_steps)

    @pytest.mark.soak
    @pytest.mark.skipif(not _SOAK, reason="long model runs: only under make soak")
    def test_model_state_machine_soak(self, tmp_path: Path) -> None:
        self._run_model(tmp_path, self.soak_model_examples, self.soak_model_steps)
