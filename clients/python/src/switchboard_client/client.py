"""Seed 003: the blocking ``PubSubClient`` API (``publish``, ``listen``, ``close``) and
``get_default_client()`` from the environment.

::

    from switchboard_client import get_default_client

    pubsub = get_default_client()              # SWITCHBOARD_URL=http://127.0.0.1:4000
    pubsub.publish("channel", {"data": "value"})   # True once the node accepted it

    stop = threading.Event()
    pubsub.listen("channel", print, stop)      # blocks until stop.set()

The client runs its connection on an event loop in a background thread, so it can be used
from plain threads (the seed's engine and API do); callbacks run in the thread that called
``listen``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from . import _http
from ._connection import Connection, Options, PublishVia, Token
from ._phoenix import dumps, validate_topic
from .errors import ClosedError, ConfigurationError, ConnectError, PublishError
from .presence import PresenceSnapshot
from .protocols import PubSubClient
from .types import Gap, Message

__all__ = ["SwitchboardClient", "get_default_client"]

log = logging.getLogger("switchboard_client")

T = TypeVar("T")

_STOP_POLL = 0.05
"""How often ``listen`` looks at its stop flag while no message comes (seconds)."""


class _QueueListener:
    def __init__(self, on_gap: Callable[[Gap], None] | None) -> None:
        self.queue: queue.SimpleQueue[Message | Gap] = queue.SimpleQueue()
        self.on_gap_callback = on_gap

    def on_message(self, message: Message) -> None:
        self.queue.put(message)

    def on_gap(self, gap: Gap) -> None:
        self.queue.put(gap)


class SwitchboardClient(PubSubClient):
    """Seed 003's ``PubSubClient`` on a Switchboard node (blocking, thread-safe).

    ``publish_via`` defaults to HTTP when an ``api_key`` is given, else the socket; see
    :class:`~switchboard_client.SwitchboardGateway` for ``token``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        api_key: str | None = None,
        publish_via: PublishVia | None = None,
        heartbeat_interval: float = 30.0,
        connect_timeout: float = 10.0,
        publish_timeout: float = 5.0,
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
            ),
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def connection(self) -> Connection:
        return self._connection

    def publish(self, channel: str, message: dict[str, Any]) -> bool:
        """Publishes ``message`` on ``channel``; True once the node accepted it.

        An outage (node unreachable, timeout, its Redis/PostgreSQL away) is logged and gives
        False. A message that is not JSON-serialisable or an invalid channel raises
        (:class:`~switchboard_client.InvalidMessageError`,
        :class:`~switchboard_client.InvalidTopicError`).
        """
        connection = self._connection
        topic = validate_topic(channel, connection.options.max_topic_bytes)
        payload_text = dumps(message)
        del payload_text  # validated; encoded again where it is sent
        if self._closed:
            raise ClosedError("the client was closed")
        try:
            if connection.publish_via == "http" or not isinstance(message, dict):
                _http.publish(
                    connection.base_url,
                    topic,
                    "message",
                    message,
                    api_key=connection.api_key,
                    timeout=connection.options.publish_timeout,
                )
            else:
                self._run(
                    connection.publish(topic, message),
                    connection.options.publish_timeout + 1.0,
                )
        except (PublishError, ConnectError) as exc:
            log.error("publish to %s failed: %s", topic, exc)
            return False
        return True

    def listen(
        self,
        channel: str,
        callback: Callable[[dict[str, Any]], None],
        stop_flag: threading.Event,
        *,
        on_gap: Callable[[Gap], None] | None = None,
    ) -> None:
        """Calls ``callback(message)`` for each JSON object published on ``channel`` until
        ``stop_flag`` is set; blocks the calling thread, where the callbacks run.

        Subscribed when this starts (:class:`~switchboard_client.JoinError` or
        :class:`~switchboard_client.ConnectError` if that fails), unsubscribed when it
        returns. Reconnects are transparent; a gap (messages lost across a reconnect) is
        logged and passed to ``on_gap`` if given. A callback that raises is logged and the
        loop goes on.
        """
        topic = validate_topic(channel, self._connection.options.max_topic_bytes)
        if self._closed:
            raise ClosedError("the client was closed")
        listener = _QueueListener(on_gap)
        self._run(
            self._connection.subscribe(topic, listener),
            self._connection.options.connect_timeout + self._connection.options.reply_timeout + 1,
        )
        try:
            while not stop_flag.is_set() and not self._closed:
                try:
                    item = listener.queue.get(timeout=_STOP_POLL)
                except queue.Empty:
                    continue
                if isinstance(item, Gap):
                    if on_gap is not None:
                        try:
                            on_gap(item)
                        except Exception:
                            log.exception("on_gap raised for %s", topic)
                    continue
                if not isinstance(item.payload, dict):
                    log.warning("%s: skipped a %s payload", topic, type(item.payload).__name__)
                    continue
                try:
                    callback(item.payload)
                except Exception:
                    log.exception("the listen callback for %s raised; listening goes on", topic)
        finally:
            if not self._closed:
                try:
                    self._run(self._connection.unsubscribe(topic, listener), 5.0)
                except Exception:
                    log.debug("unsubscribing from %s failed", topic, exc_info=True)

    def fetch_presence(self, channel: str, *, timeout: float | None = None) -> PresenceSnapshot:
        """Who is on ``channel`` on every node (``GET /api/presence`` with ``api_key``;
        blocking); see :meth:`SwitchboardGateway.fetch_presence
        <switchboard_client.SwitchboardGateway.fetch_presence>`."""
        connection = self._connection
        topic = validate_topic(channel, connection.options.max_topic_bytes)
        if self._closed:
            raise ClosedError("the client was closed")
        answer = _http.list_presence(
            connection.base_url,
            topic,
            api_key=connection.api_key,
            timeout=connection.options.publish_timeout if timeout is None else timeout,
        )
        return PresenceSnapshot.from_answer(topic, answer)

    def close(self) -> None:
        """Closes the connection and stops the background thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._connection.close(), loop).result(5.0)
        except Exception:
            log.debug("closing the connection failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        loop.close()

    def __enter__(self) -> SwitchboardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        loop = self._ensure_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SwitchboardClient's blocking methods cannot run on its own loop")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ConnectError(f"the node did not answer within {timeout}s") from None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise ClosedError("the client was closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="switchboard-client", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop


def get_default_client(environ: Mapping[str, str] | None = None) -> SwitchboardClient:
    """The client the environment describes (seed 003's factory).

    - ``SWITCHBOARD_URL`` (required): the node's base URL, e.g. ``http://127.0.0.1:4000``.
    - ``SWITCHBOARD_TOKEN``: connect token; ``SWITCHBOARD_API_KEY``: the node's API key
      (publishing then goes over HTTP); ``SWITCHBOARD_PUBLISH_VIA``: ``socket`` or ``http``;
      ``SWITCHBOARD_USER``: the socket's presence key on an open node (``user=``).
    - ``PUBSUB_BACKEND``: unset or ``switchboard``. The seed's ``redis`` / ``postgres`` chose
      what this process connected to, with a silent fallback from Redis to PostgreSQL. With
      Switchboard the process connects only to the node; which engine links the nodes is the
      node's setting (``--pubsub-backend``), and the node never falls back either. So any
      other value is a :class:`~switchboard_client.ConfigurationError`, not a guess;
      ``REDIS_URL`` and ``DATABASE_URL`` are not read here.
    """
    env = os.environ if environ is None else environ
    backend = env.get("PUBSUB_BACKEND", "").strip().lower()
    if backend not in ("", "switchboard"):
        raise ConfigurationError(
            f"PUBSUB_BACKEND={env.get('PUBSUB_BACKEND')!r}: this process talks to a Switchboard "
            "node only. Give the node the backend instead (switchboard --pubsub-backend "
            f"{backend} ...) and set PUBSUB_BACKEND=switchboard, or unset it, here."
        )
    url = env.get("SWITCHBOARD_URL", "").strip()
    if not url:
        raise ConfigurationError(
            "SWITCHBOARD_URL is not set: give the node's base URL, e.g. "
            "SWITCHBOARD_URL=http://127.0.0.1:4000 (there is no fallback)"
        )
    via = env.get("SWITCHBOARD_PUBLISH_VIA", "").strip().lower() or None
    if via not in (None, "socket", "http"):
        raise ConfigurationError(f"SWITCHBOARD_PUBLISH_VIA={via!r}: use 'socket' or 'http'")
    try:
        return SwitchboardClient(
            url,
            token=env.get("SWITCHBOARD_TOKEN") or None,
            api_key=env.get("SWITCHBOARD_API_KEY") or None,
            publish_via="http" if via == "http" else "socket" if via == "socket" else None,
            user=env.get("SWITCHBOARD_USER") or None,
        )
    except ValueError as exc:
        raise ConfigurationError(f"SWITCHBOARD_URL={url!r} / SWITCHBOARD_USER: {exc}") from None
