"""Connection life against a real node: a node restart in the middle of a subscription,
heartbeats against the node's idle timeout, and what a gap looks like to each API."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from conftest import PATIENCE, eventually, topic_name
from nodes import Node

from switchboard_client import (
    Gap,
    MessagesLostError,
    SwitchboardClient,
    SwitchboardGateway,
    SwitchboardPubSub,
)


async def test_node_restart_in_the_middle_of_a_subscription(fresh_node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(fresh_node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            await sub.send_message({"n": 1})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 1}

            fresh_node.restart()  # SIGTERM (close 1001), then a new process on the same port
            await eventually(lambda: gateway.connection.reconnects == 1, what="a reconnect")
            await eventually(lambda: gateway.connection.joined(sub.topic), what="the rejoin")
            assert fresh_node.metrics()["switchboard_subscriptions"] == 1

            # The node keeps no history: the client says messages may have been lost...
            assert [g.reason for g in sub.gaps] == ["no_history"]
            # ...and the subscription carries on: publishes from anyone reach it again.
            fresh_node.http_publish(sub.topic, {"n": 2})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 2}
            await sub.send_message({"n": 3})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 3}


async def test_publish_waits_for_a_reconnect_within_its_timeout(fresh_node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(fresh_node.url, publish_via="socket") as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            fresh_node.stop()
            await eventually(lambda: not gateway.connection.connected)
            publish = asyncio.create_task(gateway.try_publish_to_user_channel(user_id, "auditlog", {"n": 1}))
            await asyncio.sleep(0.3)
            fresh_node.restart()
            assert await asyncio.wait_for(publish, PATIENCE)
            assert await sub.get_message(timeout=PATIENCE) == {"n": 1}


async def test_raise_on_gap_raises_once_at_the_gap(fresh_node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(fresh_node.url, raise_on_gap=True) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            fresh_node.http_publish(sub.topic, {"before": 1})
            await eventually(lambda: len(sub._items) == 1)
            fresh_node.restart()  # blocks the loop: the client notices the close afterwards
            await eventually(lambda: gateway.connection.reconnects == 1 and gateway.connection.joined(sub.topic))
            fresh_node.http_publish(sub.topic, {"after": 1})
            assert await sub.get_message(timeout=PATIENCE) == {"before": 1}
            with pytest.raises(MessagesLostError) as lost:
                await sub.get_message(timeout=PATIENCE)
            assert lost.value.gap.reason == "no_history" and lost.value.gap.topic == sub.topic
            assert await sub.get_message(timeout=PATIENCE) == {"after": 1}


async def test_pyview_provider_survives_a_restart(fresh_node: Node) -> None:
    gaps: list[Gap] = []
    provider = SwitchboardPubSub(fresh_node.url, on_gap=gaps.append)
    await provider.start()
    topics = [topic_name("a"), topic_name("b")]
    got: list[tuple[str, Any]] = []

    async def handler(topic: str, message: Any) -> None:
        got.append((topic, message))

    for index, topic in enumerate(topics):
        await provider.subscribe_topic(f"s{index}", topic, handler)
    fresh_node.restart()
    await eventually(
        lambda: provider.connection.reconnects == 1 and all(provider.connection.joined(t) for t in topics),
        what="every topic rejoined",
    )
    assert sorted(g.topic for g in gaps) == sorted(topics)
    for topic in topics:
        await provider.broadcast(topic, {"t": topic})
    await eventually(lambda: len(got) == 2)
    assert sorted(got) == sorted((t, {"t": t}) for t in topics)
    await provider.stop()


def test_listen_survives_a_restart(fresh_node: Node) -> None:
    channel = topic_name()
    client = SwitchboardClient(fresh_node.url)
    got: list[dict[str, Any]] = []
    gaps: list[Gap] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: client.listen(channel, got.append, stop, on_gap=gaps.append), daemon=True
    )
    thread.start()
    try:
        _wait(lambda: client.connection.joined(channel))
        fresh_node.restart()
        _wait(lambda: client.connection.reconnects == 1 and client.connection.joined(channel))
        assert client.publish(channel, {"after": "restart"})
        _wait(lambda: got == [{"after": "restart"}] and len(gaps) == 1)
    finally:
        stop.set()
        thread.join(PATIENCE)
        client.close()


async def test_heartbeats_keep_an_idle_socket_open() -> None:
    node = Node("--idle-timeout", "1s")
    try:
        beating = SwitchboardGateway(node.url, heartbeat_interval=0.3)
        silent = SwitchboardGateway(node.url, heartbeat_interval=30)
        async with beating.subscribe_to_user_channel("1", "auditlog"), silent.subscribe_to_user_channel("2", "auditlog"):
            await asyncio.sleep(2.2)
            # The node closed the silent one for idleness (it reconnected); not the other.
            assert silent.connection.reconnects >= 1
            assert beating.connection.reconnects == 0
        await beating.close()
        await silent.close()
    finally:
        node.close()


def _wait(check: Any) -> None:
    import time

    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.01)
