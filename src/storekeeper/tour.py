"""A short, readable tour of storekeeper: ``python -m storekeeper.tour`` (``make run``).

Each step prints what it does; read this file side by side with its output.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import storekeeper
from storekeeper import atomic_store
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.events import EventManager
from storekeeper.sessions import SessionStorage
from storekeeper.store import Range, StoreModificationEvent


def _say(title: str) -> None:
    print(f"\n== {title}")


def tour_store(workdir: Path) -> None:
    """The key-value store API on the embedded default backend, SQLite."""
    events = EventManager()
    events.connect(
        StoreModificationEvent, lambda e: print(f"   event: {type(e).__name__} {e.key!r}")
    )
    with SqliteStore(workdir / "app.db", event_manager=events) as store:
        _say("set a key: bytes plus JSON metadata")
        store.set("photos/cat.jpg", (b"\xff\xd8 pretend jpeg", {"kind": "photo", "year": 2021}))
        store.set("photos/dog.jpg", (b"\xff\xd8 another", {"kind": "photo", "year": 2019}))
        store.set("notes/todo.txt", (b"buy milk", {"kind": "note"}))

        _say("read it back")
        value = store.get("photos/cat.jpg")
        with value.data as stream:
            print("   data:", stream.read(), "metadata:", value.metadata, "size:", value.size)

        _say("query by metadata, glob by key")
        print("   photos after 2020:", store.query_keys(kind="photo", year=Range(2020, None)))
        print("   glob notes/*:", store.glob("notes/*"))

        _say("conditional write: only if nobody changed it since we read it")
        todo = store.get("notes/todo.txt")
        store.set(
            "notes/todo.txt", (b"buy milk and eggs", {"kind": "note"}), if_version=todo.version
        )
        print("   now:", store.to_bytes("notes/todo.txt"))

        _say("a transaction is all or nothing")
        try:
            with store.transaction("move the cat"):
                store.set("archive/cat.jpg", store.get("photos/cat.jpg"))
                store.delete("photos/cat.jpg")
                raise RuntimeError("changed my mind")  # noqa: TRY301 - shows the rollback
        except RuntimeError:
            pass
        print("   cat still in photos:", store.exists("photos/cat.jpg"))


def tour_files(workdir: Path) -> None:
    """State files and checkpoints that a crash can never corrupt."""
    _say("atomic_store: one value in one file, written atomically when the block exits")
    for _ in range(2):
        with atomic_store.open(workdir / "runs.json", default=[]) as runs:
            runs.value.append(len(runs.value) + 1)
    print("   runs.json:", (workdir / "runs.json").read_text())

    _say("session checkpoints: durable, checksummed, the previous one kept")
    storage = SessionStorage.create(workdir / "sessions")
    storage.save_checkpoint(b"step 1 done")
    storage.save_checkpoint(b"step 2 done")
    print("   session", storage.id, "resumes from:", storage.load_checkpoint())


def main() -> None:
    """Walk through the library's main features in a temporary directory."""
    print(f"storekeeper {storekeeper.__version__}: a short tour")
    with tempfile.TemporaryDirectory(prefix="storekeeper-tour-") as tmp:
        workdir = Path(tmp)
        tour_store(workdir)
        tour_files(workdir)
    print("\nThat's it. See README.md for more.")


if __name__ == "__main__":
    main()
