"""Typed documents that many sessions (devices, processes) edit at once over any store.

Each session writes only its own copy of a document; reading merges every session's
copy. The merge is a join (see :mod:`storekeeper.stage.document`), so every session
converges on the same documents, whatever order it sees the copies in, and an app can
sync through nothing smarter than a shared folder or bucket::

    from storekeeper.stage import Session, Stage, Feed

    stage = Stage(Session("laptop"), "file:///home/me/Sync/reader")
    with stage:
        stage.feeds["https://example.org/feed"] = Feed(id="https://example.org/feed")

Modules: :mod:`~storekeeper.stage.session` (sessions, revisions, the clock),
:mod:`~storekeeper.stage.document` (document types and their merge),
:mod:`~storekeeper.stage.stage` (transactions), :mod:`~storekeeper.stage.buffer` (a
transaction's pending writes and their commit), :mod:`~storekeeper.stage.route`
(routes and directories), :mod:`~storekeeper.stage.feeds` (the feed reader's stage),
:mod:`~storekeeper.stage.compact` (compaction).
"""

from __future__ import annotations

from storekeeper.stage.document import (
    Element,
    Entities,
    MergeableDocument,
    MergeableDocumentElement,
    entities,
)
from storekeeper.stage.feeds import Entry, Feed, Stage, Subscription, SubscriptionList
from storekeeper.stage.route import Directory, Route, compile_format_to_pattern
from storekeeper.stage.session import (
    HybridClock,
    Revision,
    RevisionSet,
    Session,
    default_identifier,
    ensure_revision_pair,
)
from storekeeper.stage.stage import (
    BaseStage,
    DirtyBuffer,
    TransactionError,
    get_current_context_id,
)

__all__ = [
    "BaseStage",
    "Directory",
    "DirtyBuffer",
    "Element",
    "Entities",
    "Entry",
    "Feed",
    "HybridClock",
    "MergeableDocument",
    "MergeableDocumentElement",
    "Revision",
    "RevisionSet",
    "Route",
    "Session",
    "Stage",
    "Subscription",
    "SubscriptionList",
    "TransactionError",
    "compile_format_to_pattern",
    "default_identifier",
    "ensure_revision_pair",
    "entities",
    "get_current_context_id",
]
