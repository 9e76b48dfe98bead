"""The seeds' own interfaces, as the applications declare them, so a type checker proves that
this package's classes fit where the applications expect them:

- :class:`PubSubSubscription` and :class:`PubSubGatewayProtocol` (seeds 000/001),
- :class:`PubSubClient` (seed 003, an abstract base class there too),
- :class:`PubSubProvider` and :data:`TopicHandler` (seeds 002/004).

Applications keep their own copies; these are structurally identical.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, TypeVar
from uuid import UUID

__all__ = [
    "PubSubClient",
    "PubSubGatewayProtocol",
    "PubSubProvider",
    "PubSubSubscription",
    "TopicHandler",
]

_S = TypeVar("_S", bound="PubSubSubscription")

TopicHandler = Callable[[str, Any], Coroutine[Any, Any, None]]


class PubSubSubscription(Protocol):
    """Seed 000: a subscription that is an async context manager and can send."""

    async def __aenter__(self: _S) -> _S: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None: ...

    async def send_message(self, message: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class PubSubGatewayProtocol(Protocol):
    """Seeds 000/001: publish to and subscribe to ``{channel_type}:{user_id}``."""

    async def publish_to_user_channel(
        self, user_id: UUID, channel_type: str, message: dict[str, Any]
    ) -> None: ...

    def subscribe_to_user_channel(self, user_id: UUID, channel_type: str) -> PubSubSubscription: ...


class PubSubClient(ABC):
    """Seed 003: one blocking client API whatever carries the messages."""

    @abstractmethod
    def publish(self, channel: str, message: dict[str, Any]) -> bool: ...

    @abstractmethod
    def listen(
        self,
        channel: str,
        callback: Callable[[dict[str, Any]], None],
        stop_flag: threading.Event,
    ) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class PubSubProvider(Protocol):
    """Seeds 002/004: PyView's pluggable pub/sub."""

    async def subscribe_topic(self, session_id: str, topic: str, handler: TopicHandler) -> None: ...

    async def unsubscribe_topic(self, session_id: str, topic: str) -> None: ...

    async def unsubscribe_all(self, session_id: str) -> None: ...

    async def broadcast(self, topic: str, message: Any) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
