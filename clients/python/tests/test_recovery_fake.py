"""The client's side of history/recovery and presence, against ``fake_node.FakeNode`` (the
node does not implement them yet; ``tests_history/`` holds the same scenarios against a real
node, to be enabled when it does). Also: rejoin of every topic, heartbeat timeouts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_node import FakeNode, until

from switchboard_client import (
    Gap,
    MessagesLostError,
    SwitchboardClient,
    SwitchboardGateway,
    SwitchboardPubSub,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeNode]:
    node = await FakeNode().start()
    yield node
    await node.stop()


async def drain(sub: Any, n: int) -> list[Any]:
    return [await sub.get_message(timeout=5) for _ in range(n)]


async def test_reconnect_recovers_missed_messages_in_order(fake: FakeNode) -> None:
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            topic = sub.topic
            assert fake.joins == [(topic, {})]
            for i in range(3):
                await fake.publish(topic, {"i": i})
            assert await drain(sub, 3) == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert sub.position == "3:e1"

            await fake.outage()
            await until(lambda: not gateway.connection.connected)
            for i in range(3, 6):  # published while this client was away
                await fake.publish(topic, {"i": i})
            fake.paused = False
            await until(lambda: gateway.connection.joined(topic))
            assert fake.joins[-1] == (topic, {"since": "3:e1"})
            await fake.publish(topic, {"i": 6})  # live, after the replay
            assert await drain(sub, 4) == [{"i": 3}, {"i": 4}, {"i": 5}, {"i": 6}]
            assert sub.gaps == []
            assert sub.position == "7:e1"


async def test_replayed_duplicates_are_dropped(fake: FakeNode) -> None:
    fake.replay_duplicates = True
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            await fake.publish(sub.topic, {"i": 0})
            assert await sub.get_message(timeout=5) == {"i": 0}
            await fake.drop_connections()  # reconnects at once
            await until(lambda: gateway.connection.reconnects == 1 and gateway.connection.joined(sub.topic))
            await fake.publish(sub.topic, {"i": 1})
            assert await sub.get_message(timeout=5) == {"i": 1}
            assert await sub.get_message(timeout=0.2) is None


async def test_unrecoverable_gap_is_a_flag_by_default(fake: FakeNode) -> None:
    fake.keep = 2
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            await fake.publish(sub.topic, {"i": 0})
            assert await sub.get_message(timeout=5) == {"i": 0}
            await fake.outage()
            await until(lambda: not gateway.connection.connected)
            for i in range(1, 5):  # 4 missed, only 2 kept: not recoverable
                await fake.publish(sub.topic, {"i": i})
            fake.paused = False
            await until(lambda: gateway.connection.joined(sub.topic))
            await fake.publish(sub.topic, {"i": 5})
            assert await sub.get_message(timeout=5) == {"i": 5}
            assert sub.gaps == [Gap(sub.topic, "not_recovered", since="1:e1", position="5:e1")]


async def test_unrecoverable_gap_raises_with_raise_on_gap(fake: FakeNode) -> None:
    async with SwitchboardGateway(fake.url, raise_on_gap=True) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            await fake.publish(sub.topic, {"i": 0})
            await fake.outage()
            await until(lambda: not gateway.connection.connected)
            fake.epoch = "e2"  # the node's history was reset
            fake.paused = False
            await until(lambda: gateway.connection.joined(sub.topic))
            await fake.publish(sub.topic, {"i": 1})
            assert await sub.get_message(timeout=5) == {"i": 0}
            with pytest.raises(MessagesLostError) as lost:
                await sub.get_message(timeout=5)
            assert lost.value.gap.reason == "not_recovered" and lost.value.gap.since == "1:e1"
            assert await sub.get_message(timeout=5) == {"i": 1}


async def test_no_history_node_reports_possible_loss(fake: FakeNode) -> None:
    fake.history = False
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            await fake.drop_connections()
            await until(lambda: gateway.connection.reconnects == 1 and gateway.connection.joined(sub.topic))
            assert fake.joins[-1] == (sub.topic, {})  # nothing to recover from
            assert [g.reason for g in sub.gaps] == ["no_history"]
            assert sub.position is None


async def test_provider_and_listen_report_gaps(fake: FakeNode) -> None:
    fake.keep = 1
    gaps: list[Gap] = []

    async def on_gap(gap: Gap) -> None:
        gaps.append(gap)

    provider = SwitchboardPubSub(fake.url, on_gap=on_gap)
    got: list[Any] = []

    async def handler(topic: str, message: Any) -> None:
        got.append(message)

    await provider.subscribe_topic("s1", "room:1", handler)
    await provider.subscribe_topic("s2", "room:1", handler)
    await fake.outage()
    await until(lambda: not provider.connection.connected)
    await fake.publish("room:1", {"missed": 1})
    await fake.publish("room:1", {"missed": 2})
    fake.paused = False
    await until(lambda: len(gaps) == 1)
    assert gaps[0].reason == "not_recovered"
    await provider.stop()

    listen_gaps: list[Gap] = []
    client = SwitchboardClient(fake.url)
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: client.listen("room:2", got.append, stop, on_gap=listen_gaps.append), daemon=True
    )
    thread.start()
    await until(lambda: client.connection.joined("room:2"))
    await fake.outage()
    await until(lambda: not client.connection.connected)
    await fake.publish("room:2", {"missed": 1})
    await fake.publish("room:2", {"missed": 2})
    fake.paused = False
    await until(lambda: len(listen_gaps) == 1)
    stop.set()
    await asyncio.to_thread(thread.join, 5)
    client.close()


async def test_every_topic_is_rejoined(fake: FakeNode) -> None:
    async with SwitchboardGateway(fake.url) as gateway:
        subs = [gateway.subscribe_to_user_channel(str(i), "auditlog") for i in range(5)]
        for sub in subs:
            await sub.__aenter__()
        await fake.drop_connections()
        await until(lambda: gateway.connection.reconnects == 1)
        await until(lambda: all(gateway.connection.joined(s.topic) for s in subs))
        for sub in subs:
            await fake.publish(sub.topic, {"to": sub.topic})
        for sub in subs:
            assert await sub.get_message(timeout=5) == {"to": sub.topic}
        # Closed subscriptions are not rejoined.
        await subs[0].close()
        joins = len(fake.joins)
        await fake.drop_connections()
        await until(lambda: gateway.connection.reconnects == 2)
        await until(lambda: all(gateway.connection.joined(s.topic) for s in subs[1:]))
        assert sorted(t for t, _ in fake.joins[joins:]) == sorted(s.topic for s in subs[1:])


async def test_unanswered_heartbeat_reconnects(fake: FakeNode) -> None:
    fake.answer_heartbeats = False
    async with SwitchboardGateway(fake.url, heartbeat_interval=0.1) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            await until(lambda: gateway.connection.reconnects >= 1, timeout=5)
            assert fake.heartbeats >= 1
            await until(lambda: gateway.connection.joined(sub.topic))


async def test_presence_is_readable(fake: FakeNode) -> None:
    fake.presence_on_join = {"alice": {"metas": [{"phx_ref": "a1", "device": "phone"}]}}
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.subscribe_to_user_channel("1", "room") as sub:
            await until(lambda: sub.presence() is not None)
            assert sub.presence() == {"alice": [{"phx_ref": "a1", "device": "phone"}]}
            await fake.send_to_members(
                sub.topic,
                "presence_diff",
                {
                    "joins": {"bob": {"metas": [{"phx_ref": "b1"}]}, "alice": {"metas": [{"phx_ref": "a2"}]}},
                    "leaves": {"alice": {"metas": [{"phx_ref": "a1", "device": "phone"}]}},
                },
            )
            await until(lambda: "bob" in (sub.presence() or {}))
            assert sub.presence() == {"alice": [{"phx_ref": "a2"}], "bob": [{"phx_ref": "b1"}]}
            # Presence frames are not messages.
            assert await sub.get_message(timeout=0.1) is None
    fake.presence_on_join = None
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.subscribe_to_user_channel("2", "room") as sub:
            assert sub.presence() is None  # the node offers none: None, not {}


async def test_presence_joins_with_its_meta_and_syncs_like_phoenix_js(fake: FakeNode) -> None:
    # What the node sends on a presence topic, in an order that tests the client: a diff
    # before the state (held, then applied after it), a state of another join (ignored).
    fake.presence_on_join = {"ada": {"metas": [{"phx_ref": "a1", "status": "online"}]}}
    fake.presence_diff_first = {"joins": {"bob": {"metas": [{"phx_ref": "b1"}]}}, "leaves": {}}
    fake.presence_stale_state = {"zed": {"metas": [{"phx_ref": "z1"}]}}
    calls: list[tuple[str, str]] = []
    syncs: list[int] = []

    async def on_sync() -> None:  # callbacks may be async: they run as tasks
        await asyncio.sleep(0)
        syncs.append(len(calls))

    async with SwitchboardGateway(fake.url, user="ada") as gateway:
        async with gateway.join_presence(
            "room:1",
            {"status": "online"},
            on_join=lambda key, current, joined: calls.append(("join", key)),
            on_leave=lambda key, remaining, left: calls.append(("leave", key)),
            on_sync=on_sync,
        ) as room:
            await until(lambda: syncs == [2])  # after the state and the held diff: one sync
            assert fake.joins[-1] == ("room:1", {"presence": {"status": "online"}})
            assert gateway.connection.ws_url().endswith("&user=ada")
            assert room.state == {"ada": [{"phx_ref": "a1", "status": "online"}], "bob": [{"phx_ref": "b1"}]}
            assert calls == [("join", "ada"), ("join", "bob")]
            # The update is a presence_update push; a rejoin carries the updated meta, and its
            # state replaces the list (bob is gone: he leaves; ada's new ref joins, the old leaves).
            await room.update({"status": "busy"})
            fake.presence_on_join = {"ada": {"metas": [{"phx_ref": "a2", "status": "busy"}]}}
            fake.presence_diff_first = fake.presence_stale_state = None
            calls.clear()
            await fake.drop_connections()
            await until(lambda: gateway.connection.reconnects == 1 and room.synced)
            assert fake.joins[-1][1]["presence"] == {"status": "busy"}
            assert room.state == {"ada": [{"phx_ref": "a2", "status": "busy"}]}
            assert sorted(calls) == [("join", "ada"), ("leave", "ada"), ("leave", "bob")]
    # A socket without a key (no user, no token) joins as an observer: no presence parameter.
    async with SwitchboardGateway(fake.url) as gateway:
        async with gateway.join_presence("room:2") as room:
            assert fake.joins[-1] == ("room:2", {}) and room.keys() == ["ada"]


async def test_a_full_queue_drops_and_says_so(fake: FakeNode) -> None:
    async with SwitchboardGateway(fake.url, max_queue=5, raise_on_gap=True) as gateway:
        async with gateway.subscribe_to_user_channel("1", "auditlog") as sub:
            for i in range(10):
                await fake.publish(sub.topic, {"i": i})
            await until(lambda: sub.position == "10:e1")
            assert await drain(sub, 5) == [{"i": i} for i in range(5)]
            with pytest.raises(MessagesLostError) as lost:
                await sub.get_message(timeout=1)
            assert lost.value.gap == Gap(sub.topic, "overflow", dropped=5)
            assert sub.gaps == [lost.value.gap]
            await fake.publish(sub.topic, {"i": 10})
            assert await sub.get_message(timeout=5) == {"i": 10}
