"""The Phoenix Channels V2 JSON wire format, pure: no I/O, no clock, no event loop.

- topic and event rules (the node's, so a bad name fails here with a clear exception
  instead of as an error reply or a closed socket),
- frame encoding and decoding,
- history positions ``"<offset>:<epoch>"`` and the decision to drop a replayed duplicate,
- presence state, synchronised from ``presence_state`` / ``presence_diff`` the way
  phoenix.js' ``Presence.syncState`` / ``syncDiff`` do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import InvalidEventError, InvalidMessageError, InvalidTopicError, MessageTooLargeError

MAX_TOPIC_BYTES = 255
"""The node's default ``--max-topic-bytes``."""

MAX_FRAME_BYTES = 65536
"""The node's default ``--max-frame-bytes``: a larger frame closes the whole socket (1009)."""

SERVER_EVENTS = frozenset({"phx_reply", "phx_close", "phx_error", "phx_join", "phx_leave"})
PRESENCE_EVENTS = frozenset({"presence_state", "presence_diff"})


def validate_topic(topic: object, max_bytes: int = MAX_TOPIC_BYTES) -> str:
    """Returns ``topic`` if the node accepts it, else raises :class:`InvalidTopicError`."""
    if not isinstance(topic, str):
        raise InvalidTopicError(topic, f"a topic is a str, not {type(topic).__name__}")
    if not topic:
        raise InvalidTopicError(topic, "topic is empty")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidTopicError(topic, f"not encodable as UTF-8 ({exc.reason})") from None
    if size > max_bytes:
        raise InvalidTopicError(topic, f"{size} bytes, over the limit of {max_bytes}")
    for index, char in enumerate(topic):
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise InvalidTopicError(topic, f"control character {char!r} at index {index}")
    if topic.startswith("__"):
        raise InvalidTopicError(topic, "topics starting with '__' are reserved")
    return topic


def validate_event(event: object) -> str:
    """Returns ``event`` if a client may publish it, else raises :class:`InvalidEventError`."""
    if not isinstance(event, str):
        raise InvalidEventError(f"an event is a str, not {type(event).__name__}")
    if not event:
        raise InvalidEventError("event is empty")
    if event.startswith("phx_"):
        raise InvalidEventError(f"event {event!r}: phx_ events belong to the protocol")
    return event


def dumps(value: Any) -> str:
    """Compact JSON, or :class:`InvalidMessageError` naming what is not serialisable."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"message is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidMessageError("message is not JSON-serialisable: nested too deeply") from None


def encode_frame(
    join_ref: str | None,
    ref: str | None,
    topic: str,
    event: str,
    payload: Any,
    max_bytes: int = MAX_FRAME_BYTES,
) -> str:
    """``[join_ref, ref, topic, event, payload]`` as text, checked against ``max_bytes``."""
    text = dumps([join_ref, ref, topic, event, payload])
    size = len(text.encode("utf-8")) if not text.isascii() else len(text)
    if size > max_bytes:
        raise MessageTooLargeError(
            f"the frame for {topic!r} would be {size} bytes, over the node's frame limit of "
            f"{max_bytes} (a larger frame makes the node close the socket)",
            size=size,
            limit=max_bytes,
        )
    return text


class Frame(NamedTuple):
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def decode_frame(text: str | bytes) -> Frame | None:
    """A frame the node sent, or ``None`` when it is not a V2 frame (never raises)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or len(value) != 5:
        return None
    join_ref, ref, topic, event, payload = value
    if not (join_ref is None or isinstance(join_ref, str)):
        return None
    if not (ref is None or isinstance(ref, str)):
        return None
    if not isinstance(topic, str) or not isinstance(event, str):
        return None
    return Frame(join_ref, ref, topic, event, payload)


@dataclass(frozen=True, order=False)
class Position:
    """A publication's place in a topic's history: ``offset`` counts within ``epoch``."""

    offset: int
    epoch: str

    @classmethod
    def parse(cls, text: object) -> Position | None:
        if not isinstance(text, str):
            return None
        offset, sep, epoch = text.partition(":")
        if not sep or not offset.isdigit():
            return None
        return cls(int(offset), epoch)

    def __str__(self) -> str:
        return f"{self.offset}:{self.epoch}"

    def is_after(self, other: Position | None) -> bool:
        """True when a publication at ``self`` is new to a reader that saw ``other``.

        A different epoch means the history was reset: whatever comes is new.
        """
        return other is None or other.epoch != self.epoch or self.offset > other.offset


# --- presence ---------------------------------------------------------------------------------

PresenceMap = dict[str, list[dict[str, Any]]]


class PresenceState:
    """Who is present on a topic: ``{key: [meta, ...]}`` (each meta carries ``phx_ref``).

    ``presence_state`` replaces the state; ``presence_diff`` adds ``joins`` and removes
    ``leaves`` by ``phx_ref``. Diffs that arrive before the first state are held and applied
    after it, as phoenix.js does.
    """

    def __init__(self) -> None:
        self._state: PresenceMap | None = None
        self._pending: list[Any] = []

    @property
    def known(self) -> bool:
        """True once the node sent a ``presence_state`` for this topic."""
        return self._state is not None

    def snapshot(self) -> PresenceMap | None:
        if self._state is None:
            return None
        return {key: [dict(meta) for meta in metas] for key, metas in self._state.items()}

    def reset(self) -> None:
        """Forget everything (the membership ended; a rejoin gets a fresh state)."""
        self._state = None
        self._pending = []

    def sync_state(self, payload: Any) -> None:
        self._state = {}
        for key, entry in _entries(payload):
            self._state[key] = list(entry)
        pending, self._pending = self._pending, []
        for diff in pending:
            self.sync_diff(diff)

    def sync_diff(self, payload: Any) -> None:
        if self._state is None:
            self._pending.append(payload)
            return
        if not isinstance(payload, dict):
            return
        for key, joined in _entries(payload.get("joins")):
            joined_refs = {m.get("phx_ref") for m in joined}
            kept = [m for m in self._state.get(key, []) if m.get("phx_ref") not in joined_refs]
            self._state[key] = kept + list(joined)
        for key, left in _entries(payload.get("leaves")):
            if key not in self._state:
                continue
            left_refs = {m.get("phx_ref") for m in left}
            remaining = [m for m in self._state[key] if m.get("phx_ref") not in left_refs]
            if remaining:
                self._state[key] = remaining
            else:
                del self._state[key]


def _entries(value: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """``{key: {"metas": [...]}}`` as ``[(key, metas)]``, skipping malformed entries."""
    if not isinstance(value, dict):
        return []
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for key, entry in value.items():
        metas = entry.get("metas") if isinstance(entry, dict) else None
        if isinstance(metas, list):
            out.append((str(key), [m for m in metas if isinstance(m, dict)]))
    return out
