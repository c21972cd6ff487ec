"""atomic_store: the seed's documented behaviour, its formats, and the original's bugs fixed."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import msgpack
import pytest

from storekeeper import atomic_store, files
from storekeeper.errors import (
    CorruptFileError,
    InvalidValueError,
    LockTimeoutError,
    MissingDependencyError,
    UnknownFormatError,
)

ReadOnly = Callable[[], AbstractContextManager[None]]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.json"


def test_context_manager_writes_on_exit_only(path: Path) -> None:
    with atomic_store.open(path, default=[]) as store:
        assert store.value == []
        store.value.append("first")
        assert not path.exists()
    assert json.loads(path.read_bytes()) == ["first"]
    with atomic_store.open(path, default=[]) as store:
        store.value.append("second")
    assert json.loads(path.read_bytes()) == ["first", "second"]


def test_manual_control_writes_on_commit_only(path: Path) -> None:
    store = atomic_store.open(path, default={})
    store.value["state"] = "running"
    assert not path.exists()
    store.commit()
    assert json.loads(path.read_text()) == {"state": "running"}
    store.value["state"] = "done"
    assert json.loads(path.read_text()) == {"state": "running"}
    store.commit()
    assert json.loads(path.read_text()) == {"state": "done"}


def test_missing_file_gives_none_by_default(path: Path) -> None:
    assert atomic_store.open(path).value is None


def test_default_is_copied_not_shared(path: Path) -> None:
    default: list[str] = []
    first = atomic_store.open(path, default=default)
    first.value.append("x")
    assert default == []
    assert atomic_store.open(path, default=default).value == []


def test_exception_in_with_writes_nothing_and_restores_value(path: Path) -> None:
    with atomic_store.open(path, default=["before"]) as store:
        pass
    with pytest.raises(ZeroDivisionError), store:
        store.value.append("partial")
        _ = 1 / 0
    assert json.loads(path.read_text()) == ["before"]
    assert store.value == ["before"]
    assert store.level == 0


def test_reentrancy_default_every_exit_writes(path: Path) -> None:
    path.write_text('"before"')
    manager = atomic_store.open(path, default=[])
    with manager as store:
        store.value = "outer"
        with manager as inner:
            inner.value = "inner"
            assert json.loads(path.read_text()) == "before"
        assert json.loads(path.read_text()) == "inner"
        store.value = "outer again"
    assert json.loads(path.read_text()) == "outer again"


def test_reentrancy_ignore_inner_exits(path: Path) -> None:
    path.write_text('"before"')
    manager = atomic_store.open(path, default=[], ignore_inner_exits=True)
    with manager as store:
        store.value = "outer"
        with manager as inner:
            inner.value = "inner"
        assert json.loads(path.read_text()) == "before"
        store.value = "outer"
    assert json.loads(path.read_text()) == "outer"


def test_inner_exception_writes_nothing(path: Path) -> None:
    manager = atomic_store.open(path, default=0)
    with manager as store:
        store.value = 1
        with pytest.raises(KeyError), manager:
            store.value = 2
            raise KeyError("x")
        assert not path.exists()
    assert json.loads(path.read_text()) == 2  # the outer block decided to keep it


def test_exit_without_enter_is_an_error(path: Path) -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        atomic_store.open(path).__exit__(None, None, None)


def test_separate_opens_are_independent(path: Path) -> None:
    first = atomic_store.open(path, default=0)
    second = atomic_store.open(path, default=0)
    first.value = 1
    first.commit()
    second.value = 2
    second.commit()
    assert json.loads(path.read_text()) == 2
    first.reload()
    assert first.value == 2


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe"])
def test_empty_or_corrupt_file_is_reported_and_kept(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=str(path.name)):
        atomic_store.open(path, default=[])
    assert path.read_bytes() == content


def test_unserialisable_value_leaves_the_file(path: Path) -> None:
    store = atomic_store.open(path, default=[1])
    store.commit()
    store.value = {1, 2}
    with pytest.raises(InvalidValueError, match="cannot serialise"):
        store.commit()
    assert json.loads(path.read_text()) == [1]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_json_is_utf8_and_keeps_order(path: Path) -> None:
    value = {"z": 1, "a": "é€😀", "m": [3, 2, 1]}
    with atomic_store.open(path, dump_kwargs={"ensure_ascii": False}) as store:
        store.value = value
    assert path.read_bytes().decode("utf-8") == json.dumps(value, ensure_ascii=False)
    assert list(atomic_store.open(path).value) == ["z", "a", "m"]


def test_format_tweaks_are_passed(path: Path) -> None:
    with atomic_store.open(path, dump_kwargs={"separators": (",", ":")}) as store:
        store.value = {"a": [1, 2]}
    assert path.read_text() == '{"a":[1,2]}'
    with atomic_store.open(path, dump_kwargs={"indent": 2, "sort_keys": True}) as store:
        store.value = {"b": 1, "a": 2}
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}'
    loaded = atomic_store.open(path, load_kwargs={"object_pairs_hook": list})
    assert loaded.value == [("a", 2), ("b", 1)]


@pytest.mark.parametrize("fmt", ["json", json, None])
def test_json_spellings(path: Path, fmt: Any) -> None:
    with atomic_store.open(path, format=fmt) as store:
        store.value = [1, "two"]
    assert json.loads(path.read_bytes()) == [1, "two"]
    assert atomic_store.open(path, format=fmt).value == [1, "two"]


@pytest.mark.parametrize("fmt", ["pickle", pickle])
def test_pickle(path: Path, fmt: Any) -> None:
    with atomic_store.open(path, format=fmt) as store:
        store.value = {"set": {1, 2}, "bytes": b"\x00"}
    assert pickle.loads(path.read_bytes()) == {"set": {1, 2}, "bytes": b"\x00"}
    assert atomic_store.open(path, format=fmt).value["set"] == {1, 2}


def test_msgpack(path: Path) -> None:
    with atomic_store.open(path, format="msgpack") as store:
        store.value = {"a": [1, b"\x01"]}
    assert msgpack.unpackb(path.read_bytes()) == {"a": [1, b"\x01"]}
    assert atomic_store.open(path, format="msgpack").value == {"a": [1, b"\x01"]}


def test_missing_optional_format_names_the_extra(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "bson", None)
    with pytest.raises(MissingDependencyError, match="bson"):
        atomic_store.open(path, format="bson")


@pytest.mark.parametrize("fmt", ["yaml", 42, object()])
def test_unknown_format(path: Path, fmt: Any) -> None:
    with pytest.raises(UnknownFormatError):
        atomic_store.open(path, format=fmt)


class Reversed(atomic_store.AbstractFormatBstr):
    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []

    def dumps(self, obj: Any, **kwargs: Any) -> bytes:
        self.kwargs.append(kwargs)
        return str(obj).encode()[::-1]

    def loads(self, bstr: bytes | str, **kwargs: Any) -> Any:
        assert isinstance(bstr, bytes)
        self.kwargs.append(kwargs)
        return bstr[::-1].decode()


def test_custom_string_format(path: Path) -> None:
    fmt = Reversed()
    with atomic_store.open(path, format=fmt, dump_kwargs={"d": 1}, load_kwargs={"l": 2}) as s:
        s.value = "abc"
    assert path.read_bytes() == b"cba"
    assert atomic_store.open(path, format=fmt, load_kwargs={"l": 2}).value == "abc"
    assert fmt.kwargs == [{"d": 1}, {"l": 2}]


class Lines(atomic_store.AbstractFormatFile):
    def dump(self, obj: Any, fp: IO[Any], **kwargs: Any) -> None:
        assert isinstance(fp, io.TextIOBase)
        fp.write("\n".join(obj))

    def load(self, fp: IO[Any], **kwargs: Any) -> Any:
        assert isinstance(fp, io.TextIOBase)
        return fp.read().split("\n")


class BinaryLength(atomic_store.AbstractFormatFile):
    def dump(self, obj: Any, fp: IO[Any], **kwargs: Any) -> None:
        fp.write(len(obj).to_bytes(2, "big") + obj)

    def load(self, fp: IO[Any], **kwargs: Any) -> Any:
        size = int.from_bytes(fp.read(2), "big")
        return fp.read(size)


def test_custom_file_formats_text_and_binary(path: Path) -> None:
    with atomic_store.open(path, format=Lines(), is_binary=False) as store:
        store.value = ["é", "b"]
    assert path.read_bytes() == "é\nb".encode()
    assert atomic_store.open(path, format=Lines(), is_binary=False).value == ["é", "b"]
    with atomic_store.open(path, format=BinaryLength()) as store:
        store.value = b"\x00\x01"
    assert path.read_bytes() == b"\x00\x02\x00\x01"


def test_wrap_binary_format_and_base_classes(path: Path) -> None:
    wrapped = atomic_store.WrapBinaryFormat(pickle)
    buffer = io.BytesIO()
    wrapped.dump([1], buffer)
    assert wrapped.load(io.BytesIO(buffer.getvalue())) == [1]
    with pytest.raises(NotImplementedError):
        atomic_store.AbstractFormatBstr().dumps(1)
    with pytest.raises(NotImplementedError):
        atomic_store.AbstractFormatFile().load(io.BytesIO())


def test_permissions_kept_and_new_files_follow_umask(path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_store.open(path, default=1).commit()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        atomic_store.open(path).commit()
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_full_disk_keeps_the_old_state(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atomic_store.open(path, default="old").commit()

    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_write", full)
    store = atomic_store.open(path)
    store.value = "new"
    with pytest.raises(OSError, match="No space"):
        store.commit()
    monkeypatch.undo()
    assert atomic_store.open(path).value == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_missing_parent_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_store.open(tmp_path / "missing" / "x.json", default=1).commit()
    assert not (tmp_path / "missing").exists()


def test_read_only_filesystem(path: Path, read_only_filesystem: ReadOnly) -> None:
    atomic_store.open(path, default=1).commit()
    store = atomic_store.open(path)
    store.value = 2
    with read_only_filesystem(), pytest.raises(OSError, match="Read-only"):
        store.commit()
    assert atomic_store.open(path).value == 1


def test_lock_rereads_on_entry(path: Path) -> None:
    store = atomic_store.open(path, default=0, lock=True)
    other = atomic_store.open(path, default=0)
    other.value = 5
    other.commit()
    with store:
        assert store.value == 5
        store.value += 1
    assert atomic_store.open(path).value == 6


def test_lock_is_held_for_the_block(path: Path) -> None:
    holder = atomic_store.open(path, default=0, lock=True)
    waiter = atomic_store.open(path, default=0, lock=True, lock_timeout=0.05)
    with holder:
        with pytest.raises(LockTimeoutError):
            waiter.__enter__()
        assert waiter.level == 0
    with waiter:
        waiter.value = 1
    assert atomic_store.open(path).value == 1


def _increment(path: str, times: int) -> None:
    store = atomic_store.open(path, default=0, lock=True)
    for _ in range(times):
        with store:
            store.value += 1


def test_locked_processes_never_lose_an_update(path: Path) -> None:
    processes, times = 4, 750
    context = multiprocessing.get_context("forkserver")
    workers = [
        context.Process(target=_increment, args=(str(path), times)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert atomic_store.open(path).value == processes * times


def test_repr_and_attributes(path: Path) -> None:
    store = atomic_store.open(path, format="pickle")
    assert store.is_binary and store.format is pickle and store.path == str(path)
    assert "state.json" in repr(store)
