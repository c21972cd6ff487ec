"""The package root: every exported name resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import storekeeper


def test_every_exported_name_resolves() -> None:
    for name in storekeeper.__all__:
        assert getattr(storekeeper, name) is not None, name


def test_import_does_not_load_backends_or_optional_dependencies() -> None:
    code = (
        "import sys, storekeeper; "
        "print(sorted(m for m in sys.modules if m.startswith(('storekeeper.backends', "
        "'storekeeper.composite', 'rich', 'msgpack', 'sqlite3'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
