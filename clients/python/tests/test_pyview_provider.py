"""Seeds 002/004: ``SwitchboardPubSub`` as PyView's ``PubSubProvider``, with several sessions
the way PyView drives it (its ``SessionPubSub`` wrapper, the counter LiveView of seed 004),
against a real node."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import PATIENCE, eventually, topic_name
from nodes import Node

from switchboard_client import InvalidMessageError, InvalidTopicError, JoinError, SwitchboardPubSub
from switchboard_client.protocols import PubSubProvider, TopicHandler


class SessionPubSub:
    """Seed 002's session-scoped wrapper, verbatim in behaviour."""

    def __init__(self, provider: PubSubProvider, session_id: str):
        self._provider = provider
        self._session_id = session_id

    async def subscribe(self, topic: str, handler: TopicHandler) -> None:
        await self._provider.subscribe_topic(self._session_id, topic, handler)

    async def unsubscribe(self, topic: str) -> None:
        await self._provider.unsubscribe_topic(self._session_id, topic)

    async def unsubscribe_all(self) -> None:
        await self._provider.unsubscribe_all(self._session_id)

    async def broadcast(self, topic: str, message: Any) -> None:
        await self._provider.broadcast(topic, message)


class CounterSession:
    """Seed 004's CounterLiveView, one per connected browser: mount subscribes, the event
    handler broadcasts, handle_info updates the context."""

    def __init__(self, provider: PubSubProvider, session_id: str, topic: str) -> None:
        self.pubsub = SessionPubSub(provider, session_id)
        self.topic = topic
        self.context: dict[str, Any] = {"count": 0}
        self.infos: list[Any] = []

    async def mount(self) -> None:
        await self.pubsub.subscribe(self.topic, self._topic_callback)

    async def handle_event(self, event: str) -> None:
        if event == "increment":
            self.context["count"] += 1
            await self.pubsub.broadcast(self.topic, self.context["count"])

    async def _topic_callback(self, topic: str, message: Any) -> None:
        self.infos.append(message)
        self.context["count"] = message


async def test_several_sessions_one_socket(fresh_node: Node) -> None:
    provider: PubSubProvider = SwitchboardPubSub(fresh_node.url)
    await provider.start()
    counter, other = topic_name("counter"), topic_name("room")
    sessions = [CounterSession(provider, f"session-{i}", counter) for i in range(5)]
    elsewhere = CounterSession(provider, "session-elsewhere", other)
    for s in [*sessions, elsewhere]:
        await s.mount()
    metrics = fresh_node.metrics()
    assert metrics["switchboard_connections"] == 1  # every session multiplexed on one socket
    assert metrics["switchboard_subscriptions"] == 2  # one membership per topic

    await sessions[0].handle_event("increment")  # broadcasts the int 1
    await eventually(lambda: all(s.infos == [1] for s in sessions), what="each session once")
    assert all(s.context["count"] == 1 for s in sessions)

    await sessions[3].handle_event("increment")  # its count was 1: broadcasts 2
    await eventually(lambda: all(s.infos == [1, 2] for s in sessions))
    await asyncio.sleep(0.2)
    assert all(s.infos == [1, 2] for s in sessions)  # exactly once: no local echo on top
    assert elsewhere.infos == []

    # A session leaving stops its deliveries only; the last one leaving leaves the topic.
    await sessions[0].pubsub.unsubscribe(counter)
    await sessions[1].pubsub.unsubscribe_all()
    await provider.broadcast(counter, {"reset": True})
    await eventually(lambda: all(s.infos[-1:] == [{"reset": True}] for s in sessions[2:]))
    assert sessions[0].infos == [1, 2] and sessions[1].infos == [1, 2]
    for s in sessions[2:]:
        await s.pubsub.unsubscribe_all()
    await eventually(lambda: fresh_node.metrics()["switchboard_subscriptions"] == 1)
    await provider.stop()
    await eventually(lambda: fresh_node.metrics()["switchboard_connections"] == 0)


async def test_one_failing_handler_does_not_stop_the_others(node: Node) -> None:
    provider = SwitchboardPubSub(node.url)
    await provider.start()
    topic = topic_name()
    got: dict[str, list[Any]] = {"a": [], "c": []}
    slow_done = asyncio.Event()

    async def good_a(t: str, message: Any) -> None:
        got["a"].append(message)

    async def bad(t: str, message: Any) -> None:
        raise RuntimeError("handler bug")

    async def slow(t: str, message: Any) -> None:
        await asyncio.sleep(0.5)
        slow_done.set()

    async def good_c(t: str, message: Any) -> None:
        got["c"].append(message)

    for session, handler in (("a", good_a), ("b", bad), ("s", slow), ("c", good_c)):
        await provider.subscribe_topic(session, topic, handler)
    for n in range(3):
        await provider.broadcast(topic, {"n": n})
    await eventually(lambda: len(got["a"]) == 3 and len(got["c"]) == 3)
    assert got["a"] == got["c"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert provider.handler_errors == 3
    await asyncio.wait_for(slow_done.wait(), PATIENCE)
    await provider.stop()


async def test_concurrent_first_subscribers_join_once(fresh_node: Node) -> None:
    provider = SwitchboardPubSub(fresh_node.url)
    topic = topic_name()
    got: list[str] = []

    def handler_for(session: str) -> TopicHandler:
        async def handler(t: str, message: Any) -> None:
            got.append(session)

        return handler

    # No start(): the provider connects on first use.
    await asyncio.gather(*(provider.subscribe_topic(f"s{i}", topic, handler_for(f"s{i}")) for i in range(10)))
    assert fresh_node.metrics()["switchboard_subscriptions"] == 1
    assert sorted(provider.subscribers(topic)) == sorted(f"s{i}" for i in range(10))
    await provider.broadcast(topic, "hello")  # not an object: goes over HTTP
    await eventually(lambda: len(got) == 10)
    assert sorted(got) == sorted(f"s{i}" for i in range(10))
    await provider.stop()


async def test_bad_input_and_refusals(node: Node) -> None:
    provider = SwitchboardPubSub(node.url)
    with pytest.raises(InvalidMessageError):
        await provider.broadcast("room:1", {"handler": print})
    with pytest.raises(InvalidMessageError):
        await provider.broadcast("room:1", float("nan"))
    with pytest.raises(InvalidTopicError):
        await provider.broadcast("", 1)
    with pytest.raises(InvalidTopicError):
        await provider.subscribe_topic("s", "room:\n1", _ignore)
    with pytest.raises(InvalidTopicError):
        await provider.subscribe_topic("s", "x" * 256, _ignore)
    assert provider.subscribers("room:1") == []
    await provider.stop()

    secret = "p" * 40
    secured = Node("--token-secret", secret, "--api-key", "key")
    try:
        guarded = SwitchboardPubSub(secured.url, token=secured.token("1", secret))
        with pytest.raises(JoinError):
            await guarded.subscribe_topic("s", "room:2", _ignore)
        assert guarded.subscribers("room:2") == []
        await guarded.subscribe_topic("s", "room:1", _ignore)  # owner
        await guarded.stop()
    finally:
        secured.close()


async def _ignore(topic: str, message: Any) -> None:
    pass


async def test_bursts_ride_out_the_nodes_push_rate_limit(fresh_node: Node) -> None:
    # Every session of the process pushes through one socket, and the node limits pushes per
    # socket (100/s, bursts of 200): refused pushes are retried until publish_timeout.
    provider = SwitchboardPubSub(fresh_node.url)
    topic = topic_name()
    got: list[Any] = []

    async def handler(t: str, message: Any) -> None:
        got.append(message["i"])

    await provider.subscribe_topic("s", topic, handler)
    await asyncio.gather(*(provider.publish(topic, {"i": i}) for i in range(260)))
    await eventually(lambda: len(got) == 260)
    assert sorted(got) == list(range(260))
    assert fresh_node.metrics()["switchboard_rate_limited_total"] > 0
    await provider.stop()
