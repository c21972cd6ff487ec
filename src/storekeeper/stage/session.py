"""Sessions, revisions and the hybrid logical clock of :mod:`storekeeper.stage`.

A :class:`Session` stands for one installation (a device, an app) that edits staged
documents. It writes only its own copy of each document and stamps its edits with times
from its :class:`HybridClock`: ``max(wall clock, last stamp + 1 µs, newest stamp seen
+ 1 µs)``. Such a time never goes backwards and is never behind anything the session has
read, so an edit made after reading another one always wins over it, however skewed the
devices' wall clocks are. "Reading" is anything that reveals a copy to the user: reading
a document, and ``in``, ``len`` and iteration of a stage directory (which judge from the
copies' metadata, whose revisions the clock observes); assigning a new document reads
the copies at its key too (see :mod:`storekeeper.stage.stage`). So a document or entity
deleted and then deliberately added again wins over the delete when the session that
adds it had seen the delete -- not merely when its wall clock says later: a session
whose clock runs behind and that never saw the delete (it was offline) stamps its
re-add before it, and the delete wins.

All this holds within :data:`MAX_FOLDED_LEAD`: a time further ahead of the local wall
clock than that (a device whose clock says year 9999, a damaged copy) is logged and
folded in only up to the bound, so one insane clock cannot drag every session to the
end of representable time. Such a copy still takes part in the merge with its own stamps.

Several processes may use the same session: their copies are merged at commit (see
:mod:`storekeeper.stage.stage`), so neither loses the other's edits.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple, TypeVar

if TYPE_CHECKING:
    from storekeeper.stage.document import MergeableDocument

__all__ = [
    "MAX_CLOCK_DRIFT",
    "MAX_FOLDED_LEAD",
    "HybridClock",
    "Revision",
    "RevisionSet",
    "Session",
    "default_identifier",
    "ensure_revision_pair",
    "from_micros",
    "to_micros",
]

_log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_D = TypeVar("_D", bound="MergeableDocument")

#: A time seen this far ahead of the local wall clock is accepted (the merge stays
#: correct) but logged: one device's clock running ahead drags every clock forward.
MAX_CLOCK_DRIFT = timedelta(minutes=5)

#: The default bound of :class:`HybridClock`: a time seen further than this ahead of the
#: local wall clock is folded into the clock only up to ``wall + MAX_FOLDED_LEAD``. It is
#: generous (a century) so that skewed but plausible clocks keep the promise that a
#: causally later edit wins, while a clock near ``datetime.max`` cannot make every later
#: stamp of its readers overflow.
MAX_FOLDED_LEAD = timedelta(days=36_525)


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of the aware datetime *moment*."""
    if moment.tzinfo is None:
        raise ValueError(f"revision times must be timezone-aware, not {moment!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime *micros* microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=micros)


#: The last representable microsecond (``datetime.max`` in UTC).
_END_OF_TIME = to_micros(datetime.max.replace(tzinfo=UTC))


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class HybridClock:
    """A hybrid logical clock: wall-clock time, nudged so it never goes backwards.

    :meth:`now` returns ``max(wall, last + 1 µs, seen + 1 µs)`` as an aware UTC datetime;
    :meth:`observe` records a time read from another copy. *wall* (a callable returning
    an aware datetime) is the wall clock; tests inject a skewed one. *max_lead* bounds
    how far ahead of the wall clock an observed time is folded in (the excess is logged
    and ignored). Past ``datetime.max`` :meth:`now` raises :class:`OverflowError` saying
    so, rather than returning a time that is not after the previous one. Thread-safe.
    """

    def __init__(
        self,
        wall: Callable[[], datetime] = _wall_clock,
        max_lead: timedelta = MAX_FOLDED_LEAD,
    ) -> None:
        if max_lead < timedelta(0):
            raise ValueError(f"max_lead must not be negative, not {max_lead!r}")
        self.wall = wall
        self.max_lead = max_lead
        self._last = 0
        # The newest time refused so far: a copy read again is not logged again.
        self._refused = 0
        self._lock = threading.Lock()

    def now_micros(self) -> int:
        """The next time, in microseconds since the epoch."""
        wall = to_micros(self.wall())
        with self._lock:
            following = max(wall, self._last + 1)
            if following > _END_OF_TIME:
                raise OverflowError(
                    "this session's clock reached the end of representable time "
                    f"({datetime.max.isoformat()}): its wall clock is wrong"
                )
            self._last = following
            return following

    def now(self) -> datetime:
        """The next time as an aware UTC datetime (strictly after every earlier answer)."""
        return from_micros(self.now_micros())

    def observe_micros(self, micros: int) -> None:
        """Record a time seen in a copy: later answers of :meth:`now` are after it, if
        it is at most :attr:`max_lead` ahead of the wall clock (else after that bound)."""
        if micros <= self._last:
            return
        wall = to_micros(self.wall())
        bound = min(wall + self.max_lead // timedelta(microseconds=1), _END_OF_TIME - 1)
        if micros > bound:
            if micros > self._refused:
                self._refused = micros
                _log.error(
                    "a revision time %s is %s ahead of this clock, beyond the bound of %s; "
                    "its copy is merged, but this clock moves only to %s",
                    from_micros(micros).isoformat(),
                    timedelta(microseconds=micros - wall),
                    self.max_lead,
                    from_micros(bound).isoformat(),
                )
            micros = bound
        elif micros - wall > MAX_CLOCK_DRIFT // timedelta(microseconds=1):
            _log.warning(
                "a revision time %s is %s ahead of this clock; accepted, but every later "
                "edit of this session is stamped after it",
                from_micros(micros).isoformat(),
                timedelta(microseconds=micros - wall),
            )
        with self._lock:
            self._last = max(self._last, micros)

    def observe(self, moment: datetime) -> None:
        """:meth:`observe_micros` for an aware datetime."""
        self.observe_micros(to_micros(moment))


def _config_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME")
    return Path(base) if base else Path.home() / ".local" / "share"


#: The file keeping this installation's default session identifier, unless the
#: ``STOREKEEPER_SESSION_FILE`` environment variable names another.
def default_identifier_path() -> Path:
    """Where :func:`default_identifier` keeps the identifier of this installation."""
    override = os.environ.get("STOREKEEPER_SESSION_FILE")
    if override:
        return Path(override)
    return _config_home() / "storekeeper" / "stage-session"


def _new_identifier() -> str:
    host = re.sub(r"[^-a-z0-9_.]+", "-", socket.gethostname().lower()).strip("-.") or "host"
    return f"{host[:40]}-{uuid.uuid4().hex[:12]}"


def default_identifier(path: str | os.PathLike[str] | None = None) -> str:
    """The identifier of this installation, created once and kept in the file *path*
    (default: :func:`default_identifier_path`), so every run of the app on this device
    uses the same session. Processes racing to create it agree on one value."""
    target = Path(path) if path is not None else default_identifier_path()
    try:
        text = target.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if text and Session.IDENTIFIER_PATTERN.fullmatch(text):
        return text
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
    candidate.write_text(_new_identifier() + "\n", encoding="utf-8")
    try:
        # link() fails if another process created the file first: then theirs wins.
        os.link(candidate, target)
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    text = target.read_text(encoding="utf-8").strip()
    if not Session.IDENTIFIER_PATTERN.fullmatch(text):
        raise ValueError(f"{target} does not hold a valid session identifier: {text!r}")
    return text


class Session:
    """One installation (device or app) editing staged documents.

    ``Session(identifier=None)``: *identifier* matches :attr:`IDENTIFIER_PATTERN`
    (ASCII letters of either case, digits, ``-``, ``_``, ``.``; ``re.ASCII`` keeps
    letters such as the Kelvin sign out), else :class:`ValueError`; a
    non-``str`` raises :class:`TypeError`. ``None`` means :func:`default_identifier`,
    stable for this installation. Sessions are interned: ``Session('a') is Session('a')``.
    Each session has one :attr:`clock` (a :class:`HybridClock`) shared by its users.
    To inject a wall clock (in tests), assign the attribute:
    ``session.clock = HybridClock(wall=lambda: some_aware_utc_datetime)``. Because
    sessions are interned, that clock then serves every stage in this process that uses
    the identifier, not only the one in hand.
    """

    IDENTIFIER_PATTERN: ClassVar[re.Pattern[str]] = re.compile(
        r"^[-a-z0-9_.]+$", re.IGNORECASE | re.ASCII
    )
    #: The interned sessions, by identifier.
    interns: ClassVar[dict[str, Session]] = {}
    _intern_lock: ClassVar[threading.Lock] = threading.Lock()

    identifier: str
    clock: HybridClock

    def __new__(cls, identifier: str | None = None) -> Session:
        if identifier is None:
            identifier = default_identifier()
        elif not isinstance(identifier, str):
            raise TypeError(f"a session identifier must be a str, not {type(identifier)!r}")
        elif not cls.IDENTIFIER_PATTERN.fullmatch(identifier):
            raise ValueError(
                f"invalid session identifier {identifier!r}: use letters, digits, '-', '_', '.'"
            )
        with cls._intern_lock:
            session = cls.interns.get(identifier)
            if session is None:
                session = super().__new__(cls)
                session.identifier = identifier
                session.clock = HybridClock()
                cls.interns[identifier] = session
        return session

    def __getnewargs__(self) -> tuple[str]:
        return (self.identifier,)

    def __reduce__(self) -> tuple[type[Session], tuple[str]]:
        # Rebuilt from the identifier alone: a copy or an unpickled session is the
        # interned one of this process (with its clock), never a second one.
        return (type(self), (self.identifier,))

    def __copy__(self) -> Session:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Session:
        return self

    def __hash__(self) -> int:
        return hash(self.identifier)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __str__(self) -> str:
        return self.identifier

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self.identifier!r})"

    def revise(self, document: MergeableDocument) -> None:
        """Stamp *document*'s unstamped edits with this session's next clock time and set
        its ``__revision__`` to ``Revision(self, that time)``; TypeError for a non-document."""
        from storekeeper.stage.document import MergeableDocument
        from storekeeper.stage.merge import revise_document

        if not isinstance(document, MergeableDocument):
            raise TypeError(f"expected a MergeableDocument, not {type(document)!r}")
        revise_document(document, self)

    def pull(self, document: _D) -> _D:
        """*document* as this session's: the same object if it is already this
        session's, otherwise a copy revised as ``Revision(self, its updated_at)`` (an
        unrevised document is revised)."""
        from storekeeper.stage.document import MergeableDocument
        from storekeeper.stage.merge import pull_document

        if not isinstance(document, MergeableDocument):
            raise TypeError(f"expected a MergeableDocument, not {type(document)!r}")
        return pull_document(document, self)

    def merge(self, a: _D, b: _D, force: bool = False) -> _D:
        """The join of documents *a* and *b* (of the same type, else TypeError): every
        field's newest write, entities merged one by one (see :mod:`storekeeper.stage.document`).

        The join is commutative, associative and idempotent, so the order copies are
        merged in never matters; *force* is accepted for compatibility and changes
        nothing. Neither input is changed. Where the join equals an input, that input
        :meth:`pull`\\ ed is returned; otherwise a new document revised by this session,
        whose base revisions hold both inputs' revisions and bases.
        """
        from storekeeper.stage.merge import merge_documents

        return merge_documents(self, a, b)


class Revision(NamedTuple):
    """A ``(session, updated_at)`` pair: who last revised a document, and when (an
    aware UTC datetime)."""

    session: Session
    updated_at: datetime


def ensure_revision_pair(
    pair: object, force_cast: bool = False
) -> tuple[Session, datetime] | Revision:
    """*pair* checked to be a ``(Session, datetime)`` 2-sequence (TypeError otherwise);
    returned as it is, or as a :class:`Revision` with *force_cast*."""
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise TypeError(f"expected a (session, datetime) pair, not {pair!r}")
    session, updated_at = pair
    if not isinstance(session, Session) or not isinstance(updated_at, datetime):
        raise TypeError(f"expected a (Session, datetime) pair, not {pair!r}")
    if force_cast:
        return Revision(session, updated_at)
    return pair  # type: ignore[return-value]


class RevisionSet(Mapping[Session, datetime]):
    """An immutable mapping from session to the newest time of it known, built from
    ``(session, datetime)`` pairs (a later pair of the same session replaces an earlier;
    a naive datetime raises :class:`ValueError`, as the times are compared)."""

    def __init__(self, revisions: Iterable[tuple[Session, datetime]] = ()) -> None:
        self._items: dict[Session, datetime] = {}
        for pair in revisions:
            session, updated_at = ensure_revision_pair(pair)
            if updated_at.utcoffset() is None:
                raise ValueError(f"revision times must be timezone-aware, not {updated_at!r}")
            self._items[session] = updated_at

    def __getitem__(self, session: Session) -> datetime:
        return self._items[session]

    def __iter__(self) -> Iterator[Session]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        pairs = ", ".join(f"({s!r}, {t!r})" for s, t in self._items.items())
        return f"{type(self).__module__}.{type(self).__name__}([{pairs}])"

    def items(self) -> list[Revision]:  # type: ignore[override]
        """The revisions, as :class:`Revision` tuples."""
        return [Revision(s, t) for s, t in self._items.items()]

    def copy(self) -> RevisionSet:
        """A new set with the same revisions."""
        return RevisionSet(self._items.items())

    def merge(self, *sets: RevisionSet) -> RevisionSet:
        """A new set with each session's newest time across this set and *sets* (at
        least one, each a RevisionSet, else TypeError)."""
        if not sets:
            raise TypeError("merge() takes at least one RevisionSet")
        merged = dict(self._items)
        for other in sets:
            if not isinstance(other, RevisionSet):
                raise TypeError(f"expected a RevisionSet, not {type(other)!r}")
            for session, updated_at in other._items.items():
                known = merged.get(session)
                if known is None or updated_at > known:
                    merged[session] = updated_at
        return RevisionSet(merged.items())

    def contains(self, revision: tuple[Session, datetime]) -> bool:
        """Whether *revision*'s session is in the set with a time at or after it."""
        session, updated_at = revision
        known = self._items.get(session)
        return known is not None and known >= updated_at
