"""The tour (``make run``) runs to the end and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_tour_runs_and_cleans_up_after_itself(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    run = subprocess.run(
        [sys.executable, "-m", "storekeeper.tour"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    out = run.stdout
    for shown in (
        "memory://\n      -> DictMemoryStore",
        "?create=true\n      -> FileSystemStore",
        "sqlite:////",
        "-> SqliteStore",
        "overlay: b'dark' b'en'",
        "below it, unchanged: b'light'",
        "Setting key 'backup.bin': done",
        "100%",
        "restored a faithful copy: True",
        "resumes from: b'step 2 done'",
    ):
        assert shown in out, shown
    assert list(scratch.iterdir()) == []  # the temporary directory is gone
