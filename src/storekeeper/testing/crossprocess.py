"""Conformance checks between processes: multi-key transactions seen from outside.

:class:`CrossProcessTests` is a mixin of :class:`storekeeper.testing.store.StoreTests`.
It applies to the stores whose ``capabilities`` declare ``cross_process`` and
``atomic_transactions``; their test class says how another process opens the same store
by returning a URL from
:meth:`CrossProcessTests.store_url` or, for stores no URL can describe (composites,
unusual options), a picklable opener from :meth:`CrossProcessTests.process_opener`
(see :func:`same_store`). A store that declares ``cross_process`` without either fails.

The check (:func:`observe_commits`): a reader process, connected before anything else
happens, reads every key of a group again and again while writer processes commit
transactions that set the whole group to one new generation. The writers are frozen
with SIGSTOP at random moments (their commit may be half done) and finally killed with
SIGKILL. The reader must never see a mix of generations, and must keep answering while
a writer is frozen or dead, without any other process finishing the writer's work.

A pass reads the keys in one order, the next pass in the reverse order. Generations
only grow, so in a store whose transactions are atomic each pass sees generations that
never decrease in reading order (a later read cannot see an older state); a
transaction applied key by key shows up as a decrease in one of the two orders. While
the writer is frozen or dead, the state must moreover be one generation for every key.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from storekeeper.errors import LockTimeoutError
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, open_store

__all__ = ["CrossProcessTests", "Observation", "observe_commits", "same_store"]

SOAK = os.environ.get("STOREKEEPER_SOAK") == "1"
KEYS = [f"xp/{name}" for name in ("a", "B", "c/d", "é", "e", "f")]
_CONTEXT = multiprocessing.get_context("forkserver")
_WAIT = 20.0  # seconds a reader may take for one pass before it counts as hung

#: Opens the store under test in another process; must be picklable.
Opener = Callable[[], AbstractStore]


def same_store(test: object, tmp_path: Path) -> Opener:
    """An opener that builds the store of *test*'s class on *tmp_path* in any process.

    For test classes whose ``create_store(tmp_path, ...)`` opens the same data each
    time; the class must be importable by its module name in the child process.
    """
    return functools.partial(_rebuild, type(test), str(tmp_path))


def _rebuild(cls: type[Any], path: str) -> AbstractStore:
    store: AbstractStore = cls().create_store(Path(path), EventManager())
    return store


def _data(key: str, generation: int) -> bytes:
    size = random.Random(f"{key}:{generation}").choice((0, 10, 700, 3000))
    return (f"{generation}:{key}|".encode() * (size // 8 + 1))[:size]


def _write_generation(store: AbstractStore, generation: int) -> None:
    with store.transaction("cross-process check"):
        for key in KEYS:
            store.set(key, (_data(key, generation), {"g": generation}))


def _writer_main(opener: Opener, generation: int, conn: Connection) -> None:
    """Commit generation after generation until killed."""
    store = opener()
    store.connect()
    conn.send("ready")
    while True:
        _write_generation(store, generation)
        generation += 1


def _read_generations(store: AbstractStore, keys: list[str]) -> list[int]:
    generations = []
    for key in keys:
        value = store.get(key)
        generation = value.metadata["g"]
        with value.data as stream:
            if stream.read() != _data(key, generation):
                raise AssertionError(f"{key!r}: data and metadata of different writes")
        generations.append(generation)
    return generations


def _reader_main(opener: Opener, conn: Connection) -> None:
    """Read the group in alternating orders; answer ``"check"`` with one uniform read."""
    store = opener()
    store.connect()
    conn.send("ready")
    passes = 0
    while True:
        if conn.poll():
            request = conn.recv()
            if request == "stop":
                conn.send(("passes", passes))
                return
            conn.send(("checked", _guarded(store, KEYS)))
            continue
        order = KEYS if passes % 2 == 0 else KEYS[::-1]
        seen = _guarded(store, order)
        if seen == _REFUSED:
            continue
        if isinstance(seen, str):
            conn.send(("problem", f"a read failed: {seen}"))
        elif seen != sorted(seen):
            conn.send(("problem", f"one pass read {dict(zip(order, seen, strict=True))}"))
        passes += 1


#: A read pass the store refused with LockTimeoutError: a clear, bounded answer (SQLite
#: readers must wait for a process stopped while it updates the shared WAL index), not a
#: torn read. Refused passes are counted, not checked.
_REFUSED = "refused"
#: What :func:`_uniform` reports for a refused read while a writer is frozen.
REFUSED_GENERATION = -1


def _guarded(store: AbstractStore, keys: list[str]) -> list[int] | str:
    try:
        return _read_generations(store, keys)
    except LockTimeoutError:
        return _REFUSED
    except Exception as exc:  # reported to the parent, which fails the test
        return f"{type(exc).__name__}: {exc}"


@dataclass
class Observation:
    """What :func:`observe_commits` saw; ``problems`` must be empty."""

    freezes: int = 0
    kills: int = 0
    passes: int = 0
    refusals: int = 0
    problems: list[str] = field(default_factory=list)


class _Reader:
    def __init__(self, opener: Opener) -> None:
        self.conn, child_end = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_reader_main, args=(opener, child_end))
        self.process.start()
        child_end.close()
        if not _started(self.conn):
            self.process.kill()
            raise RuntimeError("the reader process did not start")

    def ask(self, request: str, report: Observation) -> Any:
        """Send *request*; collect problems until the answer (``None``: hung)."""
        self.conn.send(request)
        while self.conn.poll(_WAIT):
            kind, answer = self.conn.recv()
            if kind == "problem":
                report.problems.append(answer)
            else:
                return answer
        report.problems.append(f"the reader did not answer {request!r} in {_WAIT} s")
        return None

    def close(self) -> None:
        self.process.kill()
        self.process.join(_WAIT)
        self.conn.close()


def _start_writer(opener: Opener, generation: int) -> multiprocessing.process.BaseProcess:
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    writer = _CONTEXT.Process(target=_writer_main, args=(opener, generation, sender))
    writer.start()
    sender.close()
    if not _started(receiver):
        writer.kill()
        raise RuntimeError("the writer process did not start")
    receiver.close()
    return writer


def _started(conn: Connection) -> bool:
    try:
        return conn.poll(_WAIT * 3) and conn.recv() == "ready"
    except (EOFError, OSError):
        return False  # the process died before it was ready


def _wait_stopped(pid: int) -> None:
    """Return once *pid* is really stopped (``kill`` only queues the signal)."""
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                state = stat.read().rpartition(b")")[2].split()[0]
        except OSError:
            time.sleep(0.05)  # no /proc: give the signal time to land
            return
        if state in (b"T", b"t"):
            return
        time.sleep(0.0002)


def _uniform(reader: _Reader, report: Observation, when: str, *, asks: int = 1) -> int | None:
    """The one generation the reader sees for every key (a problem if not); a refused read
    is asked again up to *asks* times in all, and counts as seeing *REFUSED_GENERATION*."""
    seen = reader.ask("check", report)
    for _ in range(asks - 1):
        if seen != _REFUSED:
            break
        report.refusals += 1
        seen = reader.ask("check", report)
    if seen == _REFUSED:
        report.refusals += 1
        return REFUSED_GENERATION
    if seen is None:
        return None
    if isinstance(seen, str) or len(set(seen)) != 1:
        report.problems.append(f"{when}, the reader saw {seen}")
        return None
    generation: int = seen[0]
    return generation


def _writer_round(
    reader: _Reader,
    opener: Opener,
    generation: int,
    freezes: int,
    report: Observation,
    settle: Callable[[], None],
) -> int | None:
    """One writer: frozen *freezes* times, then killed; the generation it left."""
    writer = _start_writer(opener, generation)
    assert writer.pid is not None
    try:
        for _ in range(freezes):
            time.sleep(random.uniform(0.0, 0.004))
            os.kill(writer.pid, signal.SIGSTOP)
            _wait_stopped(writer.pid)
            settle()
            report.freezes += 1
            frozen = _uniform(reader, report, "while the writer was frozen")
            os.kill(writer.pid, signal.SIGCONT)
            if frozen is None:
                return None
        time.sleep(random.uniform(0.0, 0.004))
    finally:
        writer.kill()
        writer.join(_WAIT)
    report.kills += 1
    settle()
    # Once the writer is dead nothing may keep the reader waiting: ask until it answers.
    left = _uniform(reader, report, "after the writer was killed", asks=5)
    if left == REFUSED_GENERATION:
        report.problems.append("after the writer was killed, every read was refused")
        return None
    return left


def observe_commits(
    opener: Opener, *, writers: int, freezes: int, settle: Callable[[], None] = lambda: None
) -> Observation:
    """Run *writers* writer processes one after another against the store *opener*
    opens, each frozen *freezes* times and then killed; see the module documentation.
    *settle* runs each time a writer has been frozen or killed, before the reader is
    asked for a uniform state (see :meth:`CrossProcessTests.settle_stopped_writer`)."""
    report = Observation()
    with opener() as store:
        _write_generation(store, 0)
    reader = _Reader(opener)
    try:
        generation: int | None = 0
        for _ in range(writers):
            assert generation is not None
            generation = _writer_round(reader, opener, generation + 1, freezes, report, settle)
            if generation is None or report.problems:
                break
        passes = reader.ask("stop", report)
        report.passes = passes or 0
    finally:
        reader.close()
    return report


class CrossProcessTests:
    """Mixin of the conformance suite: transactions as other processes see them."""

    def store_url(self, tmp_path: Path) -> str | None:
        """A URL that opens the data of ``create_store(tmp_path, ...)`` in another
        process; ``None`` (the default): no URL can (see :meth:`process_opener`)."""
        return None

    def process_opener(self, tmp_path: Path) -> Opener | None:
        """A picklable callable opening the store under test in another process
        (default: :func:`open_store` of :meth:`store_url`); ``None`` for a store that
        does not declare ``cross_process`` in its capabilities."""
        url = self.store_url(tmp_path)
        return None if url is None else functools.partial(open_store, url)

    def settle_stopped_writer(self) -> None:
        """Wait until a writer process just frozen or killed can change nothing more.

        Nothing to wait for (the default) where the writer's process does all the
        writing. A client-server store overrides it: the server may still be finishing a
        COMMIT the writer sent before it stopped, and that commit may land (whole) after
        the reader was asked for one uniform state."""

    @pytest.mark.crash
    def test_transactions_are_atomic_for_readers_in_other_processes(self, tmp_path: Path) -> None:
        report = self._observe(tmp_path, writers=3, freezes=20)
        assert report.problems == [], report.problems
        assert report.freezes == 60 and report.kills == 3 and report.passes > 0

    @pytest.mark.soak
    @pytest.mark.skipif(not SOAK, reason="thousands of freezes: only under make soak")
    def test_transactions_are_atomic_for_readers_in_other_processes_soak(
        self, tmp_path: Path
    ) -> None:
        report = self._observe(tmp_path, writers=200, freezes=50)
        assert report.problems == [], report.problems

    def _observe(self, tmp_path: Path, *, writers: int, freezes: int) -> Observation:
        create_store = getattr(self, "create_store")  # noqa: B009 (StoreTests defines it)
        with create_store(tmp_path, EventManager()) as store:
            capabilities = store.capabilities  # and the store exists from now on
        if not capabilities.cross_process:
            pytest.skip("the store does not declare cross_process")
        if not capabilities.atomic_transactions:
            pytest.skip(
                "the store does not declare atomic_transactions: a commit is seen key by key"
            )
        opener = self.process_opener(tmp_path)
        if opener is None:
            pytest.fail(
                f"{type(self).__name__}: the store declares cross_process; define store_url "
                "or process_opener so other processes can open it"
            )
        return observe_commits(
            opener, writers=writers, freezes=freezes, settle=self.settle_stopped_writer
        )
