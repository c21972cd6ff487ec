"""Shared helpers for the benchmark scripts: timing, interleaved reps, ratio tables.

Numbers on this 2-core VM move 1.3-7x between runs, so
every script runs ours and the peers in the same process, rotates their order each rep,
and reports the median of per-rep ratios with min..max.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Results:
    """ops/s per (phase, peer) and rep, plus helpers to print ratios."""

    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, phase: str, peer: str, ops: int, seconds: float) -> None:
        self.rates.setdefault((phase, peer), []).append(ops / seconds if seconds else float("inf"))

    def median(self, phase: str, peer: str) -> float:
        return statistics.median(self.rates[(phase, peer)])

    def ratio(self, phase: str, ours: str, peer: str) -> tuple[float, float, float]:
        """Median, min and max of per-rep ratios ours/peer (higher is better for ours)."""
        pairs = zip(self.rates[(phase, ours)], self.rates[(phase, peer)], strict=True)
        ratios = [a / b for a, b in pairs]
        return statistics.median(ratios), min(ratios), max(ratios)

    def print_table(self, phases: Sequence[str], peers: Sequence[str]) -> None:
        width = max(len(p) for p in peers) + 2
        print("ops/s (median over reps)".ljust(width) + "".join(f"{ph:>14}" for ph in phases))
        for peer in peers:
            cells = []
            for phase in phases:
                cells.append(
                    f"{self.median(phase, peer):>14,.0f}"
                    if (phase, peer) in self.rates
                    else " " * 14
                )
            print(peer.ljust(width) + "".join(cells))

    def print_ratio(
        self, label: str, phase: str, ours: str, peer: str, target: float | None
    ) -> None:
        median, low, high = self.ratio(phase, ours, peer)
        verdict = "" if target is None else ("  ok" if median >= target else "  BELOW TARGET")
        goal = "" if target is None else f" (target >= {target})"
        print(f"  {label:<52} {median:6.2f}  [{low:.2f} .. {high:.2f}]{goal}{verdict}")


def timed(action: Callable[[], object]) -> float:
    """Seconds taken by one call of *action*."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def timed_io(action: Callable[[], object]) -> float:
    """:func:`timed` for disk work, started once nothing is left dirty in the page cache.

    A peer that writes without fsync (sqlitedict runs ``synchronous=OFF``) leaves its
    data to the kernel's writeback, and on ext4 the next fsync, by whichever peer runs
    next, waits for it. The untimed ``os.sync()`` makes each peer pay only for its own
    writes.
    """
    os.sync()
    return timed(action)


def env_int(name: str, default: int) -> int:
    """An integer from the environment (to shrink runs for a quick look)."""
    return int(os.environ.get(name, default))


def rotate(items: Sequence[T], rep: int) -> list[T]:
    """*items* rotated by *rep*, so each peer runs first in some rep."""
    shift = rep % len(items)
    return list(items[shift:]) + list(items[:shift])
