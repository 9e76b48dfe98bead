"""Switchboard for the seeds' Python applications: the APIs they already call, on one
Phoenix Channels V2 WebSocket to a Switchboard node.

- :class:`SwitchboardGateway`: seeds 000/001's ``PubSubGatewayProtocol``
  (``publish_to_user_channel``, ``subscribe_to_user_channel`` as an async context manager).
- :class:`SwitchboardClient` and :func:`get_default_client`: seed 003's blocking
  ``PubSubClient`` (``publish``, ``listen``, ``close``), configured from the environment.
- :class:`SwitchboardPubSub`: seeds 002/004's PyView ``PubSubProvider``.

# Layout

- ``_phoenix``: the wire format, pure (frames, topic rules, positions, presence sync).
- ``_connection``: the one socket per client object: heartbeats, reconnects, rejoins,
  multiplexing, gaps, publishing over the socket.
- ``_http``: ``POST /api/publish`` with the standard library.
- ``gateway``, ``client``, ``pyview``: the three seed APIs on top.
- ``types``, ``errors``, ``protocols``: what applications see and type against.
"""

from ._connection import Connection
from .client import SwitchboardClient, get_default_client
from .errors import (
    ClosedError,
    ConfigurationError,
    ConnectError,
    InvalidEventError,
    InvalidMessageError,
    InvalidTopicError,
    JoinError,
    MessagesLostError,
    MessageTooLargeError,
    PublishError,
    SwitchboardError,
)
from .gateway import SwitchboardGateway, SwitchboardSubscription
from .pyview import SwitchboardPubSub
from .types import Gap, Message

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConfigurationError",
    "ConnectError",
    "Connection",
    "Gap",
    "InvalidEventError",
    "InvalidMessageError",
    "InvalidTopicError",
    "JoinError",
    "Message",
    "MessageTooLargeError",
    "MessagesLostError",
    "PublishError",
    "SwitchboardClient",
    "SwitchboardError",
    "SwitchboardGateway",
    "SwitchboardPubSub",
    "SwitchboardSubscription",
    "get_default_client",
]
