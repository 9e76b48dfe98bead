"""The pure wire layer: topic rules (the node's, from core/src/topic.rs), frames, positions,
presence synchronisation (phoenix.js' syncState / syncDiff) and presence input checks."""

from __future__ import annotations

import pytest

from switchboard_client import InvalidMessageError, InvalidTopicError, MessageTooLargeError
from switchboard_client._connection import base_url
from switchboard_client._phoenix import (
    Frame,
    Position,
    PresenceChange,
    PresenceState,
    decode_frame,
    encode_frame,
    validate_topic,
)


@pytest.mark.parametrize("topic", ["room:lobby", "auditlog:123e4567-e89b-12d3-a456-426614174000", "a", "x" * 255, "é" * 127, "_x", "phoenix:1", "emoji:🙂"])
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "empty"),
        ("x" * 256, "over the limit"),
        ("é" * 128, "256 bytes"),
        ("a\tb", "control character"),
        ("a\x7f", "control character"),
        ("a\x9f", "control character"),
        ("__keyspace@0__:x", "reserved"),
        ("\udc00", "UTF-8"),
        (42, "a topic is a str"),
    ],
)
def test_invalid_topics(topic: object, problem: str) -> None:
    with pytest.raises(InvalidTopicError, match=problem):
        validate_topic(topic)


def test_frames_round_trip_and_limits() -> None:
    text = encode_frame("1", "2", "room:1", "new_msg", {"body": "héllo"})
    assert text == '["1","2","room:1","new_msg",{"body":"héllo"}]'
    assert decode_frame(text) == Frame("1", "2", "room:1", "new_msg", {"body": "héllo"})
    with pytest.raises(MessageTooLargeError):
        encode_frame(None, None, "t", "e", {"x": "é" * 40_000})  # 80 kB of UTF-8
    with pytest.raises(InvalidMessageError):
        encode_frame(None, None, "t", "e", {"x": {1, 2}})
    for bad in ["", "{}", "[1,2,3,4,5]", '[null,null,"t","e"]', "not json", '[null,1,"t","e",{}]']:
        assert decode_frame(bad) is None


def test_positions() -> None:
    p = Position.parse("17:abc")
    assert p == Position(17, "abc") and str(p) == "17:abc"
    assert Position.parse("x:abc") is None and Position.parse("17") is None and Position.parse(None) is None
    assert Position(18, "abc").is_after(p) and not Position(17, "abc").is_after(p)
    assert Position(1, "new-epoch").is_after(p)  # a reset history: new
    assert Position(1, "abc").is_after(None)


def test_presence_sync_like_phoenix_js() -> None:
    state = PresenceState()
    assert state.snapshot() is None and not state.known
    # A diff before the state is held, then applied after it.
    assert state.on_diff({"joins": {"carol": {"metas": [{"phx_ref": "c1"}]}}, "leaves": {}}, "1") is None
    changes = state.on_state({"alice": {"metas": [{"phx_ref": "a1"}]}, "bob": {"metas": [{"phx_ref": "b1"}]}}, "1")
    assert [(c.kind, c.key) for c in changes] == [("join", "alice"), ("join", "bob"), ("join", "carol")]
    assert state.snapshot() == {
        "alice": [{"phx_ref": "a1"}],
        "bob": [{"phx_ref": "b1"}],
        "carol": [{"phx_ref": "c1"}],
    }
    changes = state.on_diff(
        {
            "joins": {"alice": {"metas": [{"phx_ref": "a2"}]}},
            "leaves": {"bob": {"metas": [{"phx_ref": "b1"}]}, "nobody": {"metas": [{"phx_ref": "n"}]}},
        },
        "1",
    ) or []
    assert changes == [
        PresenceChange("join", "alice", [{"phx_ref": "a1"}], [{"phx_ref": "a2"}]),
        PresenceChange("leave", "bob", [], [{"phx_ref": "b1"}]),
    ]
    assert state.snapshot() == {
        "alice": [{"phx_ref": "a1"}, {"phx_ref": "a2"}],
        "carol": [{"phx_ref": "c1"}],
    }
    # A rejoin (join "2"): diffs wait for its state, which replaces the list the way
    # syncState does: who is not in it leaves (no zombie), then the held diff applies.
    assert state.on_diff({"joins": {"dan": {"metas": [{"phx_ref": "d1"}]}}, "leaves": {}}, "2") is None
    assert not state.synced("2") and state.snapshot() is not None  # the last list, meanwhile
    changes = state.on_state({"alice": {"metas": [{"phx_ref": "a2"}]}}, "2")
    assert state.synced("2")
    assert [(c.kind, c.key, c.current, c.metas) for c in changes] == [
        ("leave", "carol", [], [{"phx_ref": "c1"}]),
        ("leave", "alice", [{"phx_ref": "a2"}], [{"phx_ref": "a1"}]),
        ("join", "dan", None, [{"phx_ref": "d1"}]),
    ]
    assert state.snapshot() == {"alice": [{"phx_ref": "a2"}], "dan": [{"phx_ref": "d1"}]}
    state.reset()
    assert state.snapshot() is None


def test_presence_meta_and_user_checks() -> None:
    from switchboard_client import InvalidPresenceError
    from switchboard_client._connection import check_meta, check_user, presence_error

    assert check_meta("room:1", {"status": "on", "n": [1]}) == {"status": "on", "n": [1]}
    for bad in [1, "x", None, {"phx_ref": "x"}, {"t": {1, 2}}, {1: "x"}]:
        with pytest.raises(InvalidPresenceError):
            check_meta("room:1", bad)
    assert check_user(None) is None and check_user("ada") == "ada"
    for bad_user in ["", "x" * 257, 5]:
        with pytest.raises(ValueError):
            check_user(bad_user)
    error = presence_error("room:1", "too many members: the topic has its limit of 3 presence members")
    assert error is not None and error.code == "too_many_members" and getattr(error, "limit") == 3
    assert presence_error("room:1", "unauthorized") is None


def test_base_urls() -> None:
    assert base_url("http://127.0.0.1:4000/") == "http://127.0.0.1:4000"
    assert base_url("wss://rt.example.com/prefix/") == "https://rt.example.com/prefix"
    for bad in ["127.0.0.1:4000", "redis://x:6379", "http://"]:
        with pytest.raises(ValueError):
            base_url(bad)


def test_websocket_url_carries_vsn_and_token() -> None:
    from switchboard_client import Connection

    assert (
        Connection("http://127.0.0.1:4000", token="a b&c").ws_url()
        == "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0&token=a+b%26c"
    )
    assert Connection("https://rt.example.com/rt").ws_url() == "wss://rt.example.com/rt/socket/websocket?vsn=2.0.0"
    assert Connection("http://h:1", token=lambda: "fresh").ws_url().endswith("token=fresh")
    assert Connection("http://h:1", user="Ada L").ws_url().endswith("vsn=2.0.0&user=Ada+L")
