"""A short, readable tour of storekeeper: ``python -m storekeeper.tour`` (``make run``).

Each step prints what it does; read this file side by side with its output.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import storekeeper
from storekeeper import atomic_store, open_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import JoinedStore
from storekeeper.events import EventManager
from storekeeper.events.display import ProgressDisplay
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


def tour_urls(workdir: Path) -> None:
    """One front door: ``open_store(url)`` picks the backend from the URL."""
    _say("open_store: the URL names the backend and where the data lives")
    urls = [
        "memory://",  # a new, empty in-memory store
        (workdir / "files").as_uri() + "?create=true",  # a directory of files
        f"sqlite:///{workdir / 'urls.db'}",  # SQLite; four slashes for an absolute path
    ]
    for url in urls:
        with open_store(url) as store:  # connected; disconnected when the block exits
            store.set("greeting", (b"hello", {"lang": "en"}))
            print(f"   {url}\n      -> {type(store).__name__}: {store.query_keys(lang='en')}")


def tour_composite(workdir: Path) -> None:
    """Stores built from stores: an overlay that leaves the store below untouched."""
    _say("a composite: an in-memory overlay on SQLite (reads fall through, writes stay on top)")
    with open_store(f"sqlite:///{workdir / 'settings.db'}") as shared:
        shared.set("theme", (b"light", {}))
        shared.set("language", (b"en", {}))
        with JoinedStore([DictMemoryStore(), shared]) as overlay:
            overlay.set("theme", (b"dark", {}))
            print("   overlay:", overlay.to_bytes("theme"), overlay.to_bytes("language"))
            print("   below it, unchanged:", shared.to_bytes("theme"))


def tour_progress(workdir: Path) -> None:
    """Long operations emit progress events; ``ProgressDisplay`` draws them."""
    _say("progress: copying a file into the store and out again, with a progress display")
    source = workdir / "backup.bin"
    source.write_bytes(os.urandom(4 << 20))
    events = EventManager()
    with (
        SqliteStore(workdir / "backups.db", event_manager=events) as store,
        ProgressDisplay(events, sys.stdout, interval=0.0),
    ):
        store.from_file("backup.bin", source, buffer_size=1 << 20)
        store.to_file("backup.bin", workdir / "restored.bin", buffer_size=1 << 20)
    print(
        "   restored a faithful copy:",
        (workdir / "restored.bin").read_bytes() == source.read_bytes(),
    )


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
        tour_urls(workdir)
        tour_composite(workdir)
        tour_progress(workdir)
        tour_files(workdir)
    print("\nThat's it. See README.md for more.")


if __name__ == "__main__":
    main()
