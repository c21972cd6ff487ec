"""The rich renderer of :class:`~storekeeper.events.display.ProgressDisplay`.

Imported only when rich is used (the ``[cli]`` extra). Each operation is a rich task
whose ``unit`` field says what its steps count; the columns below show its amount,
rate and time the way the plain renderer does, and never print an unknown total.
"""

from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.text import Text

from storekeeper.events._progress_text import amount_text, duration_text, rate_text

__all__ = ["make_progress"]


def _unit(task: Task) -> str:
    unit = task.fields.get("unit", "")
    return unit if isinstance(unit, str) else ""


class _AmountColumn(ProgressColumn):
    """``1.5 MiB/3.0 MiB``, or ``1.5 MiB`` while the total is unknown."""

    def render(self, task: Task) -> Text:
        unit = _unit(task)
        done = amount_text(task.completed, unit)
        if task.total is None:
            return Text(done, style="progress.download")
        return Text(f"{done}/{amount_text(task.total, unit)}", style="progress.download")


class _RateColumn(ProgressColumn):
    """The rate so far (rich's estimate while running, the average once finished)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:
            speed = task.completed / task.elapsed
        return Text(rate_text(speed, _unit(task)), style="progress.data.speed")


class _TimeColumn(ProgressColumn):
    """Time left while the total is known; time elapsed otherwise and once stopped."""

    def render(self, task: Task) -> Text:
        if task.stop_time is not None or task.total is None:
            return Text(f"{duration_text(task.elapsed)} elapsed", style="progress.elapsed")
        return Text(f"{duration_text(task.time_remaining)} left", style="progress.remaining")


def make_progress(stream: IO[str], force_terminal: bool | None) -> Progress:
    """A rich ``Progress`` drawing on *stream* with the display's columns."""
    console = Console(file=stream, force_terminal=force_terminal)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        _AmountColumn(),
        _RateColumn(),
        _TimeColumn(),
        console=console,
        auto_refresh=False,
    )
