"""Import hygiene of the package, read from the source with :mod:`ast`.

- No module uses another module's private names: neither ``from m import _name`` nor
  ``m._name`` on an imported module ``m``. Importing a private *module* of the same
  package (``from storekeeper.backends._fs_records import load_record``) is fine: a
  package may split itself into private modules; their public names are its own.
- Imports inside ``storekeeper.store`` point one way: the graph of every import (at
  module level, under ``TYPE_CHECKING`` and inside functions) has no cycle.
- Each ``storekeeper.store`` module imports on its own in a fresh interpreter.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "storekeeper"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` in *module* (the package uses
    absolute imports only; a relative one fails here so the scan never misreads it)."""
    assert not node.level, f"{module} line {node.lineno}: relative import"
    return node.module or ""


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def private_uses(path: Path) -> list[str]:
    """Every use in *path* of a private name of another module."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    module_aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                if _private(alias.name) and not _is_module(f"{source}.{alias.name}"):
                    found.append(f"line {node.lineno}: from {source} import {alias.name}")
                elif _is_module(f"{source}.{alias.name}"):
                    module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and _private(node.attr)
            and not _is_module(f"{module_aliases[node.value.id]}.{node.attr}")
        ):
            found.append(f"line {node.lineno}: {module_aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    problems = []
    for path in _sources():
        relative = path.relative_to(SRC).as_posix()
        problems += [f"{relative} {use}" for use in private_uses(path)]
    assert problems == []


def test_the_scan_finds_private_imports(tmp_path: Path) -> None:
    """The scanner itself: both spellings are caught, dunders and modules are not."""
    source = PACKAGE / "store" / "probe_for_test.py"
    source.write_text(
        "from storekeeper.store._validate import _SCAN, check_key\n"
        "from storekeeper import files\n"
        "from storekeeper.store import _validate\n"
        "files._fsync(0)\n"
        "files.__name__\n",
        encoding="utf-8",
    )
    try:
        uses = private_uses(source)
    finally:
        source.unlink()
    assert uses == [
        "line 1: from storekeeper.store._validate import _SCAN",
        "line 4: storekeeper.files._fsync",
    ]


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of *package* it imports anywhere in its source."""
    root = SRC / package.replace(".", "/")
    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        module = _module_name(path)
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                names = [source] + [f"{source}.{alias.name}" for alias in node.names]
            for name in names:
                if name.startswith(package + ".") and name != module:
                    edges.add(".".join(name.split(".")[: package.count(".") + 2]))
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in *graph* as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_store_package_imports_point_one_way() -> None:
    graph = import_graph("storekeeper.store")
    # The package's __init__ gathers everything; no module imports it back.
    graph.pop("storekeeper.store", None)
    assert find_cycle(graph) is None


def test_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


STORE_MODULES = sorted(
    _module_name(path) for path in (PACKAGE / "store").glob("*.py") if path.name != "__init__.py"
)


# Empty stand-ins for the packages, so their __init__ modules (which import everything,
# in an order that could hide a module's own missing import) do not run first.
ISOLATE = """
import sys, types
for name, path in (("storekeeper", {root!r}), ("storekeeper.store", {store!r})):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
import {module}
"""


@pytest.mark.parametrize("module", STORE_MODULES)
def test_store_module_imports_alone(module: str) -> None:
    code = ISOLATE.format(root=str(PACKAGE), store=str(PACKAGE / "store"), module=module)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
