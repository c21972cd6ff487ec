"""StaticURLStore never combines two exports: a re-export forced between the reader's
index (metadata) and its data file, over ``file+static`` and over a plain static HTTP
server, gives one export's value, metadata, size and version, or a clear error."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import storekeeper.backends.static as static_module
from _static_server import StaticServer, export_values
from storekeeper.backends.static import ExportReplacedError, StaticURLStore
from storekeeper.errors import CorruptFileError
from storekeeper.events import EventManager
from storekeeper.store.events import StoreModificationEvent, StoreProgressEvent
from storekeeper.store.value import Value

ONE = {"k": (b"one", {"v": 1}), "other": (b"o", {})}
TWO = {"k": (b"second value", {"v": 2}), "other": (b"o", {})}


class Seen(NamedTuple):
    data: bytes
    metadata: dict[str, Any]
    size: int | None
    version: str | None


class _Hook:
    def __init__(
        self, pattern: re.Pattern[str], action: Callable[[], None], left: int, after: int
    ) -> None:
        self.pattern, self.action, self.left, self.after = pattern, action, left, after
        self.runs = [0]


class Site:
    """An export served over one transport, with a hook run before matching reads."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self._hooks: list[_Hook] = []
        self._busy = False

    def before(
        self, pattern: str, action: Callable[[], None], times: int = 1, after: int = 0
    ) -> list[int]:
        """Run *action* before the next *times* reads whose path matches *pattern*, once
        *after* such reads went by untouched; the list returned counts the runs."""
        hook = _Hook(re.compile(pattern), action, times, after)
        self._hooks.append(hook)
        return hook.runs

    def seen(self, path: str) -> None:
        if self._busy:
            return  # the action itself (an export) reads files too
        for hook in self._hooks:
            if hook.left and hook.pattern.search(path):
                if hook.after:
                    hook.after -= 1
                    continue
                hook.left -= 1
                hook.runs[0] += 1
                self._busy = True
                try:
                    hook.action()
                finally:
                    self._busy = False

    def export(self, values: Any) -> Callable[[], None]:
        return lambda: export_values(self.root, values)


@pytest.fixture(params=["file", "http"])
def site(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    root = tmp_path / "site"
    export_values(root, ONE)
    if request.param == "http":
        with StaticServer(root) as server:
            served = Site(root, server.url)
            server.before.append(served.seen)
            yield served
        return
    served = Site(root, root.as_uri())
    real_stat, real_open = os.stat, open

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        served.seen(os.fsdecode(path) if not isinstance(path, int) else "")
        return real_stat(path, *args, **kwargs)

    def opener(path: Any, *args: Any, **kwargs: Any) -> Any:
        served.seen(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(static_module, "open", opener, raising=False)
    yield served


def _seen(value: Value) -> Seen:
    with value.data as stream:
        data = stream.read()
    return Seen(data, value.metadata, value.size, value.version)


def _current(site: Site) -> Seen:
    """The key's value as a reader that starts now sees it."""
    with StaticURLStore(site.url, poll=0) as fresh:
        return _seen(fresh.get("k"))


def test_a_re_export_between_metadata_and_data_gives_one_export(site: Site) -> None:
    with StaticURLStore(site.url, poll=0) as store:
        assert store.get_metadata("k") == {"v": 1}  # the index of the first export is held
        runs = site.before(r"/data/k$", site.export(TWO))
        got = _seen(store.get("k"))
        assert runs == [1]  # the export ran between the index and the data file
        assert got == _current(site)
        assert got.data == b"second value" and got.metadata == {"v": 2}
        assert got.size == len(got.data)
        assert store.get_metadata("k") == {"v": 2}


def test_a_range_is_never_cut_at_the_size_of_another_export(site: Site) -> None:
    with StaticURLStore(site.url, poll=0) as store:
        # After the size of the first export's file (3 bytes) is known, before its data.
        runs = site.before(r"/data/k$", site.export(TWO), after=1)
        with store.get_data_range("k", 1) as stream:
            assert stream.read() == b"econd value"
        assert runs == [1]
        assert store.get_metadata("k") == {"v": 2}
        runs = site.before(r"/data/k$", site.export(ONE))
        with store.get_data("k") as stream:
            assert stream.read() == b"one"
        assert runs == [1]


def test_a_re_export_between_generation_and_index_is_read_again(site: Site) -> None:
    runs = site.before(r"generations/[^/]+/index\.json$", site.export(TWO))
    with StaticURLStore(site.url, poll=0) as store:
        assert runs == [1]
        assert store.get_metadata("k") == {"v": 2}
        assert _seen(store.get("k")) == _current(site)


def test_a_value_whose_export_was_replaced_is_never_read_from_another(site: Site) -> None:
    with StaticURLStore(site.url, poll=0) as store:
        value = store.get("k")
        before = (value.metadata, value.size, value.version)
        export_values(site.root, TWO)
        with pytest.raises(ExportReplacedError, match="get the key again"):
            _seen(value)
        with pytest.raises(ExportReplacedError):
            value.range(0, 2)
        assert (value.metadata, value.size, value.version) == before
        assert _seen(store.get("k")) == _current(site)
        assert _current(site).metadata == {"v": 2}


def _flip(values: list[Any]) -> Any:
    values.reverse()
    return values[0]


def test_an_export_replaced_at_every_read_is_a_clear_error(site: Site) -> None:
    with StaticURLStore(site.url, poll=0) as store:
        flip = [TWO, ONE]
        runs = site.before(r"/data/k$", lambda: export_values(site.root, _flip(flip)), 99)
        with pytest.raises(ExportReplacedError, match="re-exported 5 times"):
            store.get("k")
        assert runs == [5]
        assert store.get_metadata("other") == {}


def test_to_file_and_to_bytes_that_meet_a_re_export_read_the_new_one(
    site: Site, tmp_path: Path
) -> None:
    with StaticURLStore(site.url, poll=0) as store:
        store.get_metadata("k")  # the first export's index is held
        target = tmp_path / "copy"
        # after the size of the first export's file is known, before its data is read
        runs = site.before(r"/data/k$", site.export(TWO), after=1)
        store.to_file("k", target)
        assert runs == [1] and target.read_bytes() == b"second value"
        # to_bytes with progress listeners reads through a value, as to_file does
        progress: list[Any] = []
        store.event_manager.connect(StoreProgressEvent, progress.append)
        runs = site.before(r"/data/k$", site.export(ONE), after=1)
        assert store.to_bytes("k", buffer_size=1) == b"one"
        assert runs == [1] and progress and progress[0].steps == 3


def test_generation_json_naming_a_missing_generation_is_a_damaged_export(site: Site) -> None:
    (site.root / "generation.json").write_text('{"generation": "20990101T000000Z-00"}')
    with pytest.raises(CorruptFileError, match=r"20990101T000000Z-00.*does not exist"):
        StaticURLStore(site.url, poll=0).connect()


def _listening(site: Site) -> tuple[StaticURLStore, list[tuple[str, str]]]:
    manager = EventManager()
    heard: list[tuple[str, str]] = []
    manager.connect(StoreModificationEvent, lambda e: heard.append((type(e).__name__, e.key)))
    store = StaticURLStore(site.url, poll=0, event_manager=manager)
    store.connect()
    return store, heard


def test_update_index_tells_new_data_from_new_metadata(site: Site) -> None:
    start = {"same": (b"s", {"v": 1}), "data": (b"one", {"v": 1}), "meta": (b"m", {"v": 1})}
    export_values(site.root, start)
    generation = json.loads((site.root / "generation.json").read_text())["generation"]
    digests = json.loads((site.root / "generations" / generation / "digests.json").read_text())
    assert digests == {key: hashlib.sha256(data).hexdigest() for key, (data, _) in start.items()}
    store, heard = _listening(site)
    with store:
        # "data" keeps its size and metadata: only its bytes tell the change
        export_values(site.root, {**start, "data": (b"two", {"v": 1}), "meta": (b"m", {"v": 2})})
        store.update_index()
        assert sorted(heard) == [("StoreSetEvent", "data"), ("StoreUpdateEvent", "meta")]
        heard.clear()
        export_values(site.root, {**start, "data": (b"two", {"v": 1}), "meta": (b"m", {"v": 2})})
        store.update_index()  # a re-export of the same values: nothing changed
        assert heard == []
        assert store.to_bytes("data") == b"two"


def test_exports_without_digests_are_read_and_tell_metadata_changes(site: Site) -> None:
    def export_without_digests(values: Any) -> None:
        export_values(site.root, values)
        for path in site.root.glob("generations/*/digests.json"):
            path.unlink()

    export_without_digests(ONE)
    store, heard = _listening(site)
    with store:
        export_without_digests(TWO)
        store.update_index()
        assert heard == [("StoreUpdateEvent", "k")]
        assert store.to_bytes("k") == b"second value"


@pytest.mark.parametrize("text", ["[]", '{"k": 5}', "[" * 100_000, "not json"])
def test_a_damaged_digests_file_is_a_clear_error(site: Site, text: str) -> None:
    generation = json.loads((site.root / "generation.json").read_text())["generation"]
    (site.root / "generations" / generation / "digests.json").write_text(text)
    with pytest.raises(CorruptFileError, match=r"digests\.json"):
        StaticURLStore(site.url, poll=0).connect()
