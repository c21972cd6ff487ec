"""The terminal progress display: plain lines, in-place redraw, and rich."""

from __future__ import annotations

import io

from storekeeper.events import EventManager, ProgressManager
from storekeeper.events.display import ProgressDisplay


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_two_operations(manager: EventManager) -> None:
    with ProgressManager(manager, message="Copying", steps=4) as copying:
        with ProgressManager(manager, message="Scanning") as scanning:
            for step in range(1, 5):
                copying(step=step)
                scanning(step=step * 10)
    try:
        with ProgressManager(manager, message="Failing", steps=2) as failing:
            failing(step=1)
            raise OSError("disk gone")  # noqa: TRY301
    except OSError:
        pass


def test_plain_lines_when_not_a_terminal() -> None:
    manager = EventManager()
    out = io.StringIO()
    with ProgressDisplay(manager, out, interval=0.0):
        _run_two_operations(manager)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Copying: started"
    assert "Scanning: started" in lines
    assert any(line.startswith("Copying [") and "4/4" in line and "/s" in line for line in lines)
    assert any(line.startswith("Scanning ") and "40" in line for line in lines)
    assert "Copying: normal" in lines
    assert "Failing: exception (disk gone)" in lines
    assert "\x1b" not in out.getvalue()


def test_redraws_in_place_on_a_terminal_without_rich() -> None:
    manager = EventManager()
    out = FakeTerminal()
    with ProgressDisplay(manager, out, use_rich=False):
        _run_two_operations(manager)
    text = out.getvalue()
    assert "\x1b[F" in text  # moved the cursor up to redraw
    assert "Copying [" in text and "eta" in text
    assert "Copying: normal" in text


def test_rich_renderer() -> None:
    manager = EventManager()
    out = io.StringIO()
    display = ProgressDisplay(manager, out, use_rich=True)
    with display:
        _run_two_operations(manager)
    text = out.getvalue()
    assert "Copying: normal" in text
    assert "Failing: exception" in text


def test_disconnect_stops_drawing() -> None:
    manager = EventManager()
    out = io.StringIO()
    display = ProgressDisplay(manager, out)
    display.connect()
    display.disconnect()
    _run_two_operations(manager)
    assert out.getvalue() == ""
