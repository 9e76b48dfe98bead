# PyView's RedisPubSub and PostgresPubSub, copied verbatim from seed 004.
#
# Source: PyView's guide "Custom Pub/Sub Backends" (/work/shared/seeds/004_da6326c6d28a3b0d.txt
# on the development machines): its two code blocks `redis_pubsub.py` and `postgres_pubsub.py`,
# concatenated exactly as written (so each block's imports, `logger` and `TopicHandler` appear
# twice). The interop tests (tests/pyview/interop.py, tests/tests/pyview_interop.rs) run this
# code as a PyView app would, to prove Switchboard's `--envelope pyview` shares topics with it.
#
# DO NOT EDIT BELOW THIS COMMENT: the point is to test the seed's code unchanged. Its known
# problems are worked around from outside, in interop.py, and documented there:
# - RedisPubSub.start() before the first subscribe_topic: redis-py's listen() returns at once on
#   a PubSub with no subscriptions, so the listener task ends; interop.py starts `_listen()`
#   again after the first subscribe.
# - PostgresPubSub.broadcast() cannot work with asyncpg: `NOTIFY <channel>, $1` is a syntax
#   error (NOTIFY takes a string literal, not a bind parameter), and an unquoted channel with
#   ':' (or any character outside an SQL identifier) is a syntax error too.

# redis_pubsub.py
import asyncio
import json
import logging
from typing import Any, Callable, Coroutine

import redis.asyncio as redis

logger = logging.getLogger(__name__)

TopicHandler = Callable[[str, Any], Coroutine[Any, Any, None]]


class RedisPubSub:
    """Redis-backed pub/sub for multi-instance PyView deployments.

    Requirements:
        pip install redis

    Usage:
        from redis_pubsub import RedisPubSub

        app = PyView(pubsub=RedisPubSub("redis://localhost:6379"))

    How it works:
        - Handlers are stored locally (they're Python callables, not serializable)
        - When broadcast() is called, the message is published to Redis
        - All instances receive the message and dispatch to their local handlers
        - This enables real-time updates across multiple server instances
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        channel_prefix: str = "pyview:",
    ):
        """Initialize Redis pub/sub.

        Args:
            url: Redis connection URL
            channel_prefix: Prefix for Redis channel names (helps avoid collisions)
        """
        self._url = url
        self._prefix = channel_prefix
        self._client: redis.Redis | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._listener_task: asyncio.Task | None = None

        # Local handler tracking (handlers can't be serialized to Redis)
        self._lock = asyncio.Lock()
        # topic -> {session_id -> handler}
        self._topic_subscribers: dict[str, dict[str, TopicHandler]] = {}
        # session_id -> {topic -> handler}
        self._session_topics: dict[str, dict[str, TopicHandler]] = {}

    async def start(self) -> None:
        """Connect to Redis and start the message listener."""
        self._client = redis.from_url(self._url)
        self._pubsub = self._client.pubsub()
        self._listener_task = asyncio.create_task(self._listen())
        logger.info("Redis pub/sub connected to %s", self._url)

    async def stop(self) -> None:
        """Disconnect from Redis and clean up."""
        if self._listener_task:
            self._listener_task.cancel()
            try:
                await self._listener_task
            except asyncio.CancelledError:
                pass

        if self._pubsub:
            await self._pubsub.close()

        if self._client:
            await self._client.close()

        logger.info("Redis pub/sub disconnected")

    async def subscribe_topic(
        self,
        session_id: str,
        topic: str,
        handler: TopicHandler,
    ) -> None:
        """Subscribe a session to a topic."""
        channel = f"{self._prefix}{topic}"

        async with self._lock:
            # Track handler locally
            if topic not in self._topic_subscribers:
                self._topic_subscribers[topic] = {}
                # First local subscriber - subscribe to Redis channel
                await self._pubsub.subscribe(channel)
                logger.debug("Subscribed to Redis channel: %s", channel)

            self._topic_subscribers[topic][session_id] = handler

            # Track for session cleanup
            if session_id not in self._session_topics:
                self._session_topics[session_id] = {}
            self._session_topics[session_id][topic] = handler

    async def unsubscribe_topic(self, session_id: str, topic: str) -> None:
        """Unsubscribe a session from a topic."""
        channel = f"{self._prefix}{topic}"

        async with self._lock:
            if topic in self._topic_subscribers:
                self._topic_subscribers[topic].pop(session_id, None)

                if not self._topic_subscribers[topic]:
                    # Last local subscriber - unsubscribe from Redis
                    del self._topic_subscribers[topic]
                    await self._pubsub.unsubscribe(channel)
                    logger.debug("Unsubscribed from Redis channel: %s", channel)

            if session_id in self._session_topics:
                self._session_topics[session_id].pop(topic, None)
                if not self._session_topics[session_id]:
                    del self._session_topics[session_id]

    async def unsubscribe_all(self, session_id: str) -> None:
        """Remove all subscriptions for a session (called on disconnect)."""
        async with self._lock:
            if session_id not in self._session_topics:
                return

            for topic in list(self._session_topics[session_id].keys()):
                channel = f"{self._prefix}{topic}"

                if topic in self._topic_subscribers:
                    self._topic_subscribers[topic].pop(session_id, None)

                    if not self._topic_subscribers[topic]:
                        del self._topic_subscribers[topic]
                        await self._pubsub.unsubscribe(channel)

            del self._session_topics[session_id]

    async def broadcast(self, topic: str, message: Any) -> None:
        """Publish a message to all subscribers across all instances."""
        channel = f"{self._prefix}{topic}"
        # Include topic in payload for routing on receive
        payload = json.dumps({"topic": topic, "message": message})
        await self._client.publish(channel, payload)

    async def _listen(self) -> None:
        """Background task that receives Redis messages and dispatches to handlers."""
        try:
            async for message in self._pubsub.listen():
                if message["type"] != "message":
                    continue

                try:
                    data = json.loads(message["data"])
                    topic = data["topic"]
                    payload = data["message"]

                    # Get handlers while holding lock
                    async with self._lock:
                        handlers = list(
                            self._topic_subscribers.get(topic, {}).values()
                        )

                    # Dispatch outside lock to prevent deadlocks
                    for handler in handlers:
                        asyncio.create_task(handler(topic, payload))

                except json.JSONDecodeError:
                    logger.warning("Invalid JSON in Redis message: %s", message["data"])
                except Exception:
                    logger.exception("Error processing Redis message")

        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("Redis listener crashed")


# postgres_pubsub.py
import asyncio
import json
import logging
from typing import Any, Callable, Coroutine

import asyncpg

logger = logging.getLogger(__name__)

TopicHandler = Callable[[str, Any], Coroutine[Any, Any, None]]


class PostgresPubSub:
    """PostgreSQL NOTIFY/LISTEN pub/sub backend.

    Requirements:
        pip install asyncpg

    Usage:
        app = PyView(pubsub=PostgresPubSub("postgresql://user:pass@localhost/db"))

    Pros:
        - No additional infrastructure if you already use PostgreSQL
        - Transactional guarantees available if needed

    Cons:
        - Lower throughput than Redis
        - Not designed for high-volume pub/sub
    """

    def __init__(self, dsn: str, channel_prefix: str = "pyview_"):
        self._dsn = dsn
        self._prefix = channel_prefix
        self._conn: asyncpg.Connection | None = None
        self._listen_conn: asyncpg.Connection | None = None

        self._lock = asyncio.Lock()
        self._topic_subscribers: dict[str, dict[str, TopicHandler]] = {}
        self._session_topics: dict[str, dict[str, TopicHandler]] = {}
        self._subscribed_channels: set[str] = set()

    async def start(self) -> None:
        """Connect to PostgreSQL."""
        # Separate connections for publish and listen
        self._conn = await asyncpg.connect(self._dsn)
        self._listen_conn = await asyncpg.connect(self._dsn)
        logger.info("PostgreSQL pub/sub connected")

    async def stop(self) -> None:
        """Disconnect from PostgreSQL."""
        if self._conn:
            await self._conn.close()
        if self._listen_conn:
            await self._listen_conn.close()
        logger.info("PostgreSQL pub/sub disconnected")

    async def subscribe_topic(
        self,
        session_id: str,
        topic: str,
        handler: TopicHandler,
    ) -> None:
        """Subscribe to a topic using LISTEN."""
        channel = f"{self._prefix}{topic}"

        async with self._lock:
            if topic not in self._topic_subscribers:
                self._topic_subscribers[topic] = {}

                if channel not in self._subscribed_channels:
                    await self._listen_conn.add_listener(
                        channel, self._make_listener(topic)
                    )
                    self._subscribed_channels.add(channel)

            self._topic_subscribers[topic][session_id] = handler

            if session_id not in self._session_topics:
                self._session_topics[session_id] = {}
            self._session_topics[session_id][topic] = handler

    def _make_listener(self, topic: str):
        """Create a listener callback for a topic."""
        def listener(conn, pid, channel, payload):
            asyncio.create_task(self._handle_notification(topic, payload))
        return listener

    async def _handle_notification(self, topic: str, payload: str) -> None:
        """Handle incoming NOTIFY."""
        try:
            message = json.loads(payload)

            async with self._lock:
                handlers = list(self._topic_subscribers.get(topic, {}).values())

            for handler in handlers:
                asyncio.create_task(handler(topic, message))
        except Exception:
            logger.exception("Error handling PostgreSQL notification")

    async def unsubscribe_topic(self, session_id: str, topic: str) -> None:
        """Unsubscribe from a topic."""
        channel = f"{self._prefix}{topic}"

        async with self._lock:
            if topic in self._topic_subscribers:
                self._topic_subscribers[topic].pop(session_id, None)

                if not self._topic_subscribers[topic]:
                    del self._topic_subscribers[topic]
                    if channel in self._subscribed_channels:
                        await self._listen_conn.remove_listener(channel, None)
                        self._subscribed_channels.discard(channel)

            if session_id in self._session_topics:
                self._session_topics[session_id].pop(topic, None)
                if not self._session_topics[session_id]:
                    del self._session_topics[session_id]

    async def unsubscribe_all(self, session_id: str) -> None:
        """Remove all subscriptions for a session."""
        async with self._lock:
            if session_id not in self._session_topics:
                return

            for topic in list(self._session_topics[session_id].keys()):
                channel = f"{self._prefix}{topic}"

                if topic in self._topic_subscribers:
                    self._topic_subscribers[topic].pop(session_id, None)

                    if not self._topic_subscribers[topic]:
                        del self._topic_subscribers[topic]
                        if channel in self._subscribed_channels:
                            await self._listen_conn.remove_listener(channel, None)
                            self._subscribed_channels.discard(channel)

            del self._session_topics[session_id]

    async def broadcast(self, topic: str, message: Any) -> None:
        """Broadcast using NOTIFY."""
        channel = f"{self._prefix}{topic}"
        payload = json.dumps(message)
        # PostgreSQL NOTIFY has an 8000 byte payload limit
        await self._conn.execute(f"NOTIFY {channel}, $1", payload)
