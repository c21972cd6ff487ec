"""The package root: every exported name resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import storekeeper


def test_every_exported_name_resolves() -> None:
    for name in storekeeper.__all__:
        assert getattr(storekeeper, name) is not None, name


def test_import_does_not_load_backends_or_optional_dependencies() -> None:
    code = (
        "import sys, storekeeper; "
        "print(sorted(m for m in sys.modules if m.startswith(('storekeeper.backends', "
        "'storekeeper.composite', 'rich', 'msgpack', 'sqlite3', 'importlib.metadata', "
        "'asyncio'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_all_is_sorted_and_lists_every_public_name() -> None:
    assert storekeeper.__all__ == sorted(storekeeper.__all__)
    defined = {
        name
        for name, value in vars(storekeeper).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith("storekeeper")
    }
    lazy = set(storekeeper._LAZY)
    assert defined | lazy | {"__version__"} == set(storekeeper.__all__)
    assert set(dir(storekeeper)) >= set(storekeeper.__all__)


def test_a_users_script_type_checks(tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(
        "from storekeeper import SqliteStore, DictMemoryStore, open_store\n"
        "store = SqliteStore(':memory:')\n"
        "with store:\n"
        "    store.set('k', (b'data', {'n': 1}))\n"
        "memory: DictMemoryStore = DictMemoryStore()\n"
        "with open_store('sqlite:///data.db') as opened:\n"
        "    version = opened.set('photos/cat.jpg', (b'jpeg', {'kind': 'photo'}))\n"
        "    opened.set('counter', (b'2', {}), if_version=version)\n"
        "    with opened.transaction('move'):\n"
        "        opened.delete('photos/cat.jpg')\n"
    )
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    first_example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "open_store(" in first_example and ".set(" in first_example
    (tmp_path / "readme_example.py").write_text(first_example)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_pytest_plugin_is_opt_in() -> None:
    from importlib.metadata import entry_points

    assert [ep for ep in entry_points(group="pytest11") if ep.value.startswith("storekeeper")] == []
