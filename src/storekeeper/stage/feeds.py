"""The ready-made stage of a feed reader: feeds with their entries, and subscriptions.

Layout in the store::

    feeds/<feed id>/<session id>.json          one copy of each feed per session
    subscriptions.<session id>.json            one copy of the subscription list per session
    .sessions/<session id>                     when each session last used the stage
"""

from __future__ import annotations

from datetime import datetime

from storekeeper.stage.document import Element, Entities, MergeableDocument, entities
from storekeeper.stage.route import Route
from storekeeper.stage.stage import BaseStage

__all__ = ["Entry", "Feed", "Stage", "Subscription", "SubscriptionList"]


class Entry(Element):
    """One entry of a feed; ``read`` and ``starred`` are the reader's marks."""

    id: str
    title: str = ""
    link: str = ""
    updated: datetime | None = None
    read: bool = False
    starred: bool = False


class Feed(MergeableDocument):
    """A feed and its entries, by entry id."""

    id: str
    title: str = ""
    entries: Entities[Entry] = entities(key="id")


class Subscription(Element):
    """A subscription to the feed ``feed_id``."""

    feed_id: str
    title: str = ""
    category: str = ""


class SubscriptionList(MergeableDocument):
    """The subscriptions, by feed id."""

    subscriptions: Entities[Subscription] = entities(key="feed_id")


class Stage(BaseStage):
    """Staged documents of a feed reader: :attr:`feeds` (a mapping from feed id to
    :class:`Feed`) and :attr:`subscriptions` (a :class:`SubscriptionList`, ``None``
    until someone writes one)."""

    feeds: Route[Feed] = Route(Feed, ["feeds", "{0}", "{session.identifier}.json"])
    subscriptions: Route[SubscriptionList] = Route(
        SubscriptionList, ["subscriptions.{session.identifier}.json"]
    )
