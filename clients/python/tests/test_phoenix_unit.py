"""The pure wire layer: topic rules (the node's, from core/src/topic.rs), frames, positions,
presence synchronisation (phoenix.js' syncState / syncDiff)."""

from __future__ import annotations

import pytest

from switchboard_client import InvalidMessageError, InvalidTopicError, MessageTooLargeError
from switchboard_client._connection import base_url
from switchboard_client._phoenix import (
    Frame,
    Position,
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
    state.sync_diff({"joins": {"carol": {"metas": [{"phx_ref": "c1"}]}}, "leaves": {}})
    state.sync_state({"alice": {"metas": [{"phx_ref": "a1"}]}, "bob": {"metas": [{"phx_ref": "b1"}]}})
    assert state.snapshot() == {
        "alice": [{"phx_ref": "a1"}],
        "bob": [{"phx_ref": "b1"}],
        "carol": [{"phx_ref": "c1"}],
    }
    state.sync_diff(
        {
            "joins": {"alice": {"metas": [{"phx_ref": "a2"}]}},
            "leaves": {"bob": {"metas": [{"phx_ref": "b1"}]}, "nobody": {"metas": [{"phx_ref": "n"}]}},
        }
    )
    assert state.snapshot() == {
        "alice": [{"phx_ref": "a1"}, {"phx_ref": "a2"}],
        "carol": [{"phx_ref": "c1"}],
    }
    state.sync_diff({"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": "a1"}]}}})
    assert state.snapshot() == {"alice": [{"phx_ref": "a2"}], "carol": [{"phx_ref": "c1"}]}
    state.reset()
    assert state.snapshot() is None


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
