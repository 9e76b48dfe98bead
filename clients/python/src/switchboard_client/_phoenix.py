"""The Phoenix Channels V2 JSON wire format, pure: no I/O, no clock, no event loop.

- topic and event rules (the node's, so a bad name fails here with a clear exception
  instead of as an error reply or a closed socket),
- frame encoding and decoding,
- history positions ``"<offset>:<epoch>"`` and the decision to drop a replayed duplicate,
- presence state, synchronised from ``presence_state`` / ``presence_diff`` the way
  phoenix.js' ``Presence.syncState`` / ``syncDiff`` do.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

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
#
# phoenix.js' ``Presence.syncState`` / ``Presence.syncDiff`` (``assets/js/phoenix/presence.js``
# of the ``phoenix`` npm package, 1.8), ported line for line, and the ``Presence`` class's
# handling of the two events: diffs that arrive while the list is not in sync with the
# channel's current join wait for that join's ``presence_state``. A key's presence is kept as
# its list of metas (phoenix.js keeps ``{metas: [...]}``); every other difference is in names
# only. ``tests/test_presence_vectors.py`` replays sequences recorded from phoenix.js itself.

Meta = dict[str, Any]
"""One member's meta: the node's fields (``info`` over the join's ``presence``) and
``phx_ref`` (plus ``phx_ref_prev`` in the diff of a meta update)."""

PresenceMap = dict[str, list[Meta]]
"""A presence list: ``{key: [meta, ...]}``, one meta per joined socket of that key."""


class PresenceChange(NamedTuple):
    """One call phoenix.js makes to ``onJoin`` or ``onLeave`` while syncing.

    - ``kind == "join"``: ``current`` is the key's metas before the join (``None`` when the
      key was absent), ``metas`` the joined ones.
    - ``kind == "leave"``: ``current`` is the key's metas that remain (``[]`` when the key is
      gone), ``metas`` the ones that left.
    """

    kind: Literal["join", "leave"]
    key: str
    current: list[Meta] | None
    metas: list[Meta]


def parse_presences(value: Any) -> PresenceMap:
    """``{key: {"metas": [...]}}`` (a ``presence_state``, or a diff's ``joins``/``leaves``)
    as ``{key: [meta, ...]}``, skipping malformed entries (never raises)."""
    if not isinstance(value, dict):
        return {}
    out: PresenceMap = {}
    for key, entry in value.items():
        metas = entry.get("metas") if isinstance(entry, dict) else None
        if isinstance(metas, list):
            out[str(key)] = [m for m in metas if isinstance(m, dict)]
    return out


def _ref(meta: Meta) -> Any:
    return meta.get("phx_ref")


def _clone(metas: list[Meta]) -> list[Meta]:
    return copy.deepcopy(metas)


def sync_state(
    state: PresenceMap, new_state: PresenceMap, changes: list[PresenceChange] | None = None
) -> PresenceMap:
    """``Presence.syncState(currentState, newState, onJoin, onLeave)``: the new list, with the
    joins and leaves that turn ``state`` into ``new_state`` appended to ``changes``. Neither
    argument is modified."""
    state = dict(state)  # lists and metas are never changed in place, only replaced
    joins: PresenceMap = {}
    leaves: PresenceMap = {}
    for key, metas in state.items():
        if key not in new_state:
            leaves[key] = metas
    for key, new_metas in new_state.items():
        current = state.get(key)
        if current is not None:
            new_refs = [_ref(m) for m in new_metas]
            cur_refs = [_ref(m) for m in current]
            joined = [m for m in new_metas if _ref(m) not in cur_refs]
            left = [m for m in current if _ref(m) not in new_refs]
            if joined:
                joins[key] = joined
            if left:
                leaves[key] = left
        else:
            joins[key] = new_metas
    return sync_diff(state, joins, leaves, changes)


def sync_diff(
    state: PresenceMap,
    joins: PresenceMap,
    leaves: PresenceMap,
    changes: list[PresenceChange] | None = None,
) -> PresenceMap:
    """``Presence.syncDiff(state, {joins, leaves}, onJoin, onLeave)``: joins first, then
    leaves. Updates and returns ``state`` (replacing its lists, never changing one in place);
    the calls phoenix.js would make to ``onJoin`` and ``onLeave`` are appended to
    ``changes``, with copies of their arguments as they were at the call."""
    for key, new_metas in joins.items():
        current = state.get(key)
        metas = list(new_metas)
        if current is not None:
            joined_refs = [_ref(m) for m in metas]
            metas = [m for m in current if _ref(m) not in joined_refs] + metas
        state[key] = metas
        if changes is not None:
            before = _clone(current) if current is not None else None
            changes.append(PresenceChange("join", key, before, _clone(new_metas)))
    for key, left_metas in leaves.items():
        current = state.get(key)
        if current is None:
            continue
        refs_to_remove = [_ref(m) for m in left_metas]
        remaining = [m for m in current if _ref(m) not in refs_to_remove]
        state[key] = remaining
        if changes is not None:
            changes.append(PresenceChange("leave", key, _clone(remaining), _clone(left_metas)))
        if not remaining:
            del state[key]
    return state


class PresenceState:
    """One topic's list as phoenix.js' ``Presence`` keeps it on a channel.

    ``presence_state`` syncs the list to the new one (``syncState``: members missing from it
    leave, new ones join, so a state after a rejoin leaves no member of the old connection
    behind); ``presence_diff`` applies joins then leaves. A diff that arrives while the list
    is not in sync with the channel's current join (before the first state, or after a rejoin
    was sent and before its state) waits for that state and is applied right after it.
    """

    def __init__(self) -> None:
        self._state: PresenceMap = {}
        self._known = False
        self._join_ref: str | None = None
        self._pending: list[Any] = []

    @property
    def known(self) -> bool:
        """True once a ``presence_state`` arrived (the node offers presence on the topic)."""
        return self._known

    @property
    def join_ref(self) -> str | None:
        """The channel's join the list was last synced for (phoenix.js' ``joinRef``)."""
        return self._join_ref

    def synced(self, join_ref: str | None) -> bool:
        """True when the list is in sync with the channel's join ``join_ref``."""
        return self._known and self._join_ref == join_ref

    @property
    def state(self) -> PresenceMap:
        """The list itself (not a copy: read it, do not change it)."""
        return self._state

    def snapshot(self) -> PresenceMap | None:
        """A copy of the list, or ``None`` while no ``presence_state`` ever arrived."""
        if not self._known:
            return None
        return {key: _clone(metas) for key, metas in self._state.items()}

    def reset(self) -> None:
        """Forget everything: the topic no longer offers presence."""
        self._state = {}
        self._known = False
        self._join_ref = None
        self._pending = []

    def on_state(self, payload: Any, join_ref: str | None) -> list[PresenceChange]:
        """A ``presence_state`` arrived while the channel's join is ``join_ref``."""
        changes: list[PresenceChange] = []
        self._join_ref = join_ref
        self._known = True
        self._state = sync_state(self._state, parse_presences(payload), changes)
        pending, self._pending = self._pending, []
        for diff in pending:
            self._apply(diff, changes)
        return changes

    def on_diff(self, payload: Any, join_ref: str | None) -> list[PresenceChange] | None:
        """A ``presence_diff`` arrived while the channel's join is ``join_ref``: the changes
        it made, or ``None`` when it waits for that join's state."""
        if not self.synced(join_ref):
            self._pending.append(payload)
            return None
        changes: list[PresenceChange] = []
        self._apply(payload, changes)
        return changes

    def _apply(self, diff: Any, changes: list[PresenceChange]) -> None:
        if not isinstance(diff, dict):
            diff = {}
        joins = parse_presences(diff.get("joins"))
        leaves = parse_presences(diff.get("leaves"))
        self._state = sync_diff(self._state, joins, leaves, changes)
