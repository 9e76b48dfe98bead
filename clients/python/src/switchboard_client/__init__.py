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
  multiplexing, gaps, publishing over the socket, presence joins and updates.
- ``_http``: ``POST /api/publish`` and ``GET /api/presence`` with the standard library.
- ``presence``: :class:`Presence` (a topic's live member list, phoenix.js' ``Presence``) and
  :class:`PresenceSnapshot` (one reading of ``GET /api/presence``).
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
    InvalidPresenceError,
    InvalidTopicError,
    JoinError,
    MessagesLostError,
    MessageTooLargeError,
    NoPresenceError,
    PresenceError,
    PublishError,
    SwitchboardError,
    TooManyMembersError,
)
from .gateway import SwitchboardGateway, SwitchboardSubscription
from .presence import (
    JoinCallback,
    LeaveCallback,
    Meta,
    Presence,
    PresenceEntry,
    PresenceMap,
    PresenceSnapshot,
    SyncCallback,
)
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
    "InvalidPresenceError",
    "InvalidTopicError",
    "JoinCallback",
    "JoinError",
    "LeaveCallback",
    "Message",
    "MessageTooLargeError",
    "MessagesLostError",
    "Meta",
    "NoPresenceError",
    "Presence",
    "PresenceEntry",
    "PresenceError",
    "PresenceMap",
    "PresenceSnapshot",
    "PublishError",
    "SwitchboardClient",
    "SwitchboardError",
    "SwitchboardGateway",
    "SwitchboardPubSub",
    "SwitchboardSubscription",
    "SyncCallback",
    "TooManyMembersError",
    "get_default_client",
]
