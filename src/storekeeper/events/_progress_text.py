"""What a progress display says: amounts, rates, durations and one running operation.

Shared by the plain renderer (:mod:`storekeeper.events.display`) and the rich one
(:mod:`storekeeper.events._rich_display`), so both say the same things the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SPINNER = "|/-\\"
#: The word a finished operation ends with, by exit state.
_OUTCOMES = {
    "normal": "done",
    "warning": "finished with a warning",
    "error": "failed",
    "exception": "failed",
}


def size_text(count: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ``3.0 MiB``..."""
    for unit in _BYTE_UNITS[:-1]:
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} {_BYTE_UNITS[-1]}"


def amount_text(count: float, unit: str) -> str:
    """*count* steps of *unit* (``"bytes"``: a size; otherwise a plain count)."""
    if unit == "bytes":
        return size_text(count)
    return f"{count:,.0f}" if not unit else f"{count:,.0f} {unit}"


def rate_text(per_second: float | None, unit: str) -> str:
    """A rate such as ``2.0 MiB/s`` or ``12.5/s``; ``?/s`` when unknown."""
    if per_second is None:
        return "?/s"
    if unit == "bytes":
        return f"{size_text(per_second)}/s"
    return f"{per_second:,.1f}/s" if not unit else f"{per_second:,.1f} {unit}/s"


def duration_text(seconds: float | None) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = round(max(seconds, 0.0))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def outcome_text(exit_state: str) -> str:
    """The word(s) a finished operation ends with: ``done``, ``failed``..."""
    return _OUTCOMES.get(exit_state, exit_state)


@dataclass
class Operation:
    """One running operation as a display knows it."""

    message: str
    steps: int
    unit: str = ""
    step: int = 0
    started: float = field(default_factory=time.monotonic)
    last_line: float = 0.0

    @property
    def total(self) -> int | None:
        """The step count at the end, ``None`` when unknown."""
        return self.steps if self.steps > 0 else None

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def rate(self) -> float:
        return self.step / self.elapsed()

    def remaining(self) -> float | None:
        """Seconds left at the current rate; ``None`` when the total or rate is unknown."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.step, 0) / rate

    def describe(self, width: int = 30) -> str:
        """One line: a bar with done/total, rate and time left when the total is known;
        a spinner with the amount so far, rate and time elapsed otherwise."""
        unit = self.unit
        rate = rate_text(self.rate(), unit)
        if self.total is None:
            spin = _SPINNER[self.step % len(_SPINNER)]
            done = amount_text(self.step, unit)
            return f"{self.message} {spin} {done} {rate} {duration_text(self.elapsed())} elapsed"
        fraction = min(self.step / self.total, 1.0)
        bar = "#" * int(fraction * width)
        done = f"{amount_text(self.step, unit)}/{amount_text(self.total, unit)}"
        left = duration_text(self.remaining())
        return f"{self.message} [{bar:<{width}}] {fraction:4.0%} {done} {rate} {left} left"

    def summary(self, exit_state: str, message: str = "", *, figures: bool = True) -> str:
        """The line an ended operation leaves: ``Copying: done, 3.0 MiB in 0:00:02
        (1.5 MiB/s)``, or ``Copying: failed (disk gone)``; without the amount, time and
        rate if not *figures* (a renderer that shows them in columns)."""
        text = f"{self.message}: {outcome_text(exit_state)}"
        if exit_state == "normal" and figures:
            amount = amount_text(self.step, self.unit)
            elapsed = duration_text(self.elapsed())
            text += f", {amount} in {elapsed} ({rate_text(self.rate(), self.unit)})"
        if message and message != self.message:
            text += f" ({message})"
        return text
