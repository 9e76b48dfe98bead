"""Bad input gets a clear Python exception before anything reaches the node, through every
API, and the shared socket stays healthy afterwards."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from conftest import PATIENCE
from nodes import Node

from switchboard_client import (
    ClosedError,
    InvalidEventError,
    InvalidMessageError,
    InvalidTopicError,
    MessageTooLargeError,
    SwitchboardError,
    SwitchboardGateway,
    SwitchboardPubSub,
)

NOT_JSON: list[Any] = [
    {"at": datetime.datetime(2026, 1, 14)},
    {"ids": {1, 2}},
    {"x": float("nan")},
    {"x": float("inf")},
    {"obj": object()},
    {b"bytes-key": 1},
]

BAD_TOPICS = ["", "__keyspace@0__:x", "room:\x00", "room:\x1b[31m", "room:\x85", "x" * 256, "é" * 128, "\ud800"]


@pytest.mark.parametrize("message", NOT_JSON, ids=lambda m: type(next(iter(m.values()))).__name__)
async def test_non_json_messages_raise_invalid_message_error(node: Node, message: dict[str, Any]) -> None:
    async with SwitchboardGateway(node.url) as gateway:
        with pytest.raises(InvalidMessageError, match="not JSON-serialisable") as raised:
            await gateway.publish_to_user_channel("1", "auditlog", message)
        assert isinstance(raised.value, TypeError) and isinstance(raised.value, SwitchboardError)
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            with pytest.raises(InvalidMessageError):
                await sub.send_message(message)
            await sub.send_message({"still": "fine"})  # the socket is unharmed
            assert await sub.get_message(timeout=PATIENCE) == {"still": "fine"}
    assert gateway.publish_failures == 0  # an input error is not an outage


@pytest.mark.parametrize("topic", BAD_TOPICS, ids=range(len(BAD_TOPICS)))
async def test_invalid_topics_raise_invalid_topic_error(node: Node, topic: str) -> None:
    provider = SwitchboardPubSub(node.url)
    with pytest.raises(InvalidTopicError) as raised:
        await provider.subscribe_topic("s", topic, _ignore)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(InvalidTopicError):
        await provider.broadcast(topic, {"x": 1})
    await provider.stop()


async def test_invalid_user_channels(node: Node) -> None:
    gateway = SwitchboardGateway(node.url)
    with pytest.raises(InvalidTopicError, match="channel_type"):
        gateway.subscribe_to_user_channel(uuid.uuid4(), "")
    with pytest.raises(InvalidTopicError, match="user_id is empty"):
        await gateway.publish_to_user_channel("", "auditlog", {})
    with pytest.raises(InvalidTopicError, match="control character"):
        gateway.subscribe_to_user_channel("1\n2", "auditlog")
    with pytest.raises(InvalidTopicError, match="reserved"):
        gateway.subscribe_to_user_channel("1", "__redis__")
    await gateway.close()
    with pytest.raises(ClosedError):
        gateway.subscribe_to_user_channel("1", "auditlog")


async def test_too_large_messages(node: Node) -> None:
    big = {"blob": "x" * 70_000}
    async with SwitchboardGateway(node.url, publish_via="socket") as gateway:
        async with gateway.subscribe_to_user_channel("big", "auditlog") as sub:
            # Refused before sending: a frame over the node's limit would close the socket.
            with pytest.raises(MessageTooLargeError) as raised:
                await sub.send_message(big)
            assert raised.value.limit == 65536
            await sub.send_message({"small": True})
            assert await sub.get_message(timeout=PATIENCE) == {"small": True}
            assert gateway.connection.reconnects == 0
    # Over HTTP the node's own body limit answers 413.
    over_http = SwitchboardGateway(node.url, publish_via="http")
    with pytest.raises(MessageTooLargeError):
        await over_http.publish_to_user_channel("big", "auditlog", big)
    await over_http.close()


async def test_invalid_events_and_urls(node: Node) -> None:
    provider = SwitchboardPubSub(node.url)
    for event in ("", "phx_join", "phx_reply"):
        with pytest.raises(InvalidEventError):
            await provider.publish("room:1", {"x": 1}, event=event)
    await provider.stop()
    for url in ("localhost:4000", "redis://127.0.0.1:6379", "/socket"):
        with pytest.raises(ValueError):
            SwitchboardGateway(url)
    with pytest.raises(ValueError):
        SwitchboardGateway(node.url, publish_via="pigeon")  # type: ignore[arg-type]


async def _ignore(topic: str, message: Any) -> None:
    pass
