"""atomic_write, atomic_store commits and save_checkpoint survive SIGKILL at any moment.

A writer process (forked from a server that has storekeeper imported) rewrites one file
in a loop with ever-increasing generations and acknowledges each write that returned
through a pipe. The parent kills it after a random number of acknowledgements plus a
random delay, then reads the file itself: it must parse, be self-consistent (its
checksum matches) and hold either the last acknowledged generation or the one that was
being written when the kill landed; never an older one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from storekeeper import atomic_store
from storekeeper.files import atomic_write
from storekeeper.sessions import SessionStorage
from storekeeper.testing.crash import kill_writer, start_writer

SOAK = os.environ.get("STOREKEEPER_SOAK") == "1"
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload([__name__])
SIZES = (0, 10, 4000, 70_000, 400_000, 1_200_000)  # the last takes the large-checkpoint path
WAIT = 60.0


def _blob(generation: int) -> str:
    size = random.Random(generation).choice(SIZES)
    return (f"{generation}." * (size // 2 + 1))[:size]


def _record(generation: int) -> dict[str, object]:
    blob = _blob(generation)
    return {"g": generation, "blob": blob, "sha": hashlib.sha256(blob.encode()).hexdigest()}


def _write_file(path: str, generation: int) -> None:
    atomic_write(path, json.dumps(_record(generation)).encode())


def _read_file(path: str) -> object:
    with open(path, "rb") as handle:
        return json.loads(handle.read())


def _commit_store(path: str, generation: int) -> None:
    with atomic_store.open(path, default={}) as store:
        store.value = _record(generation)


def _read_store(path: str) -> object:
    return atomic_store.open(path).value


def _save_checkpoint(path: str, generation: int) -> None:
    SessionStorage(path).save_checkpoint(json.dumps(_record(generation)).encode())


def _load_checkpoint(path: str) -> object:
    return json.loads(SessionStorage(path).load_checkpoint())


KINDS: dict[str, tuple[Callable[[str, int], None], Callable[[str], object]]] = {
    "atomic_write": (_write_file, _read_file),
    "atomic_store": (_commit_store, _read_store),
    "checkpoint": (_save_checkpoint, _load_checkpoint),
}


def _writer(kind: str, path: str, generation: int, acks: Connection) -> None:
    write = KINDS[kind][0]
    acks.send("ready")
    while True:
        write(path, generation)
        acks.send(generation)
        generation += 1


def _verify(kind: str, path: str, acknowledged: int, attempted: int) -> list[str]:
    value = KINDS[kind][1](path)
    if not isinstance(value, dict):
        return [f"{kind}: unexpected content {value!r:.80}"]
    generation = value["g"]
    if not acknowledged <= generation <= attempted:
        return [f"{kind}: holds g={generation}, acknowledged {acknowledged}"]
    if hashlib.sha256(value["blob"].encode()).hexdigest() != value["sha"]:
        return [f"{kind}: g={generation} is torn"]
    return []


def _round(kind: str, path: str, generation: int, rng: random.Random) -> int:
    """One writer life; returns the last acknowledged generation (or generation - 1)."""
    process, receiver = start_writer(CONTEXT, _writer, (kind, path, generation))
    last = generation - 1
    for _ in range(rng.randint(0, 2)):
        if not receiver.poll(WAIT):
            break
        last = receiver.recv()
    time.sleep(rng.uniform(0.0, 0.003))
    return max([last, *kill_writer(process, receiver)])


def _crash_rounds(kind: str, target: str, rounds: int) -> int:
    rng = random.Random(rounds * 7 + len(kind))
    KINDS[kind][0](target, 0)
    acknowledged, kills = 0, 0
    for number in range(rounds):
        acknowledged = _round(kind, target, acknowledged + 1, rng)
        # The writer may have finished the write after the last acknowledgement.
        problems = _verify(kind, target, acknowledged, acknowledged + 1)
        assert problems == [], f"round {number}: {problems}"
        acknowledged = KINDS[kind][1](target)["g"]  # type: ignore[index]
        kills += 1
    leftovers = [n for n in os.listdir(os.path.dirname(target)) if n.endswith(".tmp")]
    assert len(leftovers) <= rounds  # temp files of killed writers, never the target
    return kills


def _target(kind: str, tmp_path: Path) -> str:
    if kind == "checkpoint":
        return SessionStorage.create(tmp_path).location
    return str(tmp_path / "state.json")


@pytest.mark.crash
@pytest.mark.parametrize("kind", list(KINDS))
def test_killed_writer_leaves_old_or_new_never_torn(tmp_path: Path, kind: str) -> None:
    assert _crash_rounds(kind, _target(kind, tmp_path), 100) == 100  # thousands in soak


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="thousands of kills: only under make soak")
@pytest.mark.parametrize("kind", list(KINDS))
def test_killed_writer_soak(tmp_path: Path, kind: str) -> None:
    assert _crash_rounds(kind, _target(kind, tmp_path), 3000) == 3000
