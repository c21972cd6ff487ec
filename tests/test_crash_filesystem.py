"""FileSystemStore survives writer processes killed with SIGKILL at random points.

Each round starts writer processes (from a fork server that has the store imported, so a
round costs milliseconds), lets them write, acknowledging every write that returned
through a pipe, and kills them with SIGKILL after a random number of acknowledgements
plus a random delay. The parent then opens the store afresh and checks that every
acknowledged write is there (or superseded by a later one), that no value is torn (data
matches the checksum in its metadata) and that each writer's 3-key transactions are
all-or-nothing. The same store is reused across rounds, so each round also recovers
from the previous round's crash.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import pytest

from storekeeper.backends._fs_journal import JOURNAL_NAME, STAGE_PREFIX
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.testing.crash import run_crash_rounds

SOAK = os.environ.get("STOREKEEPER_SOAK") == "1"
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["storekeeper.backends.filesystem", __name__])
SIZES = (0, 100, 5000, 70_000, 300_000)  # inline and data-file values
WAIT = 60.0


def _tx_keys(writer: int) -> list[str]:
    return [f"w{writer}/tx/{name}" for name in ("a", "B", "ç")]


def _data(writer: int, generation: int) -> bytes:
    size = random.Random(generation * 31 + writer).choice(SIZES)
    return (f"{writer}:{generation}:".encode() * (size // 4 + 1))[:size]


def _metadata(key: str, data: bytes, generation: int) -> dict[str, object]:
    return {"key": key, "g": generation, "sha": hashlib.sha256(data).hexdigest()}


def _write_one(store: FileSystemStore, writer: int, generation: int) -> tuple[str, list[str]]:
    """One step of a writer; returns the kind of write and the keys it touched."""
    kind = generation % 4
    if kind == 0:
        keys = _tx_keys(writer)
        with store.transaction("crash test"):
            for key in keys:
                data = _data(writer, generation)
                store.set(key, (data, _metadata(key, data, generation)))
        return "set", keys
    key = f"w{writer}/s{generation % 3}"
    if kind == 2 and store.exists(key):
        store.update_metadata(key, {"g": generation})
        return "set", [key]
    if kind == 3:
        key = f"w{writer}/toggle"
        if (generation // 4) % 2:
            if store.exists(key):
                store.delete(key)
            return "delete", [key]
    data = _data(writer, generation)
    store.set(key, (data, _metadata(key, data, generation)))
    return "set", [key]


def _writer(path: str, durable: bool, writer: int, generation: int, conn: Connection) -> None:
    store = FileSystemStore(path, durable=durable)
    store.connect()
    conn.send(("ready", 0, []))
    while True:
        kind, keys = _write_one(store, writer, generation)
        conn.send((kind, generation, keys))
        generation += 1


@dataclass
class _Expectations:
    """The last acknowledged write of every key: ``(generation, present)``.

    ``present`` is ``None`` for a set of a toggled key: the unacknowledged write that
    followed it may have been a delete that landed.
    """

    last: dict[str, tuple[int, bool | None]] = field(default_factory=dict)
    acknowledged: int = 0

    def record(self, kind: str, generation: int, keys: list[str]) -> None:
        self.acknowledged += 1
        for key in keys:
            toggled = key.endswith("/toggle") and kind == "set"
            self.last[key] = (generation, None if toggled else kind == "set")


def _verify(path: str, expected: _Expectations, writers: int) -> list[str]:
    problems = []
    with FileSystemStore(path) as store:
        for key, (generation, present) in expected.last.items():
            stored = store.get_metadata(key)["g"] if store.exists(key) else None
            if present is not False and (stored or generation) < generation:
                problems.append(f"{key!r} went back from g={generation} to g={stored}")
            if present and stored is None:
                problems.append(f"acknowledged write of {key!r} g={generation} is lost")
            if present is False and stored is not None and stored <= generation:
                problems.append(f"acknowledged delete of {key!r} g={generation} undone")
        for key in store.query_keys():
            value = store.get(key)
            with value.data as stream:
                data = stream.read()
            metadata = value.metadata
            if metadata["key"] != key or hashlib.sha256(data).hexdigest() != metadata["sha"]:
                problems.append(f"{key!r} is torn: its data does not match its metadata")
        for writer in range(writers):
            present = [store.get_metadata(k)["g"] for k in _tx_keys(writer) if store.exists(k)]
            if present and (len(present) != 3 or len(set(present)) != 1):
                problems.append(f"writer {writer}'s transaction keys disagree: {present}")
    leftovers = [n for n in os.listdir(Path(path, "keys")) if n.startswith(STAGE_PREFIX)]
    if leftovers or Path(path, JOURNAL_NAME).exists():
        problems.append(f"recovery left a journal or staged files: {leftovers}")
    return problems


def _next_generations(path: str, writers: int) -> list[int]:
    highest = [0] * writers
    with FileSystemStore(path) as store:
        for _, metadata in store.query(select=["g", "key"]):
            writer = int(metadata["key"].split("/")[0][1:])
            highest[writer] = max(highest[writer], metadata["g"])
    return [generation + 1 for generation in highest]


def _collect(conns: list[Connection], count: int, expected: _Expectations) -> None:
    """Receive *count* acknowledgements from any of *conns* (fewer if all are gone)."""
    while count > 0 and conns:
        ready = wait(conns, WAIT)
        assert ready, "no writer made progress within the timeout"
        for conn in ready:
            assert isinstance(conn, Connection)
            try:
                kind, generation, keys = conn.recv()
            except EOFError:
                conns.remove(conn)
                continue
            expected.record(kind, generation, keys)
            count -= 1


def _run_round(
    path: str, durable: bool, writers: int, rng: random.Random, expected: _Expectations
) -> None:
    generations = _next_generations(path, writers)
    processes, conns = [], []
    for writer in range(writers):
        receiver, sender = CONTEXT.Pipe(duplex=False)
        process = CONTEXT.Process(
            target=_writer, args=(path, durable, writer, generations[writer], sender)
        )
        process.start()
        sender.close()
        assert receiver.poll(WAIT) and receiver.recv()[0] == "ready"
        processes.append(process)
        conns.append(receiver)
    for process in rng.sample(processes, len(processes)):
        _collect(list(conns), rng.randint(0, 5), expected)
        time.sleep(rng.uniform(0.0, 0.004))  # the kill lands at a random point of a write
        process.kill()  # SIGKILL
        process.join(WAIT)
        assert process.exitcode == -signal.SIGKILL
    for conn in conns:
        _collect([conn], 1 << 30, expected)  # whatever was acknowledged before the kill
        conn.close()


def _crash_rounds(path: Path, rounds: int, *, durable: bool, writers: int) -> _Expectations:
    init_shared_store(path)
    rng = random.Random(rounds * 1009 + writers + durable)
    expected = _Expectations()
    for number in range(rounds):
        _run_round(str(path), durable, writers, rng, expected)
        problems = _verify(str(path), expected, writers)
        assert problems == [], f"round {number}: {problems}"
    return expected


@pytest.mark.crash
@pytest.mark.parametrize("durable", [True, False])
def test_a_killed_writer_loses_nothing_acknowledged(tmp_path: Path, durable: bool) -> None:
    expected = _crash_rounds(tmp_path / "store", 120, durable=durable, writers=1)
    assert expected.acknowledged > 120
    with CONTEXT.Pool(1) as pool:  # and a process that never wrote sees the same
        assert pool.apply(_verify, (str(tmp_path / "store"), expected, 1)) == []


@pytest.mark.crash
def test_concurrent_writers_killed_one_after_the_other(tmp_path: Path) -> None:
    expected = _crash_rounds(tmp_path / "store", 40, durable=True, writers=2)
    assert expected.acknowledged > 80
    assert {key.split("/")[0] for key in expected.last} == {"w0", "w1"}


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="thousands of kills: only under make soak")
def test_killed_writers_soak(tmp_path: Path) -> None:
    _crash_rounds(tmp_path / "one", 2000, durable=True, writers=1)
    _crash_rounds(tmp_path / "two", 1000, durable=True, writers=2)


@pytest.mark.crash
def test_the_shared_crash_harness_through_a_file_url(tmp_path: Path) -> None:
    init_shared_store(tmp_path / "store")
    report = run_crash_rounds(f"file://{tmp_path / 'store'}", rounds=20)
    assert report.problems == []
    assert report.rounds == 20 and report.acknowledged > 0
