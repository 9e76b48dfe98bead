"""Every exception the package raises.

All of them derive from :class:`SwitchboardError`. Mistakes in the caller's input derive from
``ValueError`` or ``TypeError`` as well, so code that already catches those keeps working:

==============================  ==========================================================
exception                       raised when
==============================  ==========================================================
:class:`InvalidTopicError`      a topic (or channel type / user id making one) breaks the
                                node's rules: empty, over 255 bytes, a control character,
                                starting with ``__``
:class:`InvalidEventError`      an event name is empty, not a string or a ``phx_`` event
:class:`InvalidMessageError`    a message is not JSON-serialisable (``TypeError``)
:class:`MessageTooLargeError`   a message is over the frame or body limit
:class:`ConfigurationError`     ``get_default_client()`` finds a missing or contradictory
                                environment
:class:`ClosedError`            a subscription or client is used after ``close()``
:class:`ConnectError`           the node could not be reached, or refused the WebSocket
                                upgrade (bad token, origin, too many connections)
:class:`JoinError`              the node refused a subscription (``unauthorized``, ...)
:class:`PublishError`           the node did not accept a message (outage, refusal,
                                timeout)
:class:`MessagesLostError`      ``get_message()`` reached a gap that could not be recovered,
                                with ``raise_on_gap=True``
:class:`PresenceError`          the node refused a presence join or update, or could not
                                list a topic's members (``code`` says why)
:class:`InvalidPresenceError`   a presence meta the node refuses: not a JSON object, a
                                ``phx_`` field, over the node's size limit
:class:`NoPresenceError`        the topic tracks no presence (``presence = true`` is not set
                                for its namespace)
:class:`TooManyMembersError`    the topic has its node's limit of presence members
==============================  ==========================================================

"Outage" errors are :class:`ConnectError` and :class:`PublishError`: the producer paths
(``publish_to_user_channel``, ``PubSubClient.publish``, ``SwitchboardPubSub.broadcast``)
log them and report failure instead of raising.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import Gap

__all__ = [
    "ClosedError",
    "ConfigurationError",
    "ConnectError",
    "InvalidEventError",
    "InvalidMessageError",
    "InvalidPresenceError",
    "InvalidTopicError",
    "JoinError",
    "MessageTooLargeError",
    "MessagesLostError",
    "NoPresenceError",
    "PresenceError",
    "PublishError",
    "SwitchboardError",
    "TooManyMembersError",
]


class SwitchboardError(Exception):
    """Base class of every exception raised by ``switchboard_client``."""


class InvalidTopicError(SwitchboardError, ValueError):
    """A topic breaks the node's rules; ``str()`` says which."""

    def __init__(self, topic: object, problem: str) -> None:
        super().__init__(f"invalid topic {topic!r}: {problem}")
        self.topic = topic
        self.problem = problem


class InvalidEventError(SwitchboardError, ValueError):
    """An event name the node would refuse."""


class InvalidMessageError(SwitchboardError, TypeError):
    """A message that cannot be sent as JSON (a set, a datetime, NaN, ...)."""


class MessageTooLargeError(SwitchboardError, ValueError):
    """A message over the node's frame limit (socket) or body limit (HTTP)."""

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class ConfigurationError(SwitchboardError, ValueError):
    """The environment read by ``get_default_client()`` is missing or contradictory."""


class ClosedError(SwitchboardError, RuntimeError):
    """The subscription or client was closed; nothing more can be sent or received."""


class ConnectError(SwitchboardError):
    """The node could not be reached in time, or refused the WebSocket upgrade.

    ``status`` is the HTTP status of a refused upgrade (401 bad token, 403 origin, 503 too
    many connections), ``None`` when the node was unreachable.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JoinError(SwitchboardError):
    """The node answered a join with an error; ``reason`` is the node's reason."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"the node refused to subscribe to {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class PublishError(SwitchboardError):
    """The node did not accept a message.

    ``code`` is the node's error code (``upstream_unavailable``, ``unauthorized``, ...) or one
    of the client's own: ``unreachable``, ``timeout``, ``connection_lost``.
    ``delivered_locally`` is true when the node delivered the message to its own subscribers
    but could not hand it to Redis/PostgreSQL, so other nodes did not get it.
    ``recipients`` is the number of local sockets it was queued for, when the node said.
    """

    def __init__(
        self,
        topic: str,
        code: str,
        message: str,
        *,
        delivered_locally: bool = False,
        recipients: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"publish to {topic!r} failed ({code}): {message}")
        self.topic = topic
        self.code = code
        self.delivered_locally = delivered_locally
        self.recipients = recipients
        self.status = status


class MessagesLostError(SwitchboardError):
    """Messages of a subscription were lost and could not be recovered.

    Raised once by ``get_message()`` at the point of the gap when the subscription was made
    with ``raise_on_gap=True``; the subscription stays usable, what follows is live. Reload
    what you show from your own source of truth, then keep reading. ``gap`` says why.
    """

    def __init__(self, gap: Gap) -> None:
        super().__init__(gap.describe())
        self.gap = gap


class PresenceError(SwitchboardError):
    """The node refused a presence join or update, or could not list a topic's members.

    ``code`` says why, ``reason`` is the node's own words (or the client's, for the client's
    codes):

    - ``invalid_meta`` (:class:`InvalidPresenceError`), ``no_presence``
      (:class:`NoPresenceError`), ``too_many_members`` (:class:`TooManyMembersError`);
    - ``no_key``: the socket has no presence key, so it cannot say anything about itself
      (connect with a token, whose ``sub`` is the key, or on an open node with ``user=``);
    - ``not_member``: the socket is not (or no longer) a member of the topic;
    - ``unavailable``: the node cannot read or write the topic's members now (its
      Redis/PostgreSQL is unreachable; HTTP 503 ``presence_unavailable``);
    - ``unauthorized`` (HTTP 401: a missing or wrong API key), ``unreachable``, ``timeout``,
      ``connection_lost``, or another code the node answered.

    ``status`` is the HTTP status for :meth:`~switchboard_client.SwitchboardGateway.fetch_presence`.
    """

    def __init__(self, topic: str, code: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"presence on {topic!r} failed ({code}): {reason}")
        self.topic = topic
        self.code = code
        self.reason = reason
        self.status = status


class InvalidPresenceError(PresenceError, ValueError):
    """A presence meta the node refuses (or would): not a JSON object, a ``phx_`` field (they
    belong to the protocol), or over the node's ``--presence-max-meta-bytes`` (1024 by
    default, merged with the token's ``info``)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(topic, "invalid_meta", reason)


class NoPresenceError(PresenceError):
    """The topic tracks no presence: its namespace has no ``presence = true`` in the node's
    configuration (a join with a meta is refused; ``GET /api/presence`` answers 404)."""

    def __init__(self, topic: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(topic, "no_presence", reason, status=status)


class TooManyMembersError(PresenceError):
    """The topic has the node's ``--presence-max-members`` members (across every node);
    ``limit`` is that bound when the node said it."""

    def __init__(self, topic: str, reason: str, *, limit: int | None = None) -> None:
        super().__init__(topic, "too_many_members", reason)
        self.limit = limit
