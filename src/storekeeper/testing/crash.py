"""Crash testing for durable stores: kill a writer process with SIGKILL, then verify.

:func:`run_crash_rounds` starts a child process that opens a store by URL and writes in
a loop, sending an acknowledgement line after every write that returned. The parent
kills it at a random moment, opens the store itself and checks that:

- every acknowledged write is still there (or was superseded by a later one);
- no value is torn: each key's data matches the checksum in its metadata;
- each multi-key transaction is all-or-nothing: the keys it wrote agree.

The same store is reused across rounds, so each round also recovers from the previous
round's crash.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from storekeeper.store import AbstractStore, open_store

__all__ = ["CrashReport", "kill_writer", "run_crash_rounds", "start_writer", "writer_main"]

SINGLE_KEYS = [f"single/{n}" for n in range(5)]
TRANSACTION_KEYS = ["tx/a", "tx/b", "tx/c"]

# Writers start from a fork server that has storekeeper imported, so a round costs
# milliseconds rather than an interpreter start-up.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["storekeeper.testing.crash"])
_WAIT = 60.0


def _payload(generation: int) -> bytes:
    size = random.choice((0, 10, 1000, 70_000))
    return (f"{generation}:".encode() + random.randbytes(size))[: max(size, 1)]


def _metadata(data: bytes, generation: int) -> dict[str, object]:
    return {"g": generation, "sha": hashlib.sha256(data).hexdigest()}


def writer_main(url: str, first_generation: int, acks: Connection) -> None:
    """The child's loop: alternate single-key writes and 3-key transactions, forever.

    Sends ``"ready"`` on *acks* once the store is open, then one line per write that
    returned.
    """
    store = open_store(url)
    assert isinstance(store, AbstractStore)
    acks.send("ready")
    generation = first_generation
    while True:
        if generation % 3 == 0:
            with store.transaction("crash test"):
                for key in TRANSACTION_KEYS:
                    data = _payload(generation)
                    store.set(key, (data, _metadata(data, generation)))
            acks.send(f"tx {generation}")
        else:
            key = SINGLE_KEYS[generation % len(SINGLE_KEYS)]
            data = _payload(generation)
            store.set(key, (data, _metadata(data, generation)))
            acks.send(f"set {generation} {key}")
        generation += 1


@dataclass
class CrashReport:
    """What a series of crash rounds saw; ``problems`` must be empty."""

    rounds: int = 0
    acknowledged: int = 0
    problems: list[str] = field(default_factory=list)


def run_crash_rounds(url: str, rounds: int, max_delay: float = 0.1) -> CrashReport:
    """Run *rounds* kill-and-verify rounds against the store at *url*."""
    report = CrashReport()
    acked: dict[str, int] = {}
    generation = 1
    for _ in range(rounds):
        lines = _run_and_kill(url, generation, random.uniform(0.0, max_delay))
        for line in lines:
            generation = max(generation, _record(line, acked) + 1)
        report.acknowledged += len(lines)
        report.problems.extend(_verify(url, acked))
        generation = max(generation, _highest_generation(url) + 1)
        report.rounds += 1
        if report.problems:
            break
    return report


def _run_and_kill(url: str, generation: int, delay: float) -> list[str]:
    child, receiver = start_writer(_CONTEXT, writer_main, (url, generation))
    # The random delay counts from the writer's first write, not from its start-up.
    time.sleep(delay)
    return kill_writer(child, receiver)


def start_writer(
    context: ForkServerContext, target: Callable[..., object], args: tuple[Any, ...]
) -> tuple[BaseProcess, Connection]:
    """Start ``target(*args, acks)`` in a process of *context*; return it and the
    receiving end of *acks* once the writer has sent ``"ready"`` (RuntimeError if not)."""
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, sender))
    child.start()
    sender.close()
    if not _started(receiver):
        child.kill()
        child.join(_WAIT)
        raise RuntimeError(f"writer {target.__name__} did not start (exit {child.exitcode})")
    return child, receiver


def kill_writer(child: BaseProcess, receiver: Connection) -> list[Any]:
    """SIGKILL *child*, reap it, and return every whole message it had sent."""
    child.kill()
    child.join(_WAIT)
    if child.exitcode != -signal.SIGKILL:
        raise RuntimeError(f"writer exited on its own ({child.exitcode})")
    messages = []
    while True:
        try:
            messages.append(receiver.recv())
        except (EOFError, OSError, ValueError):
            break  # the end, or a message the kill cut short: not an acknowledgement
    receiver.close()
    return messages


def _started(receiver: Connection) -> bool:
    try:
        return receiver.poll(_WAIT) and receiver.recv() == "ready"
    except (EOFError, OSError):
        return False


def _record(line: str, acked: dict[str, int]) -> int:
    parts = line.split()
    generation = int(parts[1])
    keys = TRANSACTION_KEYS if parts[0] == "tx" else [parts[2]]
    for key in keys:
        acked[key] = max(acked.get(key, 0), generation)
    return generation


def _verify(url: str, acked: dict[str, int]) -> list[str]:
    problems = []
    with open_store(url) as store:
        for key, generation in acked.items():
            if not store.exists(key):
                problems.append(f"acknowledged write of {key!r} (g={generation}) is lost")
                continue
            stored = store.get_metadata(key)
            if stored["g"] < generation:
                problems.append(f"{key!r} went back from g={generation} to g={stored['g']}")
        for key in store.query_keys():
            data = store.to_bytes(key)
            if hashlib.sha256(data).hexdigest() != store.get_metadata(key)["sha"]:
                problems.append(f"{key!r} is torn: its data does not match its checksum")
        present = [store.get_metadata(k)["g"] for k in TRANSACTION_KEYS if store.exists(k)]
        if present and (len(present) != len(TRANSACTION_KEYS) or len(set(present)) != 1):
            problems.append(f"transaction keys disagree: {present}")
    return problems


def _highest_generation(url: str) -> int:
    with open_store(url) as store:
        return max((m.get("g", 0) for _, m in store.query(select=["g"])), default=0)
