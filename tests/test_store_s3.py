"""S3Store against the conformance suite, on a real S3 protocol server (see s3_server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from s3_server import TEST_INLINE_LIMIT, prefix_for, raw_read, raw_write, shared
from storekeeper.backends.s3 import S3Store
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore
from storekeeper.testing.crossprocess import Opener
from storekeeper.testing.store import StoreTests

pytestmark = [pytest.mark.service, pytest.mark.s3]


class TestS3Store(StoreTests):
    """Small parts and inline limit, so that multipart uploads and streamed values are
    exercised with values of a few hundred KiB."""

    large_value_size = 700_001  # three parts of 256 KiB
    # S3 lists 1,000 names per request, so the first key comes after one page has been
    # parsed (about 2 MB of allocations), and filling the suite's 10,000 keys takes
    # minutes on moto; test_s3_promises checks that a listing stops after its first page.
    listing_streams = False
    # Every model step is a few requests to moto (~5 ms each): two short runs here, the
    # long ones under make soak.
    model_examples = 2
    kept_value_size = TEST_INLINE_LIMIT * 3 + 5  # over the inline limit: streamed

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> S3Store:
        return shared().store(prefix_for(tmp_path), event_manager=event_manager)

    reopen_store = create_store

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> S3Store:
        return shared().store(prefix_for(tmp_path), inline_limit=16, event_manager=event_manager)

    def process_opener(self, tmp_path: Path) -> Opener:
        return shared().opener(prefix_for(tmp_path))

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, S3Store)
        return raw_read(shared(), store, key)

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, S3Store)
        raw_write(shared(), store, key, data, metadata)
