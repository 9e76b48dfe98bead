"""Seed 000's tests, by name, against a real node, plus the protocol's basics.

The five named in the seed: test_send_message_through_subscription,
test_bidirectional_communication, test_send_message_after_close_raises_error,
test_send_and_publish_are_equivalent, test_context_manager_cleanup.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import PATIENCE, eventually
from nodes import Node

from switchboard_client import (
    ClosedError,
    ConnectError,
    JoinError,
    SwitchboardGateway,
    SwitchboardSubscription,
)
from switchboard_client.protocols import PubSubGatewayProtocol, PubSubSubscription

ENTRY = {
    "id": "5f0e4c1e-0000-4000-8000-000000000001",
    "activity_type": "TASK_COMPLETED",
    "occurred_at": "2026-01-14T10:00:00Z",
    "entity_type": "task",
    "meta": {"action_created_at": "2026-01-14T10:00:00Z"},
}


def test_the_gateway_is_the_seeds_protocol(node: Node) -> None:
    # Statically checked by mypy --strict over this file; at run time, the names exist.
    gateway: PubSubGatewayProtocol = SwitchboardGateway(node.url)
    subscription: PubSubSubscription = gateway.subscribe_to_user_channel(uuid.uuid4(), "auditlog")
    assert isinstance(subscription, SwitchboardSubscription)


async def test_publish_and_receive(node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            assert sub.topic == f"auditlog:{user_id}"
            await gateway.publish_to_user_channel(user_id, "auditlog", ENTRY)
            assert await sub.get_message(timeout=PATIENCE) == ENTRY


async def test_get_message_times_out_with_none(node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            started = asyncio.get_running_loop().time()
            assert await sub.get_message(timeout=0.2) is None
            assert asyncio.get_running_loop().time() - started >= 0.19


async def test_channels_are_isolated_per_user_and_type(node: Node) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    async with SwitchboardGateway(node.url) as gateway:
        async with (
            gateway.subscribe_to_user_channel(alice, "auditlog") as alice_log,
            gateway.subscribe_to_user_channel(bob, "auditlog") as bob_log,
            gateway.subscribe_to_user_channel(alice, "notification") as alice_notes,
        ):
            await gateway.publish_to_user_channel(bob, "auditlog", {"to": "bob"})
            await gateway.publish_to_user_channel(alice, "notification", {"to": "alice-notes"})
            assert await bob_log.get_message(timeout=PATIENCE) == {"to": "bob"}
            assert await alice_notes.get_message(timeout=PATIENCE) == {"to": "alice-notes"}
            assert await alice_log.get_message(timeout=0.3) is None


async def test_messages_arrive_in_order(node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            for i in range(50):
                await gateway.publish_to_user_channel(user_id, "auditlog", {"i": i})
            got = [await sub.get_message(timeout=PATIENCE) for _ in range(50)]
            assert got == [{"i": i} for i in range(50)]


async def test_send_message_through_subscription(node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            await sub.send_message({"response": "ok"})
            # Like Redis pub/sub, the sender's own subscription receives what it sends.
            assert await sub.get_message(timeout=PATIENCE) == {"response": "ok"}


async def test_bidirectional_communication(node: Node, user_id: uuid.UUID) -> None:
    # Two parties on separate connections (a service and a relay), each sending and receiving.
    async with SwitchboardGateway(node.url) as service, SwitchboardGateway(node.url) as relay:
        async with (
            service.subscribe_to_user_channel(user_id, "auditlog") as a,
            relay.subscribe_to_user_channel(user_id, "auditlog") as b,
        ):
            await a.send_message({"from": "a", "n": 1})
            assert await b.get_message(timeout=PATIENCE) == {"from": "a", "n": 1}
            await b.send_message({"from": "b", "ack": 1})
            assert await a.get_message(timeout=PATIENCE) == {"from": "a", "n": 1}  # own echo
            assert await a.get_message(timeout=PATIENCE) == {"from": "b", "ack": 1}
            assert await b.get_message(timeout=PATIENCE) == {"from": "b", "ack": 1}


async def test_send_message_after_close_raises_error(node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            await sub.send_message({"before": "close"})
        with pytest.raises(ClosedError):
            await sub.send_message({"after": "close"})
        with pytest.raises(ClosedError):
            await sub.get_message(timeout=0.1)
        other = gateway.subscribe_to_user_channel(user_id, "auditlog")
        await other.close()  # closed before ever entered
        with pytest.raises(ClosedError):
            await other.send_message({"x": 1})


async def test_send_and_publish_are_equivalent(node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(node.url) as gateway, SwitchboardGateway(node.url) as producer:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            await sub.send_message({"via": "x"})
            sent = await sub.get_event(timeout=PATIENCE)
            await producer.publish_to_user_channel(user_id, "auditlog", {"via": "x"})
            published = await sub.get_event(timeout=PATIENCE)
            assert sent is not None and published is not None
            assert (sent.topic, sent.event, sent.payload) == (
                published.topic,
                published.event,
                published.payload,
            )
            assert sent.event == "message"


async def test_context_manager_cleanup(fresh_node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(fresh_node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            assert fresh_node.metrics()["switchboard_subscriptions"] == 1
            assert not sub.closed
        assert sub.closed
        # The node unsubscribed the socket (the gauge is updated as the leave is handled).
        await eventually(lambda: fresh_node.metrics()["switchboard_subscriptions"] == 0)
        assert fresh_node.metrics()["switchboard_connections"] == 1
        # Cleanup also on an exception inside the block.
        with pytest.raises(RuntimeError):
            async with gateway.subscribe_to_user_channel(user_id, "auditlog"):
                assert fresh_node.metrics()["switchboard_subscriptions"] == 1
                raise RuntimeError("boom")
        await eventually(lambda: fresh_node.metrics()["switchboard_subscriptions"] == 0)
    await eventually(lambda: fresh_node.metrics()["switchboard_connections"] == 0)


async def test_subscriptions_share_one_socket_and_one_join(fresh_node: Node, user_id: uuid.UUID) -> None:
    async with SwitchboardGateway(fresh_node.url) as gateway:
        async with (
            gateway.subscribe_to_user_channel(user_id, "auditlog") as one,
            gateway.subscribe_to_user_channel(user_id, "auditlog") as two,
            gateway.subscribe_to_user_channel(user_id, "notification"),
        ):
            metrics = fresh_node.metrics()
            assert metrics["switchboard_connections"] == 1
            assert metrics["switchboard_subscriptions"] == 2
            await gateway.publish_to_user_channel(user_id, "auditlog", {"n": 1})
            assert await one.get_message(timeout=PATIENCE) == {"n": 1}
            assert await two.get_message(timeout=PATIENCE) == {"n": 1}
            await one.close()
            await gateway.publish_to_user_channel(user_id, "auditlog", {"n": 2})
            assert await two.get_message(timeout=PATIENCE) == {"n": 2}
            assert fresh_node.metrics()["switchboard_subscriptions"] == 2


async def test_publish_over_http_and_socket(node: Node, user_id: uuid.UUID) -> None:
    async with (
        SwitchboardGateway(node.url) as listener,
        SwitchboardGateway(node.url, publish_via="http") as over_http,
        SwitchboardGateway(node.url, publish_via="socket") as over_socket,
    ):
        async with listener.subscribe_to_user_channel(user_id, "auditlog") as sub:
            assert await over_http.try_publish_to_user_channel(user_id, "auditlog", {"via": "http"})
            assert await over_socket.try_publish_to_user_channel(user_id, "auditlog", {"via": "socket"})
            assert not over_http.connection.connected  # HTTP needs no socket
            assert await sub.get_message(timeout=PATIENCE) == {"via": "http"}
            assert await sub.get_message(timeout=PATIENCE) == {"via": "socket"}


async def test_async_iteration_and_raw_payloads(node: Node, user_id: uuid.UUID) -> None:
    topic = f"auditlog:{user_id}"
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            node.http_publish(topic, "a raw string")  # as `redis-cli PUBLISH` of non-JSON arrives
            node.http_publish(topic, {"kept": True}, event="task_completed")
            event = await sub.get_event(timeout=PATIENCE)
            assert event is not None and event.payload == "a raw string"
            async for message in sub:
                assert message == {"kept": True}
                break


async def test_publish_never_raises_on_an_outage(user_id: uuid.UUID) -> None:
    stopped = Node()
    url = stopped.url
    stopped.close()
    for via in ("socket", "http"):
        gateway = SwitchboardGateway(url, publish_via=via, connect_timeout=0.5, publish_timeout=0.5)
        started = asyncio.get_running_loop().time()
        await gateway.publish_to_user_channel(user_id, "auditlog", ENTRY)  # returns, logs
        assert gateway.publish_failures == 1
        assert not await gateway.try_publish_to_user_channel(user_id, "auditlog", ENTRY)
        assert asyncio.get_running_loop().time() - started < 3
        await gateway.close()
    gateway = SwitchboardGateway(url, connect_timeout=0.5)
    with pytest.raises(ConnectError):
        async with gateway.subscribe_to_user_channel(user_id, "auditlog"):
            pass
    await gateway.close()


async def test_tokens_rules_and_api_key() -> None:
    secret = "s" * 40
    node = Node(
        "--token-secret",
        secret,
        "--api-key",
        "producer-key",
        "--config",
        _rules_file(),
    )
    try:
        token = node.token("42", secret)
        async with SwitchboardGateway(node.url, token=token, publish_via="socket") as user:
            async with user.subscribe_to_user_channel("42", "auditlog") as mine:
                with pytest.raises(JoinError) as refused:
                    async with user.subscribe_to_user_channel("43", "auditlog"):
                        pass
                assert refused.value.reason == "unauthorized"
                # A producer with the API key publishes over HTTP.
                producer = SwitchboardGateway(node.url, api_key="producer-key")
                assert await producer.try_publish_to_user_channel("42", "auditlog", {"n": 1})
                assert await mine.get_message(timeout=PATIENCE) == {"n": 1}
                wrong = SwitchboardGateway(node.url, api_key="wrong")
                assert not await wrong.try_publish_to_user_channel("42", "auditlog", {"n": 2})
                assert wrong.last_publish_error is not None
                assert getattr(wrong.last_publish_error, "code", None) == "unauthorized"
                # The user may not push to auditlog (push = "nobody"): reported, not raised.
                assert not await user.try_publish_to_user_channel("42", "auditlog", {"n": 3})
        # A token renewed at every connect: a callable.
        calls: list[int] = []

        def fresh_token() -> str:
            calls.append(1)
            return node.token("42", secret)

        async with SwitchboardGateway(node.url, token=fresh_token) as renewing:
            async with renewing.subscribe_to_user_channel("42", "auditlog"):
                assert calls
        bad = SwitchboardGateway(node.url, token="not-a-token")
        with pytest.raises(ConnectError) as refused_socket:
            async with bad.subscribe_to_user_channel("42", "auditlog"):
                pass
        assert refused_socket.value.status == 401
        await bad.close()
    finally:
        node.close()


def _rules_file() -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write('[channels.auditlog]\njoin = "owner"\npush = "nobody"\n')
        return f.name
