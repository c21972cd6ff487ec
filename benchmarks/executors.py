"""EnhancedThreadPoolExecutor vs the standard ThreadPoolExecutor, in one run.

Two patterns of N trivial tasks (default 100,000), each with 2 and 8 workers:

- batch: submit all N, then gather every result (throughput);
- one-by-one: submit one task and wait for its result, N times (latency).

Target: ours/stdlib ops/s ratio >= 0.9 in every row.
BENCH_REPS sets the interleaved reps, BENCH_N the task count.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate, timed
from storekeeper.concurrent import EnhancedThreadPoolExecutor

PEERS: dict[str, Callable[[int], Executor]] = {
    "stdlib": lambda workers: ThreadPoolExecutor(max_workers=workers),
    "enhanced": lambda workers: EnhancedThreadPoolExecutor(max_workers=workers),
}
TARGET = 0.9


def task() -> None:
    return None


def batch(executor: Executor, count: int) -> None:
    futures = [executor.submit(task) for _ in range(count)]
    for future in futures:
        future.result()


def one_by_one(executor: Executor, count: int) -> None:
    for _ in range(count):
        executor.submit(task).result()


PATTERNS: dict[str, Callable[[Executor, int], None]] = {
    "batch": batch,
    "one-by-one": one_by_one,
}


def main() -> None:
    reps = env_int("BENCH_REPS", 5)
    count = env_int("BENCH_N", 100_000)
    for workers in (2, 8):
        results = Results()
        for rep in range(reps):
            for pattern, run in PATTERNS.items():
                for peer in rotate(list(PEERS), rep):
                    with PEERS[peer](workers) as executor:
                        run(executor, 100)  # start the threads outside the timing
                        results.add(pattern, peer, count, timed(lambda: run(executor, count)))
        print(f"\n== submit + result of {count:,} trivial tasks, {workers} workers x {reps} reps")
        results.print_table(list(PATTERNS), list(PEERS))
        for pattern in PATTERNS:
            results.print_ratio(
                f"{pattern}: enhanced / stdlib ops/s", pattern, "enhanced", "stdlib", TARGET
            )


if __name__ == "__main__":
    main()
