"""Two nodes sharing a private redis-server: each seed API on node A sees what is published
on node B, once; and a node whose Redis is away says so at the join."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from conftest import PATIENCE, eventually, topic_name
from nodes import Node, free_port

from switchboard_client import SwitchboardClient, SwitchboardGateway, SwitchboardPubSub


async def test_gateway_across_nodes(two_nodes: tuple[Node, Node], user_id: uuid.UUID) -> None:
    a, b = two_nodes
    async with (
        SwitchboardGateway(a.url) as on_a,
        SwitchboardGateway(b.url, publish_via="socket") as on_b_socket,
        SwitchboardGateway(b.url, publish_via="http") as on_b_http,
    ):
        async with on_a.subscribe_to_user_channel(user_id, "auditlog") as sub:
            assert sub.upstream_available
            assert await on_b_http.try_publish_to_user_channel(user_id, "auditlog", {"n": 1})
            assert await on_b_socket.try_publish_to_user_channel(user_id, "auditlog", {"n": 2})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 1}
            assert await sub.get_message(timeout=PATIENCE) == {"n": 2}
            # Replies from B come back across Redis to A's subscriber too.
            async with on_b_socket.subscribe_to_user_channel(user_id, "auditlog") as b_sub:
                await sub.send_message({"from": "a"})
                assert await b_sub.get_message(timeout=PATIENCE) == {"from": "a"}
                assert await sub.get_message(timeout=PATIENCE) == {"from": "a"}
                assert await sub.get_message(timeout=0.3) is None  # once, no echo from Redis


async def test_pyview_instances_on_two_nodes(two_nodes: tuple[Node, Node]) -> None:
    a, b = two_nodes
    topic = topic_name("counter")
    got: dict[str, list[Any]] = {}
    providers = [SwitchboardPubSub(a.url), SwitchboardPubSub(b.url)]
    for index, provider in enumerate(providers):
        await provider.start()
        for s in range(3):
            session = f"node{index}-session{s}"
            got[session] = []

            async def handler(t: str, message: Any, session: str = session) -> None:
                got[session].append(message)

            await provider.subscribe_topic(session, topic, handler)
    await providers[0].broadcast(topic, 1)
    await providers[1].broadcast(topic, {"count": 2})
    await eventually(lambda: all(len(v) == 2 for v in got.values()), what="six sessions, two messages each")
    await asyncio.sleep(0.3)
    for messages in got.values():
        assert sorted(map(str, messages)) == sorted(map(str, [1, {"count": 2}]))
    for provider in providers:
        await provider.stop()


def test_pubsub_client_across_nodes(two_nodes: tuple[Node, Node]) -> None:
    a, b = two_nodes
    channel = topic_name("jobs")
    listener, publisher = SwitchboardClient(a.url), SwitchboardClient(b.url)
    got: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = threading.Thread(target=listener.listen, args=(channel, got.append, stop), daemon=True)
    thread.start()
    try:
        import time

        deadline = time.monotonic() + PATIENCE
        while not listener.connection.joined(channel) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert publisher.publish(channel, {"job": 1})
        while len(got) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [{"job": 1}]
    finally:
        stop.set()
        thread.join(PATIENCE)
        listener.close()
        publisher.close()


async def test_join_while_redis_is_away_says_so(user_id: uuid.UUID) -> None:
    node = Node("--redis-url", f"redis://127.0.0.1:{free_port()}")
    try:
        async with SwitchboardGateway(node.url) as gateway:
            async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
                assert not sub.upstream_available
                # Local delivery goes on; a publish that cannot reach other nodes is a failure.
                assert not await gateway.try_publish_to_user_channel(user_id, "auditlog", {"n": 1})
                error = gateway.last_publish_error
                assert error is not None and getattr(error, "delivered_locally", False)
                assert await sub.get_message(timeout=PATIENCE) == {"n": 1}
    finally:
        node.close()
