"""Presence: who is on a topic, kept in sync the way phoenix.js' ``Presence`` does.

::

    gateway = SwitchboardGateway("http://127.0.0.1:4000", user="ada")    # open node
    async with gateway.join_presence("room:lobby", {"status": "online"}) as room:
        print(room.keys())                       # ["ada", "bob"]
        await room.update({"status": "typing"})  # presence_update

    snapshot = await backend.fetch_presence("room:lobby")   # GET /api/presence, API key

- :class:`Presence`: one topic's live list on this client's socket. Joining makes the socket a
  member (when it has a presence key: a token's ``sub``, or ``user=`` on an open node) and
  returns once the node's ``presence_state`` arrived; ``presence_diff`` broadcasts keep it in
  sync, and every rejoin's ``presence_state`` syncs it again (``syncState``: members that went
  while the socket was away leave, so no one is listed twice). ``on_join`` / ``on_leave`` /
  ``on_sync`` are phoenix.js' callbacks.
- :class:`PresenceSnapshot`: one reading of ``GET /api/presence`` (every node's members), for
  backends, with the same read methods.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import inspect
import logging
from collections.abc import Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from ._phoenix import Meta, PresenceChange, PresenceMap, parse_presences
from .errors import ClosedError

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "JoinCallback",
    "LeaveCallback",
    "Meta",
    "Presence",
    "PresenceEntry",
    "PresenceMap",
    "PresenceSnapshot",
    "SyncCallback",
]

log = logging.getLogger("switchboard_client")

T = TypeVar("T")

_Metas = list[Meta]

JoinCallback = Callable[[str, _Metas | None, _Metas], object]
"""``on_join(key, current, joined)``: ``current`` is the key's metas before the join (``None``
when the key is new), ``joined`` the metas that joined. May be ``async``."""

LeaveCallback = Callable[[str, _Metas, _Metas], object]
"""``on_leave(key, remaining, left)``: ``remaining`` is the key's metas still present (``[]``
when the key is gone), ``left`` the metas that left. May be ``async``."""

SyncCallback = Callable[[], object]
"""``on_sync()``: after each ``presence_state`` or ``presence_diff`` applied. May be ``async``."""


class PresenceEntry(NamedTuple):
    """One key of a list: ``key`` and its ``metas`` (one per socket, each with ``phx_ref``)."""

    key: str
    metas: list[Meta]


_Entries = list[PresenceEntry]
_Keys = list[str]


def _copy(metas: _Metas) -> _Metas:
    return [dict(meta) for meta in metas]


class _Reader:
    """The read side shared by :class:`Presence` and :class:`PresenceSnapshot`."""

    def _current(self) -> PresenceMap:
        raise NotImplementedError

    @property
    def state(self) -> PresenceMap:
        """A copy of the list: ``{key: [meta, ...]}``."""
        return {key: _copy(metas) for key, metas in self._current().items()}

    def keys(self) -> _Keys:
        """The keys present (user ids), in the order they joined."""
        return builtins.list(self._current())

    def metas(self, key: str) -> _Metas:
        """``key``'s metas, one per socket (``[]`` when the key is absent)."""
        return _copy(self._current().get(key, []))

    @overload
    def list(self) -> _Entries: ...

    @overload
    def list(self, by: Callable[[str, _Metas], T]) -> builtins.list[T]: ...

    def list(self, by: Callable[[str, _Metas], Any] | None = None) -> builtins.list[Any]:
        """phoenix.js' ``presence.list(by)``: ``by(key, metas)`` for each key, or the
        :class:`PresenceEntry` of each key without ``by``."""
        if by is None:
            return [PresenceEntry(key, _copy(metas)) for key, metas in self._current().items()]
        return [by(key, _copy(metas)) for key, metas in self._current().items()]

    @property
    def member_count(self) -> int:
        """Metas in all: one per joined socket."""
        return sum(len(metas) for metas in self._current().values())

    def to_phoenix(self) -> dict[str, dict[str, _Metas]]:
        """The list in phoenix.js' format, ``{key: {"metas": [...]}}`` (a ``presence_state``
        payload, e.g. to hand to a browser's ``Presence.syncState``)."""
        return {key: {"metas": _copy(metas)} for key, metas in self._current().items()}

    def __contains__(self, key: object) -> bool:
        return key in self._current()

    def __len__(self) -> int:
        """The number of keys."""
        return len(self._current())


class PresenceSnapshot(_Reader):
    """Who was on ``topic`` when the node answered ``GET /api/presence`` (members of every
    node). ``presences`` is the list, ``{key: [meta, ...]}``."""

    def __init__(self, topic: str, presences: PresenceMap) -> None:
        self.topic = topic
        self.presences = presences

    @classmethod
    def from_answer(cls, topic: str, answer: dict[str, Any]) -> PresenceSnapshot:
        """From the node's JSON answer (``{"topic", "keys", "members", "presences"}``)."""
        return cls(str(answer.get("topic", topic)), parse_presences(answer.get("presences")))

    def _current(self) -> PresenceMap:
        return self.presences

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PresenceSnapshot):
            return NotImplemented
        return self.topic == other.topic and self.presences == other.presences

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PresenceSnapshot({self.topic!r}, {self.presences!r})"


class Presence(_Reader):
    """A topic's live presence list on a connection (phoenix.js' ``Presence`` on a channel).

    Get one from :meth:`SwitchboardGateway.join_presence
    <switchboard_client.SwitchboardGateway.join_presence>` (or construct it on any client's
    ``connection``), then join: ``async with presence:``, ``await presence`` or
    ``await presence.join()``. Joining returns once the node's ``presence_state`` arrived,
    so the list is complete from the first read.

    The socket is one member of the topic per presence key: with a key (a token's ``sub``,
    or ``user=`` on an open node) it is listed, with ``meta`` as what it says about itself;
    without one it is an observer that reads the list. Every local subscription of the topic
    shares that one membership: the socket leaves the topic (and the list) when the last of
    them leaves. The meta is sent again at every rejoin, so a reconnect keeps it.

    Reading (``list``, ``keys``, ``metas``, ``state``, ``in``, ``len``) never blocks. While
    the socket is away the list is the last one known (:attr:`synced` is ``False``), as in
    phoenix.js; the rejoin's ``presence_state`` syncs it, members that went meanwhile
    leaving (``on_leave``) and new ones joining (``on_join``).

    Callbacks run on the event loop, after the whole frame was applied, in the order
    phoenix.js calls them; one that raises is logged, and an ``async`` one runs as a task.
    """

    reads_messages = False
    """Tells the connection that lost messages (gaps) mean nothing to this listener."""

    def __init__(
        self,
        connection: Connection,
        topic: str,
        meta: Meta | None = None,
        *,
        on_join: JoinCallback | None = None,
        on_leave: LeaveCallback | None = None,
        on_sync: SyncCallback | None = None,
        timeout: float | None = None,
    ) -> None:
        self.topic = topic
        self._connection = connection
        self._meta = meta
        self._timeout = timeout
        self._on_join = on_join
        self._on_leave = on_leave
        self._on_sync = on_sync
        self._entered = False
        self._left = False
        self._changed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- joining and leaving -----------------------------------------------------------------

    async def join(self, timeout: float | None = None) -> Presence:
        """Joins the topic (once) and waits for its list; returns ``self``.

        Raises :class:`~switchboard_client.InvalidPresenceError` (a meta the node refuses),
        :class:`~switchboard_client.NoPresenceError` (the topic tracks no presence),
        :class:`~switchboard_client.TooManyMembersError`,
        :class:`~switchboard_client.JoinError` (other refusals: ``unauthorized``, ...) and
        :class:`~switchboard_client.ConnectError`. ``timeout`` bounds the wait for the
        node's answer and list (the connection's ``reply_timeout``, 10 s, by default).
        """
        if self._left:
            raise ClosedError(f"the presence of {self.topic!r} was left")
        if not self._entered:
            await self._connection.join_presence(
                self.topic, self, self._meta, self._timeout if timeout is None else timeout
            )
            self._entered = True
        return self

    async def leave(self) -> None:
        """Stops following the list; the socket leaves the topic (and its member the list)
        unless another local subscription still holds it. Idempotent."""
        if self._left:
            return
        self._left = True
        self._wake()
        if self._entered:
            try:
                await self._connection.unsubscribe(self.topic, self)
            except Exception:  # pragma: no cover - leaving never matters more than closing
                log.debug("leaving %s failed", self.topic, exc_info=True)

    async def __aenter__(self) -> Presence:
        return await self.join()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    def __await__(self) -> Generator[Any, None, Presence]:
        return self.join().__await__()

    async def update(self, meta: Meta, timeout: float | None = None) -> None:
        """Replaces what this socket says about itself (a ``presence_update`` push).

        Returns once the node recorded it: every watcher then gets one diff, the new meta
        joining (with ``phx_ref_prev``) and the old one leaving. Later rejoins carry the new
        meta. Rides out a reconnect within ``timeout`` (the ``publish_timeout``, 5 s, by
        default). Raises :class:`~switchboard_client.InvalidPresenceError`,
        :class:`~switchboard_client.TooManyMembersError`, or
        :class:`~switchboard_client.PresenceError` (``code``: ``no_key`` for an observer,
        ``not_member``, ``timeout``, ...).
        """
        if self._left or not self._entered:
            raise ClosedError(f"join the presence of {self.topic!r} before updating it")
        await self._connection.update_presence(self.topic, meta, timeout)
        self._meta = self._connection.presence_meta(self.topic)

    # --- state ---------------------------------------------------------------------------------

    @property
    def meta(self) -> Meta | None:
        """What this socket says about itself on the topic (the last meta joined with or
        updated to), ``None`` when it said nothing."""
        current = self._connection.presence_meta(self.topic) if self.joined else None
        meta = current if current is not None else self._meta
        return copy.deepcopy(meta) if meta else None

    @property
    def joined(self) -> bool:
        """True from a successful :meth:`join` until :meth:`leave` (or the client's close)."""
        return self._entered and not self._left and not self._connection.closed

    @property
    def synced(self) -> bool:
        """True while the list is in sync with the node: the topic is joined on a live socket
        and that join's ``presence_state`` arrived."""
        return self.joined and self._connection.presence_synced(self.topic)

    def _current(self) -> PresenceMap:
        state = self._connection.presence_state(self.topic) if self._entered else None
        return state.state if state is not None else {}

    # --- phoenix.js' callbacks -------------------------------------------------------------

    def on_join(self, callback: JoinCallback) -> JoinCallback:
        """Sets the join callback (returns it, so it can decorate)."""
        self._on_join = callback
        return callback

    def on_leave(self, callback: LeaveCallback) -> LeaveCallback:
        """Sets the leave callback (returns it, so it can decorate)."""
        self._on_leave = callback
        return callback

    def on_sync(self, callback: SyncCallback) -> SyncCallback:
        """Sets the sync callback (returns it, so it can decorate)."""
        self._on_sync = callback
        return callback

    # --- waiting -------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[Presence], bool], timeout: float | None = None) -> None:
        """Waits until ``predicate(self)`` is true (checked now and after every change of the
        list); :class:`TimeoutError` after ``timeout`` seconds, :class:`ClosedError` once
        left::

            await room.wait_for(lambda p: "bob" in p, timeout=10)
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._left or self._connection.closed:
                raise ClosedError(f"the presence of {self.topic!r} was left")
            if predicate(self):
                return
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{self.topic}: the presence list did not change as awaited")
            try:
                # Also look again now and then: the socket's state changes without a frame.
                await asyncio.wait_for(changed.wait(), min(0.5, remaining) if remaining else 0.5)
            except asyncio.TimeoutError:
                pass

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Waits until :attr:`synced` (after a reconnect: the rejoin's list arrived)."""
        await self.wait_for(lambda presence: presence.synced, timeout)

    # --- the connection's listener -------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        """Messages of the topic are not presence; subscribe to read them."""

    def on_gap(self, gap: Any) -> None:
        """Gaps are about messages; the list is synced again by each rejoin."""

    def on_presence(self, changes: builtins.list[PresenceChange]) -> None:
        if self._left:
            return
        for change in changes:
            if change.kind == "join":
                if self._on_join is not None:
                    self._call(self._on_join, change.key, change.current, change.metas)
            elif self._on_leave is not None:
                self._call(self._on_leave, change.key, change.current or [], change.metas)
        if self._on_sync is not None:
            self._call(self._on_sync)
        self._wake()

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("a presence callback of %s raised", self.topic)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "a presence callback of %s raised", self.topic, exc_info=task.exception()
            )

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def __repr__(self) -> str:
        state = "synced" if self.synced else "joined" if self.joined else "not joined"
        return f"<Presence {self.topic!r} {state}, {len(self)} keys>"
