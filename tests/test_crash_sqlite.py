"""SqliteStore survives writer processes killed with SIGKILL at random moments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storekeeper.testing.crash import run_crash_rounds

SOAK = os.environ.get("STOREKEEPER_SOAK") == "1"


@pytest.mark.crash
@pytest.mark.parametrize(
    ("durable", "inline_limit"), [(True, 1 << 20), (False, 1 << 20), (True, 5000)]
)
def test_killed_writers_lose_nothing_acknowledged(
    tmp_path: Path, durable: bool, inline_limit: int
) -> None:
    # inline_limit=5000 puts the larger values in value files beside the database.
    options = f"durable={str(durable).lower()}&inline_limit={inline_limit}"
    url = f"sqlite:///{tmp_path / 'crash.db'}?{options}"
    # 60 rounds a case keeps make test short; make soak runs thousands.
    report = run_crash_rounds(url, rounds=60)
    assert report.problems == []
    assert report.rounds == 60
    assert report.acknowledged > 0


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="thousands of kills: only under make soak")
def test_killed_writers_soak(tmp_path: Path) -> None:
    report = run_crash_rounds(f"sqlite:///{tmp_path / 'soak.db'}", rounds=2000, max_delay=0.5)
    assert report.problems == []
    url = f"sqlite:///{tmp_path / 'files.db'}?inline_limit=5000"
    assert run_crash_rounds(url, rounds=1000, max_delay=0.5).problems == []
    # durable=False: every checkpoint runs on the background thread or at the log's cap.
    url = f"sqlite:///{tmp_path / 'fast.db'}?durable=false"
    assert run_crash_rounds(url, rounds=1000, max_delay=0.5).problems == []
