"""SqliteStore shared by several processes at once."""

from __future__ import annotations

from pathlib import Path

from storekeeper.store import open_store
from storekeeper.testing.processes import cas_counter, create_only_race


def test_create_only_race_between_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    with open_store(url):
        pass
    winners, stored = create_only_race(url)
    assert sum(winners) == 1
    assert stored == winners.index(True)


def test_compare_and_swap_counter_between_processes(tmp_path: Path) -> None:
    assert cas_counter(f"sqlite:///{tmp_path / 'counter.db'}?durable=false") == 400
