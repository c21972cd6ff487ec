"""Documented behaviour that code written for the original APIs relies on.

Each test names the promise it checks: dotted event filters, ``disconnect`` of an unknown
listener, background emits that can be joined, ``map`` that runs everything even when its
iterator is dropped, public ``name`` attributes, and the parameter names of a few helpers.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import io
import re
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

from storekeeper import DictMemoryStore, atomic_store
from storekeeper.composite import sha1_hasher
from storekeeper.concurrent import (
    Asynchronizer,
    DelayedAsynchronizer,
    EnhancedThreadPoolExecutor,
    Serializer,
    SerializingAsynchronizer,
    SynchronousExecutor,
)
from storekeeper.errors import MissingDependencyError
from storekeeper.events import BaseEvent, EventManager
from storekeeper.store import AbstractStore, StoreModificationEvent
from storekeeper.store.utils import BufferIteratorIO

TIMEOUT = 10


class Payload:
    def __init__(self, real: float, imag: float) -> None:
        self.real = real
        self.imag = imag


class PayloadEvent(BaseEvent):
    pass


# -- events --------------------------------------------------------------------------------
def test_filters_follow_dotted_attribute_paths() -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(PayloadEvent, seen.append, filter={"payload.real": 0})
    zero, one = PayloadEvent(payload=Payload(0, 1)), PayloadEvent(payload=Payload(1, 0))
    for event in (zero, one, PayloadEvent(payload=None), PayloadEvent()):
        manager.emit(event)
    assert seen == [zero]  # a path with a missing step does not pass


def test_dotted_filters_combine_with_plain_names_and_go_deep() -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(
        PayloadEvent, seen.append, filter={"kind": "c", "payload.real.imag": 0, "payload.imag": 2}
    )
    match = PayloadEvent(kind="c", payload=Payload(5 + 0j, 2))  # type: ignore[arg-type]
    manager.emit(match)
    manager.emit(PayloadEvent(kind="d", payload=Payload(5 + 0j, 2)))  # type: ignore[arg-type]
    manager.emit(PayloadEvent(kind="c", payload=Payload(5 + 1j, 2)))  # type: ignore[arg-type]
    assert seen == [match]


@pytest.mark.parametrize(("name", "error"), [("payload..real", ValueError), (3, TypeError)])
def test_malformed_filter_keys_are_refused_at_connect(name: Any, error: type[Exception]) -> None:
    manager = EventManager()
    with pytest.raises(error):
        manager.connect(PayloadEvent, print, filter={name: 0})
    assert not manager.has_listeners(PayloadEvent)


def test_disconnecting_a_listener_that_is_not_connected_raises_key_error() -> None:
    manager = EventManager()
    seen: list[Any] = []
    with pytest.raises(KeyError):
        manager.disconnect(BaseEvent, seen.append)
    manager.connect(PayloadEvent, seen.append)
    with pytest.raises(KeyError):
        manager.disconnect(BaseEvent, seen.append)  # connected, but to another class
    manager.disconnect(PayloadEvent, seen.append)
    with pytest.raises(KeyError):
        manager.disconnect(PayloadEvent, seen.append)  # already gone


def test_background_emit_can_be_joined_like_a_thread() -> None:
    manager = EventManager()
    release = threading.Event()
    delivered: list[Any] = []

    def slow(event: BaseEvent) -> None:
        release.wait(TIMEOUT)
        delivered.append(event)

    manager.connect(BaseEvent, slow)
    event = BaseEvent()
    handle = manager.emit(event, block=False)
    assert handle is not None
    handle.join(0.01)  # times out quietly, as Thread.join does
    assert handle.is_alive()
    release.set()
    handle.join()
    assert not handle.is_alive()
    assert delivered == [event]
    assert handle.result(TIMEOUT) is None  # still a future too
    manager.shutdown()


# -- executors and schedulers ----------------------------------------------------------------
def test_dropping_the_map_iterator_still_runs_every_call() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def job(n: int) -> None:
        started.set()
        release.wait(TIMEOUT)
        ran.append(n)

    with EnhancedThreadPoolExecutor(max_workers=1) as executor:
        results = executor.map(job, range(4))
        assert started.wait(TIMEOUT)
        del results  # fire and forget, as with the standard library's executors
        gc.collect()
        release.set()
    assert ran == [0, 1, 2, 3]


def test_executors_and_schedulers_have_a_public_name() -> None:
    with EnhancedThreadPoolExecutor(max_workers=1, name="loader") as named:
        assert named.name == "loader"
        assert named.submit(threading.current_thread).result(TIMEOUT).name == "loaderWorker-1"
    with EnhancedThreadPoolExecutor(max_workers=1) as unnamed:
        assert unnamed.name == "EnhancedThreadPoolExecutor"
    inline = SynchronousExecutor()
    assert inline.name == "SynchronousExecutor"
    assert SynchronousExecutor(name="inline").name == "inline"
    for scheduler in (
        Asynchronizer(inline, name="a"),
        DelayedAsynchronizer(inline, 0.0, name="a"),
        Serializer(inline, name="a"),
        SerializingAsynchronizer(inline, name="a"),
    ):
        assert scheduler.name == "a"
    assert Serializer(inline).name == "Serializer"


# -- helpers' parameter names ----------------------------------------------------------------
def test_buffer_iterator_io_read_takes_buffer_size() -> None:
    stream = BufferIteratorIO(iter([b"abc", b"def"]))
    assert stream.read(buffer_size=4) == b"abcd"
    assert stream.read(buffer_size=-1) == b"ef"
    assert "buffer_size" in inspect.signature(BufferIteratorIO.read).parameters


def test_buffer_iterator_io_still_works_as_a_file() -> None:
    stream = BufferIteratorIO(iter([b"abc", b"def"]))
    assert io.BufferedReader(stream).read() == b"abcdef"  # positional size, readinto


def test_sha1_hasher_takes_s() -> None:
    assert sha1_hasher(s=b"secret") == hashlib.sha1(b"secret").digest()


# -- the bson format -------------------------------------------------------------------------
def test_the_extra_named_for_bson_exists_and_provides_bson(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bson", None)
    with pytest.raises(MissingDependencyError) as missing:
        atomic_store.open(tmp_path / "v.bson", format="bson")
    extra = re.search(r"storekeeper\[(\w+)\]", str(missing.value))
    assert extra is not None
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    requirements = pyproject["project"]["optional-dependencies"][extra.group(1)]
    assert any(re.match(r"pymongo\b", requirement) for requirement in requirements)


def test_bson_round_trips_through_a_file(tmp_path: Path) -> None:
    import bson

    path = tmp_path / "v.bson"
    with atomic_store.open(path, format="bson", default={}) as store:
        store.value = {"a": [1, b"\x01"], "b": {"c": "d"}}
    # pymongo's bson decodes with decode(); the standalone bson package (which a benchmark
    # peer installs over it) with loads().
    decode = getattr(bson, "decode", None) or bson.loads
    assert decode(path.read_bytes()) == {"a": [1, b"\x01"], "b": {"c": "d"}}
    assert atomic_store.open(path, format="bson").value == {"a": [1, b"\x01"], "b": {"c": "d"}}


# -- event classes of the default implementations ---------------------------------------------
def test_the_default_update_metadata_emits_an_update_event() -> None:
    class DefaultUpdate(DictMemoryStore):
        update_metadata = AbstractStore.update_metadata  # set_metadata inside a transaction

    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreModificationEvent, seen.append)
    with DefaultUpdate(manager) as store:
        store.set("k", (b"", {"a": 1}))
        store.update_metadata("k", {"b": 2})
        store.set_metadata("k", {"c": 3})
    assert [(type(e).__name__, e.metadata) for e in seen] == [
        ("StoreSetEvent", {"a": 1}),
        ("StoreUpdateEvent", {"a": 1, "b": 2}),
        ("StoreSetEvent", {"c": 3}),
    ]
