"""Store URLs: SQLAlchemy's sqlite forms, percent-decoded paths, strict options, hints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

import pytest

from storekeeper import (
    AbstractReadOnlyStore,
    BytesValue,
    Value,
    open_read_only_store,
    open_store,
)
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import (
    InvalidArgumentError,
    InvalidURLError,
    ReadOnlyStoreError,
    UnknownSchemeError,
)
from storekeeper.store import registry


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (relative URLs resolve against it)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _sqlite(url: str) -> SqliteStore:
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    return store


# -- sqlite: as SQLAlchemy spells it ----------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:///data.db", "data.db"),
        ("sqlite:///./x.db", "x.db"),
        ("sqlite:///a/b.db", "a/b.db"),
    ],
)
def test_three_slashes_name_a_database_relative_to_the_working_directory(
    cwd: Path, url: str, name: str
) -> None:
    (cwd / "a").mkdir()
    with _sqlite(url) as store:
        assert store.location == str(cwd / name)
        store.set("k", (b"written through the URL", {}))
    with SqliteStore(cwd / name) as again:  # a second path to the same file
        assert again.to_bytes("k") == b"written through the URL"


def test_four_slashes_name_an_absolute_path(cwd: Path, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "abs.db"
    path.parent.mkdir()
    with _sqlite(f"sqlite:///{path}") as store:  # the f-string gives sqlite:////...
        assert store.location == str(path)
        store.set("k", (b"v", {}))
    with SqliteStore(path) as again:
        assert again.to_bytes("k") == b"v"
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:?durable=false"])
def test_memory_forms(cwd: Path, url: str) -> None:
    with _sqlite(url) as store:
        assert store.location == ":memory:"
        store.set("k", (b"v", {}))
        assert store.to_bytes("k") == b"v"
    assert list(cwd.iterdir()) == []


def test_paths_are_percent_decoded(cwd: Path, tmp_path: Path) -> None:
    with _sqlite("sqlite:///my%20data%23.db") as store:
        assert store.location == str(cwd / "my data#.db")
    target = tmp_path / "file store é"
    with open_store(target.as_uri() + "?create=true") as files:
        assert isinstance(files, FileSystemStore) and files.path == str(target)
    with open_store("file:rel%20dir?create=true") as relative:
        assert isinstance(relative, FileSystemStore) and relative.path == str(cwd / "rel dir")


def test_url_options_reach_the_store(cwd: Path) -> None:
    url = (
        "sqlite:///o.db?table=things&index=none&durable=OFF&background_checkpoints=yes"
        "&inline_limit=8&chunk_size=4&max_indexes=3&timeout=2.5&secure_delete=1"
    )
    with _sqlite(url) as store:
        assert (store.table, store.index, store.durable) == ("things", None, False)
        assert (store.background_checkpoints, store.secure_delete) == (True, True)
        assert (store.inline_limit, store.chunk_size, store.max_indexes) == (8, 4, 3)
        assert store.timeout == 2.5
    with _sqlite("sqlite:///o.db?index=static&index_columns=a,b") as indexed:
        assert (indexed.index, indexed.index_columns) == ("static", ["a", "b"])
    url = "file:fs?create=true&durable=false&inline_limit=5&lock_timeout=1&orphan_grace=0"
    with open_store(url) as files:
        assert isinstance(files, FileSystemStore)
        assert (files.durable, files.inline_limit, files.lock_timeout) == (False, 5, 1.0)
        assert files.orphan_grace == 0.0


def test_keyword_options_win_over_url_options(cwd: Path) -> None:
    with open_store("sqlite:///k.db?durable=false&table=a", durable=True) as store:
        assert isinstance(store, SqliteStore) and (store.durable, store.table) == (True, "a")


# -- refused, naming what is valid --------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sqlite:///x.db?durabel=false", "durable"),
        ("sqlite:///x.db?durable=nope", "true or false"),
        ("sqlite:///x.db?durable", "durable="),
        ("sqlite:///x.db?durable=1&durable=0", "twice"),
        ("sqlite:///x.db?inline_limit=-1", "non-negative integer"),
        ("sqlite:///x.db?inline_limit=1e3", "non-negative integer"),
        ("sqlite:///x.db?timeout=inf", "seconds"),
        ("sqlite:///x.db?index=fast", "dynamic, static, none"),
        ("sqlite:///x.db?table=", "non-empty"),
        ("sqlite:///x.db?table=%ff", "UTF-8"),
        ("sqlite:///x.db#main", "fragment"),
        ("sqlite:///%ff.db", "UTF-8"),
        ("sqlite:///a%00b.db", "NUL"),
        ("sqlite:///", "sqlite://"),
        ("sqlite:x.db", "sqlite:///x.db"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite://[::1/x.db", "malformed"),
        ("file:///srv/x?creat=true", "create"),
        ("file:///srv/x?create=maybe", "true or false"),
        ("file:///srv/x?lock_timeout=-1", "seconds"),
        ("file://", "needs a directory"),
        ("memory://foo/bar", "no host or path"),
        ("memory:///bar", "no host or path"),
        ("memory://?durable=false", "take no options"),
    ],
)
def test_bad_urls_are_refused_before_anything_is_created(cwd: Path, url: str, named: str) -> None:
    with pytest.raises(InvalidURLError) as caught:
        open_store(url)
    assert named in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert list(cwd.iterdir()) == []


def test_an_unknown_option_lists_the_valid_ones(cwd: Path) -> None:
    with pytest.raises(InvalidURLError) as caught:
        open_store("sqlite:///x.db?durabel=false")
    message = str(caught.value)
    for name in ("durable", "table", "index", "inline_limit", "background_checkpoints"):
        assert name in message
    with pytest.raises(InvalidURLError) as file_caught:
        open_store("file:///srv/x?durabel=false")
    assert "create, durable, inline_limit, lock_timeout, orphan_grace" in str(file_caught.value)


def test_hints_for_common_mistakes(cwd: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidURLError, match=r"in-memory database write sqlite://") as memory:
        open_store("sqlite://:memory:")
    assert "sqlite:////absolute.db" in str(memory.value)
    init_shared_store(tmp_path / "relative")
    with pytest.raises(InvalidURLError, match=r"host 'relative'") as host:
        open_store("file://relative")
    assert "file:///absolute/dir" in str(host.value)
    assert "file:relative/dir" in str(host.value)
    with pytest.raises(UnknownSchemeError, match="no scheme"):
        open_store("data.db")
    assert issubclass(UnknownSchemeError, InvalidURLError)
    with pytest.raises(TypeError, match="str"):
        open_store(b"memory://")  # type: ignore[arg-type]


def test_memory_url_gives_a_new_empty_store() -> None:
    with open_store("memory://") as first, open_store("memory:") as second:
        assert isinstance(first, DictMemoryStore) and isinstance(second, DictMemoryStore)
        first.set("k", (b"v", {}))
        assert second.query_keys() == []


# -- the registry: two doors, entry points read on demand ---------------------------------------
class _Shelf(AbstractReadOnlyStore):
    """A read-only backend: one key, ``shelf``, holding the URL's path."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> _Shelf:
        return cls(parts.path)

    def get(self, key: str) -> Value:
        if key != "shelf":
            raise KeyError(key)
        return BytesValue(self.path.encode())

    def query(self, select: Any = None, *where: Any, **kwargs: Any) -> list[tuple[str, Any]]:
        return [("shelf", {})]


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of the registry for a test that registers schemes."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


@pytest.mark.usefixtures("fresh_registry")
def test_open_store_refuses_a_read_only_backend_and_names_the_other_door() -> None:
    registry.register_backend("shelf", _Shelf)
    with pytest.raises(ReadOnlyStoreError, match=r"open_read_only_store\(\)"):
        open_store("shelf:books")
    with open_read_only_store("shelf:books") as store:
        assert isinstance(store, _Shelf) and store.is_connected()
        assert store.to_bytes("shelf") == b"books"
    with open_read_only_store("memory://") as writable:  # every backend opens there
        assert isinstance(writable, DictMemoryStore) and writable.is_connected()


@pytest.mark.usefixtures("fresh_registry")
def test_entry_points_add_schemes_and_never_replace_built_in_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    read: list[str] = []

    def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
        read.append(group)
        return [
            importlib.metadata.EntryPoint("shelf", f"{__name__}:_Shelf", group),
            importlib.metadata.EntryPoint("memory", f"{__name__}:_Shelf", group),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with open_store("memory://") as memory:  # a built-in scheme: entry points not read
        assert isinstance(memory, DictMemoryStore)
    assert read == []
    with open_read_only_store("shelf:x") as shelf:  # not built in: read once
        assert isinstance(shelf, _Shelf)
    with open_store("memory://") as memory, pytest.raises(UnknownSchemeError):
        assert isinstance(memory, DictMemoryStore)
        open_store("nobody://")
    assert read == ["storekeeper.backends"]
    assert "shelf" in registry.registered_schemes()


def test_opening_built_in_schemes_does_not_import_importlib_metadata(tmp_path: Path) -> None:
    code = (
        "import sys, storekeeper\n"
        "with storekeeper.open_store('memory://'), storekeeper.open_store('sqlite://'):\n"
        "    pass\n"
        "with storekeeper.open_store(sys.argv[1] + '?create=true'):\n"
        "    pass\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, tmp_path.as_uri()], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"


# -- values the constructor refuses, keyword options, the single-slash form --------------------
@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sqlite:///x.db?chunk_size=0", "chunk_size"),
        ("sqlite:///x.db?table=a%00b", "table name"),
        ("sqlite:/x.db", "sqlite:////x.db"),
        ("sqlite:/abs/x.db", "sqlite:///abs/x.db"),
    ],
)
def test_values_the_store_refuses_are_invalid_url_errors(cwd: Path, url: str, named: str) -> None:
    with pytest.raises(InvalidURLError) as caught:
        open_store(url)
    assert named in str(caught.value)
    assert list(cwd.iterdir()) == []


def test_keyword_options_are_checked_like_url_options(cwd: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"'durabel'.*valid options: .*durable"):
        open_store("sqlite:///x.db", durabel=False)
    with pytest.raises(InvalidArgumentError, match=r"'table'.*valid options: event_manager"):
        open_store("memory://", table="t")
    with pytest.raises(InvalidArgumentError, match="durable is bool, not str"):
        open_store("sqlite:///x.db", durable="nope")
    with pytest.raises(InvalidURLError, match="chunk_size"):
        open_store("sqlite:///x.db", chunk_size=0)
    init_shared_store(tmp_path / "fs")
    with pytest.raises(InvalidArgumentError, match="lock_timeout is a number, not str"):
        open_store((tmp_path / "fs").as_uri(), lock_timeout="5")
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: SqliteStore(durable="no"), "durable"),
        (lambda: SqliteStore(secure_delete=1), "secure_delete"),
        (lambda: SqliteStore(background_checkpoints="yes"), "background_checkpoints"),
        (lambda: SqliteStore(inline_limit=1.5), "inline_limit"),
        (lambda: SqliteStore(chunk_size=True), "chunk_size"),
        (lambda: SqliteStore(timeout="30"), "timeout"),
        (lambda: SqliteStore(":memory:", 5), "table"),
    ],
)
def test_constructors_check_the_types_of_their_options(make: Any, named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        make()


def test_filesystem_constructor_checks_its_options(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "fs")
    for options in ({"durable": "false"}, {"inline_limit": "8"}, {"orphan_grace": None}):
        with pytest.raises(InvalidArgumentError, match=next(iter(options))):
            FileSystemStore(tmp_path / "fs", **options)
    assert FileSystemStore(tmp_path / "fs", lock_timeout=5, orphan_grace=0).lock_timeout == 5


@pytest.mark.parametrize("url", ["sqlite:", "memory:"])
def test_forms_without_slashes_that_name_no_path_are_in_memory(url: str) -> None:
    with open_store(url) as store:
        assert store.info()["type"] in ("SqliteStore", "DictMemoryStore")
        if isinstance(store, SqliteStore):
            assert store.location == ":memory:"
