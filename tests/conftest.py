"""Test-suite set-up shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

# Crash tests fork writers from a multiprocessing fork server that preloads the test
# module, so each writer starts in milliseconds. Python 3.11's fork server ignores the
# parent's sys.path when preloading, so the tests directory must be on PYTHONPATH for the
# preload to find the module (otherwise every writer re-imports it, ~0.4 s each).
_TESTS = str(Path(__file__).parent)
_PATH = os.environ.get("PYTHONPATH", "")
if _TESTS not in _PATH.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, _PATH) if p)
