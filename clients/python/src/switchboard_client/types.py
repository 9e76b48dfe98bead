"""Values handed to applications: a received :class:`Message` and a :class:`Gap` in a stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = ["Gap", "GapReason", "Message"]

GapReason = Literal["no_history", "not_recovered", "overflow"]
"""Why a stream has a gap:

- ``no_history``: the connection dropped and was re-established, and the node keeps no
  history for the topic, so whatever was published while it was down is lost (at-most-once,
  as with Redis pub/sub). The client cannot know whether anything was published meanwhile.
- ``not_recovered``: the node keeps history, but could not replay everything since the last
  position this client saw (too much was published, or the node's history was reset: a new
  epoch). The node answered ``recovered: false``.
- ``overflow``: the application read more slowly than messages arrived and the
  subscription's bounded local queue was full; messages were dropped here, in this process.
"""


class Message(NamedTuple):
    """One broadcast received on a topic.

    ``payload`` is the published JSON value (an object for everything sent through this
    client's socket path; any JSON value from HTTP or Redis producers). ``position`` is the
    node's ``"<offset>:<epoch>"`` for topics with history, else ``None``.
    """

    topic: str
    event: str
    payload: Any
    position: str | None = None


@dataclass(frozen=True)
class Gap:
    """Messages of ``topic`` were lost between ``since`` and ``position`` (positions are
    ``None`` when the node keeps no history for the topic)."""

    topic: str
    reason: GapReason
    since: str | None = None
    position: str | None = None
    dropped: int = 0

    def describe(self) -> str:
        """A sentence for logs and exception messages."""
        if self.reason == "no_history":
            return (
                f"{self.topic}: the connection to the node was re-established; the node keeps "
                "no history for this topic, so messages published meanwhile are lost"
            )
        if self.reason == "not_recovered":
            return (
                f"{self.topic}: the node could not replay the messages since {self.since} "
                f"(now at {self.position}); reload from your own source"
            )
        return (
            f"{self.topic}: {self.dropped} message(s) dropped because the application did not "
            "read them fast enough (the subscription's queue was full)"
        )
