"""Cost of EventManager.emit with 0, 1 and 10 listeners vs blinker's Signal.send.

Interleaved reps, medians of per-rep ratios. Target: emit to one listener no slower
than blinker's send (time ratio ours/blinker <= 1.0).
"""

from __future__ import annotations

import statistics
import timeit

from blinker import Signal

from storekeeper.events import BaseEvent, EventManager

N = 200_000
REPS = 7


class Ping(BaseEvent):
    pass


def _noop(*args: object, **kwargs: object) -> None:
    return None


def ours(listeners: int) -> float:
    manager = EventManager()
    for n in range(listeners):
        manager.connect(Ping, lambda e, n=n: None)
    event = Ping("src")
    return timeit.timeit(lambda: manager.emit(event), number=N) / N


def theirs(listeners: int) -> float:
    signal = Signal()
    receivers = [lambda sender, n=n: None for n in range(listeners)]
    for receiver in receivers:
        signal.connect(receiver, weak=False)
    return timeit.timeit(lambda: signal.send("src"), number=N) / N


def ours_with_event_creation(listeners: int) -> float:
    manager = EventManager()
    for n in range(listeners):
        manager.connect(Ping, lambda e, n=n: None)
    return timeit.timeit(lambda: manager.emit(Ping("src")), number=N) / N


def main() -> None:
    print(f"== emit vs blinker send, {N} calls x {REPS} reps (microseconds per call)")
    for listeners in (0, 1, 10):
        ratios, a, b, c = [], [], [], []
        for _ in range(REPS):
            x, y, z = ours(listeners), theirs(listeners), ours_with_event_creation(listeners)
            a.append(x)
            b.append(y)
            c.append(z)
            ratios.append(x / y)
        target = "  (target <= 1.0)" if listeners == 1 else ""
        verdict = (
            ("  ok" if statistics.median(ratios) <= 1.0 else "  ABOVE TARGET") if target else ""
        )
        print(
            f"  {listeners:>2} listeners: ours {statistics.median(a) * 1e6:.3f} "
            f"(+event creation {statistics.median(c) * 1e6:.3f}), blinker "
            f"{statistics.median(b) * 1e6:.3f}; time ratio {statistics.median(ratios):.2f} "
            f"[{min(ratios):.2f} .. {max(ratios):.2f}]{target}{verdict}"
        )


if __name__ == "__main__":
    main()
