"""The terminal progress display: plain lines, in-place redraw, and rich."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from storekeeper import DictMemoryStore
from storekeeper.events import EventManager, ProgressManager
from storekeeper.events.display import ProgressDisplay

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _visible(text: str) -> str:
    """What a terminal shows of rich's output, less the cursor movements and colours."""
    return _ESCAPES.sub("", text)


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
    assert any(line.startswith("Copying: done, 4 in ") for line in lines)
    assert "Failing: failed (disk gone)" in lines
    assert "\x1b" not in out.getvalue()


def test_redraws_in_place_on_a_terminal_without_rich() -> None:
    manager = EventManager()
    out = FakeTerminal()
    with ProgressDisplay(manager, out, use_rich=False):
        _run_two_operations(manager)
    text = out.getvalue()
    assert "\x1b[F" in text  # moved the cursor up to redraw
    assert "Copying [" in text and " left" in text
    assert "Copying: done" in text


def test_rich_renderer() -> None:
    manager = EventManager()
    out = io.StringIO()
    display = ProgressDisplay(manager, out, use_rich=True)
    with display:
        _run_two_operations(manager)
    text = _visible(out.getvalue())
    assert "Copying: done" in text
    assert "Failing: failed (disk gone)" in text


def test_disconnect_stops_drawing() -> None:
    manager = EventManager()
    out = io.StringIO()
    display = ProgressDisplay(manager, out)
    display.connect()
    display.disconnect()
    _run_two_operations(manager)
    assert out.getvalue() == ""


def _copy_a_file_into_a_store(manager: EventManager, tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"p" * 300_000)
    with DictMemoryStore(manager) as store:
        store.from_file("photo", source, buffer_size=100_000)
        store.to_bytes("photo", buffer_size=100_000)


def test_plain_lines_show_sizes_rate_and_time_left_for_from_file(tmp_path: Path) -> None:
    manager = EventManager()
    out = io.StringIO()
    with ProgressDisplay(manager, out, interval=0.0):
        _copy_a_file_into_a_store(manager, tmp_path)
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("Setting key 'photo' [")]
    assert steps, lines
    assert all("/293.0 KiB " in line and re.search(r" [KMGT]?i?B/s ", line) for line in steps)
    assert all(line.endswith(" left") and "?" not in line for line in steps)
    assert steps[0].startswith("Setting key 'photo' [" + "#" * 10 + " " * 20 + "]  33% 97.7 KiB/")
    assert any(line.startswith("Setting key 'photo': done, 293.0 KiB in 0:00:0") for line in lines)
    assert any(line.startswith("Reading key 'photo': done, 293.0 KiB") for line in lines)
    assert not any("None" in line or line.endswith("normal") for line in lines)


def test_rich_shows_sizes_rate_and_time_left_never_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # a wide terminal: nothing is cut short
    manager = EventManager()
    out = io.StringIO()
    with ProgressDisplay(manager, out, use_rich=True):
        _copy_a_file_into_a_store(manager, tmp_path)
        with ProgressManager(manager, message="Scanning") as scanning:  # no total
            scanning(step=7)
    text = _visible(out.getvalue())
    assert "None" not in text and "normal" not in text
    assert "/293.0 KiB " in text and re.search(r" [KMGT]?i?B/s ", text) and " left" in text
    assert re.search(r"Setting key 'photo': done +━+ 293.0 KiB/293.0 KiB .*iB/s +0:00:0", text)
    assert "Reading key 'photo': done" in text
    assert re.search(r"Scanning: done +━+ 7/7 .*/s +0:00:0\d elapsed", text)
    assert "━" in text  # the bar itself


@pytest.mark.parametrize("use_rich", [False, True])
def test_steps_redraw_at_most_once_per_redraw_interval(use_rich: bool) -> None:
    manager = EventManager()
    out = FakeTerminal()
    with ProgressDisplay(manager, out, use_rich=use_rich, redraw_interval=3600.0):
        with ProgressManager(manager, message="Copying", steps=1000) as copying:
            for step in range(1, 1001):
                copying(step=step)
    text = _visible(out.getvalue())
    # the start, the first step, the end (rich: and its own start/stop): not 1000 redraws
    assert text.count("Copying") <= 6, text
    assert "Copying: done" in text
