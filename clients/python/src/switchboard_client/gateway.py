"""Seeds 000/001: ``PubSubGatewayProtocol`` on Switchboard.

::

    gateway = SwitchboardGateway("http://127.0.0.1:4000", token=token)

    # producer (after the database commit): never raises on an outage, returns False
    await gateway.publish_to_user_channel(user_id, "auditlog", entry)

    # consumer: subscribed on enter, unsubscribed on exit
    async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
        message = await sub.get_message(timeout=30.0)   # the published dict, or None
        await sub.send_message({"type": "acknowledgment"})

Channel ``{channel_type}:{user_id}`` is the node's topic of the same name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from uuid import UUID

from ._connection import Connection, Options, PublishVia, Token
from ._phoenix import Meta, PresenceMap, validate_topic
from .errors import ClosedError, ConnectError, InvalidTopicError, MessagesLostError, PublishError
from .presence import JoinCallback, LeaveCallback, Presence, PresenceSnapshot, SyncCallback
from .types import Gap, Message

__all__ = ["SwitchboardGateway", "SwitchboardSubscription"]

log = logging.getLogger("switchboard_client")


def user_channel(user_id: UUID | str | int, channel_type: str) -> str:
    """``{channel_type}:{user_id}``, checked against the node's topic rules."""
    topic = f"{channel_type}:{user_id}"
    if not isinstance(channel_type, str) or not channel_type:
        raise InvalidTopicError(topic, "channel_type must be a non-empty str")
    if not str(user_id):
        raise InvalidTopicError(topic, "user_id is empty")
    return validate_topic(topic)


class _Overflow:
    """Stands in the queue where messages were dropped, counting them."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


class SwitchboardSubscription:
    """One user channel, as an async context manager (seed 000's ``PubSubSubscription``).

    Entering joins the topic on the node (:class:`~switchboard_client.JoinError` if refused);
    leaving, or :meth:`close`, leaves it. Messages wait in a bounded queue (``max_queue``);
    past it new ones are dropped and the drop is reported as a gap.

    Gaps (messages that were lost: a reconnect to a node without history, a recovery the
    node could not do, a full queue) are logged and recorded in :attr:`gaps`; with
    ``raise_on_gap=True``, :meth:`get_message` also raises
    :class:`~switchboard_client.MessagesLostError` once, at the gap's place in the stream.
    """

    def __init__(
        self,
        gateway: SwitchboardGateway,
        topic: str,
        *,
        max_queue: int,
        raise_on_gap: bool,
    ) -> None:
        self.topic = topic
        self.gaps: list[Gap] = []
        """Every gap this subscription had, oldest first."""
        self._gateway = gateway
        self._max_queue = max_queue
        self._raise_on_gap = raise_on_gap
        self._items: deque[Message | Gap | _Overflow] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._entered = False
        self._closed = False

    # --- the protocol ------------------------------------------------------------------------

    async def __aenter__(self) -> SwitchboardSubscription:
        if self._closed:
            raise ClosedError(f"the subscription to {self.topic!r} was closed")
        if not self._entered:
            await self._gateway._connection.subscribe(self.topic, self)
            self._entered = True
            self._gateway._subscriptions.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next published JSON object, or ``None`` when ``timeout`` seconds pass first.

        ``timeout=None`` waits for as long as it takes. A payload that is not a JSON object
        (a raw ``redis-cli PUBLISH`` of a string) is skipped with a warning; use
        :meth:`get_event` to see those too.
        """
        message = await self.get_event(timeout)
        while message is not None:
            if type(message.payload) is dict:
                return message.payload
            log.warning(
                "%s: skipped a %s payload (get_message returns JSON objects; get_event returns "
                "every message)",
                self.topic,
                type(message.payload).__name__,
            )
            message = await self.get_event(timeout)  # a skipped payload restarts the wait
        return None

    async def send_message(self, message: dict[str, Any]) -> None:
        """Publishes ``message`` to this channel (every subscriber gets it, this one too).

        Raises :class:`~switchboard_client.ClosedError` after :meth:`close`,
        :class:`~switchboard_client.InvalidMessageError` for a message that is not
        JSON-serialisable and :class:`~switchboard_client.PublishError` when the node did
        not accept it.
        """
        if self._closed:
            raise ClosedError(f"cannot send on {self.topic!r}: the subscription was closed")
        if not self._entered:
            raise ClosedError(f"cannot send on {self.topic!r}: use 'async with' first")
        await self._gateway._publish(self.topic, message)

    async def close(self) -> None:
        """Leaves the channel; idempotent. Waiting :meth:`get_message` calls raise ClosedError."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._gateway._subscriptions.discard(self)
        if self._entered:
            try:
                await self._gateway._connection.unsubscribe(self.topic, self)
            except Exception:  # pragma: no cover - leaving never matters more than closing
                log.debug("leaving %s failed", self.topic, exc_info=True)

    # --- beyond the seed's protocol ------------------------------------------------------------

    async def get_event(self, timeout: float | None = None) -> Message | None:
        """The next :class:`~switchboard_client.Message` (event, payload, position), or None."""
        items = self._items
        if items and not self._closed and type(items[0]) is Message:
            return items.popleft()  # type: ignore[return-value]  # the common case, kept cheap
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed:
                raise ClosedError(f"the subscription to {self.topic!r} was closed")
            if items:
                item = items.popleft()
                if isinstance(item, Message):
                    return item
                gap = item if isinstance(item, Gap) else Gap(self.topic, "overflow", dropped=item.dropped)
                if isinstance(item, _Overflow):
                    self._record(gap)
                if self._raise_on_gap:
                    raise MessagesLostError(gap)
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, remaining)
            except asyncio.TimeoutError:
                return None
            finally:
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while not self._closed:
            message = await self.get_message()
            if message is not None:
                yield message

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def position(self) -> str | None:
        """The node's position of the last message received (topics with history), or None."""
        return self._gateway._connection.position(self.topic)

    @property
    def upstream_available(self) -> bool:
        """False when the node said at the last join that its Redis/PostgreSQL bridge was down
        (messages from other nodes arrive once it is back)."""
        return self._gateway._connection.upstream_available(self.topic)

    def presence(self) -> PresenceMap | None:
        """Who is present on the channel, ``{key: [meta, ...]}``; None while the node sends
        no presence for it."""
        return self._gateway._connection.presence(self.topic)

    # --- Listener ----------------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        if len(self._items) >= self._max_queue:
            last = self._items[-1]
            if not isinstance(last, _Overflow):
                last = _Overflow()
                self._items.append(last)
            last.dropped += 1
        else:
            self._items.append(message)
        self._wake()

    def on_gap(self, gap: Gap) -> None:
        self._record(gap)
        self._items.append(gap)
        self._wake()

    def _record(self, gap: Gap) -> None:
        self.gaps.append(gap)
        if gap.reason == "overflow":
            log.warning("%s", gap.describe())

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SwitchboardGateway:
    """Seed 000/001's ``PubSubGatewayProtocol`` over one connection to a node.

    ``url`` is the node's base URL (``http://127.0.0.1:4000``). ``token`` is the connect
    token your app signed (a string, or a function called at every (re)connect so an
    expiring token can be renewed); ``api_key`` is the node's key for ``POST /api/publish``.

    Publishing goes over the WebSocket, or over HTTP with the API key: ``publish_via``
    chooses, and defaults to HTTP when an API key is given (a producer that publishes to
    many users' channels should: it needs no socket and no membership per channel).
    The WebSocket is opened only when first needed.

    ``user`` names the socket on an open node (no ``--token-secret``): it is the socket's
    presence key, so it is listed on the presence topics it joins (nodes with tokens take
    the token's ``sub`` instead and ignore it). Without a token or ``user`` the socket joins
    presence topics as an observer.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        api_key: str | None = None,
        publish_via: PublishVia | None = None,
        max_queue: int = 10_000,
        raise_on_gap: bool = False,
        heartbeat_interval: float = 30.0,
        connect_timeout: float = 10.0,
        publish_timeout: float = 5.0,
        max_frame_bytes: int = 65536,
        user: str | None = None,
    ) -> None:
        self._connection = Connection(
            url,
            token=token,
            api_key=api_key,
            publish_via=publish_via,
            user=user,
            options=Options(
                heartbeat_interval=heartbeat_interval,
                connect_timeout=connect_timeout,
                publish_timeout=publish_timeout,
                max_frame_bytes=max_frame_bytes,
            ),
        )
        self._max_queue = max_queue
        self._raise_on_gap = raise_on_gap
        self._subscriptions: set[SwitchboardSubscription] = set()
        self.publish_failures = 0
        """How many publish_to_user_channel calls failed (each was logged)."""
        self.last_publish_error: PublishError | ConnectError | None = None

    @property
    def connection(self) -> Connection:
        """The shared socket (``reconnects``, ``connected``, ``base_url``)."""
        return self._connection

    async def publish_to_user_channel(
        self, user_id: UUID | str | int, channel_type: str, message: dict[str, Any]
    ) -> None:
        """Publishes ``message`` to ``{channel_type}:{user_id}`` (the seed's signature).

        Never raises on an outage: when the node is unreachable, times out, or could not
        hand the message to its Redis/PostgreSQL (other nodes' subscribers miss it), the
        failure is logged at ERROR and counted in :attr:`publish_failures`, so the caller's
        committed transaction is unaffected (seed 001's "publish after commit"). Use
        :meth:`try_publish_to_user_channel` to get the outcome as a bool. Input errors do
        raise: :class:`~switchboard_client.InvalidTopicError`,
        :class:`~switchboard_client.InvalidMessageError`,
        :class:`~switchboard_client.MessageTooLargeError`.
        """
        await self.try_publish_to_user_channel(user_id, channel_type, message)

    async def try_publish_to_user_channel(
        self, user_id: UUID | str | int, channel_type: str, message: dict[str, Any]
    ) -> bool:
        """:meth:`publish_to_user_channel`, returning True once the node accepted the
        message and False (logged) when it did not."""
        topic = user_channel(user_id, channel_type)
        try:
            await self._publish(topic, message)
        except (PublishError, ConnectError) as exc:
            self.publish_failures += 1
            self.last_publish_error = exc
            log.error("publish to %s failed: %s", topic, exc)
            return False
        return True

    def subscribe_to_user_channel(
        self, user_id: UUID | str | int, channel_type: str
    ) -> SwitchboardSubscription:
        """A context manager subscribed to ``{channel_type}:{user_id}`` while inside it."""
        topic = user_channel(user_id, channel_type)
        if self._connection.closed:
            raise ClosedError("the gateway was closed")
        return SwitchboardSubscription(
            self, topic, max_queue=self._max_queue, raise_on_gap=self._raise_on_gap
        )

    def join_presence(
        self,
        topic: str,
        meta: Meta | None = None,
        *,
        on_join: JoinCallback | None = None,
        on_leave: LeaveCallback | None = None,
        on_sync: SyncCallback | None = None,
        timeout: float | None = None,
    ) -> Presence:
        """The live presence list of ``topic``, joined with ``meta`` as what this socket says
        about itself: ``async with gateway.join_presence("room:lobby", {"status": "online"})
        as room:`` (or ``room = await gateway.join_presence(...)``, then ``await
        room.leave()``). See :class:`~switchboard_client.Presence`.

        ``meta`` is a JSON object without ``phx_`` fields (the node merges the token's
        ``info`` over it); ``None`` says nothing. Joining raises
        :class:`~switchboard_client.InvalidPresenceError`,
        :class:`~switchboard_client.NoPresenceError`,
        :class:`~switchboard_client.TooManyMembersError` or
        :class:`~switchboard_client.JoinError`.
        """
        topic = validate_topic(topic, self._connection.options.max_topic_bytes)
        if self._connection.closed:
            raise ClosedError("the gateway was closed")
        return Presence(
            self._connection,
            topic,
            meta,
            on_join=on_join,
            on_leave=on_leave,
            on_sync=on_sync,
            timeout=timeout,
        )

    async def fetch_presence(self, topic: str, *, timeout: float | None = None) -> PresenceSnapshot:
        """Who is on ``topic`` on every node, now: ``GET /api/presence`` with the gateway's
        ``api_key`` (no socket, no membership; for backends).

        Raises :class:`~switchboard_client.NoPresenceError` when the topic tracks no
        presence and :class:`~switchboard_client.PresenceError` otherwise (``code``:
        ``unauthorized`` without the right API key, ``unavailable`` when the node cannot read
        its backend, ``unreachable``, ``timeout``).
        """
        answer = await self._connection.list_presence(topic, timeout)
        return PresenceSnapshot.from_answer(topic, answer)

    async def close(self) -> None:
        """Closes every subscription and the connection."""
        for subscription in list(self._subscriptions):
            subscription._closed = True
            subscription._wake()
        self._subscriptions.clear()
        await self._connection.close()

    async def __aenter__(self) -> SwitchboardGateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _publish(self, topic: str, message: Any) -> None:
        await self._connection.publish(topic, message)
