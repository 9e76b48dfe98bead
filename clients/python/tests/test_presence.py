"""Presence against real nodes with ``[channels.room] presence = true``: two clients see each
other and leave, a meta update, the refusals as exceptions, a rejoin after a node restart and
after a forced socket close (a fresh list, no zombie), and two nodes sharing a private Redis.

Open nodes: each socket names itself with ``user=``; ``GET /api/presence`` takes the API key.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PATIENCE, topic_name
from nodes import Node, Redis

from switchboard_client import (
    ClosedError,
    InvalidPresenceError,
    Meta,
    NoPresenceError,
    Presence,
    PresenceEntry,
    PresenceError,
    PresenceSnapshot,
    SwitchboardClient,
    SwitchboardGateway,
    SwitchboardPubSub,
    TooManyMembersError,
)

API_KEY = "presence-test-key"
MAX_MEMBERS = 3


@pytest.fixture(scope="module")
def config() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="switchboard-presence-") as folder:
        path = Path(folder) / "switchboard.toml"
        path.write_text("[channels.room]\npresence = true\n")
        yield str(path)


def presence_node(config: str, *args: str) -> Node:
    return Node(
        "--config", config, "--api-key", API_KEY, "--presence-max-members", str(MAX_MEMBERS), *args
    )


@pytest.fixture(scope="module")
def node(config: str) -> Iterator[Node]:
    """One node for the tests that need nothing special (each uses topics of its own)."""
    n = presence_node(config)
    yield n
    n.close()


class Recorder:
    """Every on_join / on_leave / on_sync of a Presence, as phoenix.js would call them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []
        self.syncs = 0

    def join(self, key: str, current: list[Meta] | None, joined: list[Meta]) -> None:
        self.calls.append(("join", key, [m["phx_ref"] for m in joined]))

    def leave(self, key: str, remaining: list[Meta], left: list[Meta]) -> None:
        self.calls.append(("leave", key, [m["phx_ref"] for m in left]))

    def sync(self) -> None:
        self.syncs += 1

    def callbacks(self) -> dict[str, Any]:
        return {"on_join": self.join, "on_leave": self.leave, "on_sync": self.sync}


def refs(presence: Presence | PresenceSnapshot) -> dict[str, list[str]]:
    """``{key: [phx_ref, ...]}`` (sorted), to compare lists."""
    return {key: sorted(m["phx_ref"] for m in metas) for key, metas in presence.state.items()}


async def test_two_clients_see_each_other_and_leave(node: Node) -> None:
    topic = topic_name("room")
    seen = Recorder()
    async with (
        SwitchboardGateway(node.url, user="ada") as ada,
        SwitchboardGateway(node.url, user="bob") as bob,
        SwitchboardGateway(node.url, api_key=API_KEY) as backend,
    ):
        async with ada.join_presence(topic, {"status": "online"}, **seen.callbacks()) as room_a:
            # Joining returns with the list complete: the node's presence_state came.
            assert room_a.synced and room_a.keys() == ["ada"] and "ada" in room_a
            [meta] = room_a.metas("ada")
            assert meta["status"] == "online" and meta["phx_ref"]
            assert room_a.meta == {"status": "online"}
            assert seen.calls[0] == ("join", "ada", [meta["phx_ref"]]) and seen.syncs >= 1

            room_b = await bob.join_presence(topic)  # no meta: listed, saying nothing
            try:
                assert sorted(room_b.keys()) == ["ada", "bob"]
                await room_a.wait_for(lambda p: "bob" in p, timeout=PATIENCE)
                [bob_meta] = room_a.metas("bob")
                assert set(bob_meta) == {"phx_ref"}
                assert refs(room_a) == refs(room_b)
                assert room_a.list() == [
                    PresenceEntry("ada", room_a.metas("ada")),
                    PresenceEntry("bob", room_a.metas("bob")),
                ]
                assert sorted(room_a.list(lambda key, metas: (key, len(metas)))) == [("ada", 1), ("bob", 1)]
                assert len(room_a) == 2 and room_a.member_count == 2
                assert room_a.to_phoenix()["bob"] == {"metas": [bob_meta]}

                # The same list from the HTTP API, for backends (each client class has it).
                snapshot = await backend.fetch_presence(topic)
                assert snapshot.topic == topic and refs(snapshot) == refs(room_a)
                blocking = SwitchboardClient(node.url, api_key=API_KEY)
                assert refs(await asyncio.to_thread(blocking.fetch_presence, topic)) == refs(room_a)
                blocking.close()
                provider = SwitchboardPubSub(node.url, api_key=API_KEY)
                assert refs(await provider.fetch_presence(topic)) == refs(room_a)
                await provider.stop()
            finally:
                await room_b.leave()
            assert not room_b.joined
            await room_a.wait_for(lambda p: "bob" not in p, timeout=PATIENCE)
            assert ("join", "bob", [bob_meta["phx_ref"]]) in seen.calls
            assert seen.calls[-1] == ("leave", "bob", [bob_meta["phx_ref"]])
        assert not room_a.joined
        with pytest.raises(ClosedError):
            await room_a.update({"status": "away"})
        snapshot = await backend.fetch_presence(topic)
        assert snapshot.state == {} and len(snapshot) == 0


async def test_one_key_with_two_sockets_and_a_plain_subscription(node: Node) -> None:
    topic = topic_name("room")
    async with (
        SwitchboardGateway(node.url, user="ada") as phone,
        SwitchboardGateway(node.url, user="ada") as laptop,
        SwitchboardGateway(node.url) as watcher,
    ):
        # An observer (no user): it reads the list and is not in it.
        async with watcher.join_presence(topic) as room:
            async with phone.join_presence(topic, {"device": "phone"}):
                # The seed API's subscription on a presence topic shares the socket's member.
                async with laptop.subscribe_to_user_channel(topic.split(":", 1)[1], "room") as sub:
                    await room.wait_for(lambda p: len(p.metas("ada")) == 2, timeout=PATIENCE)
                    assert room.keys() == ["ada"]
                    assert sorted(m.get("device", "-") for m in room.metas("ada")) == ["-", "phone"]
                    await until_count(lambda: (sub.presence() or {}).get("ada", []), 2)
                await room.wait_for(lambda p: len(p.metas("ada")) == 1, timeout=PATIENCE)
                assert room.metas("ada")[0]["device"] == "phone"
            await room.wait_for(lambda p: len(p) == 0, timeout=PATIENCE)
            with pytest.raises(PresenceError) as observer:
                await room.update({"status": "here"})
            assert observer.value.code == "no_key"


async def until_count(metas: Any, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while len(metas()) != count:
        assert loop.time() < deadline, f"expected {count} metas"
        await asyncio.sleep(0.02)


async def test_meta_update(node: Node) -> None:
    topic = topic_name("room")
    seen = Recorder()
    async with (
        SwitchboardGateway(node.url, user="ada") as ada,
        SwitchboardGateway(node.url, user="bob") as bob,
    ):
        async with (
            ada.join_presence(topic, {"status": "online"}) as room_a,
            bob.join_presence(topic, **seen.callbacks()) as room_b,
        ):
            [old] = room_b.metas("ada")
            await room_a.update({"status": "typing"})
            assert room_a.meta == {"status": "typing"}
            await room_b.wait_for(lambda p: p.metas("ada")[0]["status"] == "typing", timeout=PATIENCE)
            [new] = room_b.metas("ada")
            # The new meta joins (naming the old one), then the old one leaves. (The node
            # batches changes: the same diff may repeat earlier joins, without effect.)
            assert new["phx_ref"] != old["phx_ref"] and new["phx_ref_prev"] == old["phx_ref"]
            about_ada = [call for call in seen.calls if call[1] == "ada"]
            assert about_ada[-2][:2] == ("join", "ada") and new["phx_ref"] in about_ada[-2][2]
            assert about_ada[-1] == ("leave", "ada", [old["phx_ref"]])
            # Five in a row: one meta at the end, never the socket twice after a diff.
            counts: list[int] = []
            room_b.on_sync(lambda: counts.append(len(room_b.metas("ada"))))
            for n in range(5):
                await room_a.update({"status": f"s{n}"})
            await room_b.wait_for(lambda p: p.metas("ada")[0]["status"] == "s4", timeout=PATIENCE)
            assert set(counts) == {1}
            assert room_a.metas("ada")[0]["status"] == "s4"

            # A second join_presence of the topic on the same socket is an update; its
            # callbacks first hear of everyone already listed, as a new phoenix.js Presence.
            second = Recorder()
            async with ada.join_presence(topic, {"status": "again"}, **second.callbacks()) as again:
                assert sorted(key for kind, key, _ in second.calls[:2]) == ["ada", "bob"]
                assert second.syncs >= 1 and again.synced
                await room_b.wait_for(lambda p: p.metas("ada")[0]["status"] == "again", timeout=PATIENCE)
            assert len(room_b.metas("ada")) == 1  # room_a still holds the socket's member

            # The meta a forced reconnect rejoins with is the updated one.
            await force_close(ada)
            await room_a.wait_for(lambda p: ada.connection.reconnects == 1 and p.synced, timeout=PATIENCE)
            await room_b.wait_for(
                lambda p: [m["phx_ref"] for m in p.metas("ada")] == [m["phx_ref"] for m in room_a.metas("ada")],
                timeout=PATIENCE,
            )
            assert room_b.metas("ada")[0]["status"] == "again"


async def test_refusals_are_exceptions(node: Node) -> None:
    topic = topic_name("room")
    async with SwitchboardGateway(node.url, user="ada") as ada, SwitchboardGateway(node.url) as observer:
        # Caught here, before anything is sent.
        bad_metas: list[Meta] = [{"phx_ref": "mine"}, {"when": {1, 2}}]
        for meta in bad_metas:
            with pytest.raises(InvalidPresenceError):
                await ada.join_presence(topic, meta)
        with pytest.raises(InvalidPresenceError):
            await ada.join_presence(topic, "online")  # type: ignore[arg-type]
        # Refused by the node: a meta over --presence-max-meta-bytes (1024).
        with pytest.raises(InvalidPresenceError) as too_big:
            await ada.join_presence(topic, {"bio": "x" * 2000})
        assert "limit is 1024 bytes" in too_big.value.reason
        assert not ada.connection.joined(topic)
        # A topic without presence, with a meta or without (a keyed socket's join says {}).
        for maybe_meta in [{"status": "online"}, None]:
            with pytest.raises(NoPresenceError):
                await ada.join_presence(topic_name("feed"), maybe_meta)
        # An observer's join cannot ask the node: no presence_state within the timeout.
        with pytest.raises(NoPresenceError):
            await observer.join_presence(topic_name("feed"), timeout=0.5)
        # An observer cannot say anything about itself.
        with pytest.raises(PresenceError) as no_key:
            await observer.join_presence(topic, {"status": "online"})
        assert no_key.value.code == "no_key"
        # Updates: a bad meta is refused and the old one stays.
        async with ada.join_presence(topic, {"status": "online"}) as room:
            with pytest.raises(InvalidPresenceError):
                await room.update({"bio": "x" * 2000})
            with pytest.raises(InvalidPresenceError):
                await room.update({"phx_ref_prev": "x"})
            assert room.meta == {"status": "online"} and room.metas("ada")[0]["status"] == "online"
        # The HTTP list: a topic without presence, and no API key.
        async with SwitchboardGateway(node.url, api_key=API_KEY) as backend:
            with pytest.raises(NoPresenceError) as missing:
                await backend.fetch_presence(topic_name("feed"))
            assert missing.value.status == 404
        with pytest.raises(PresenceError) as unauthorized:
            await observer.fetch_presence(topic)
        assert unauthorized.value.code == "unauthorized" and unauthorized.value.status == 401
        # Nothing above cost the sockets anything.
        async with ada.join_presence(topic) as room:
            assert room.keys() == ["ada"]


async def test_too_many_members(node: Node) -> None:
    topic = topic_name("room")
    clients = [SwitchboardGateway(node.url, user=f"user{n}") for n in range(MAX_MEMBERS + 1)]
    try:
        rooms = [await c.join_presence(topic) for c in clients[:MAX_MEMBERS]]
        with pytest.raises(TooManyMembersError) as full:
            await clients[-1].join_presence(topic)
        assert full.value.limit == MAX_MEMBERS and full.value.code == "too_many_members"
        await rooms[0].leave()
        room = await clients[-1].join_presence(topic)  # room again
        assert f"user{MAX_MEMBERS}" in room
    finally:
        for c in clients:
            await c.close()


async def force_close(gateway: SwitchboardGateway) -> None:
    """Closes the client's socket under it, as a network failure would."""
    ws = gateway.connection._ws
    assert ws is not None
    await ws.close()


async def test_forced_socket_close_rejoins_with_a_fresh_list(node: Node) -> None:
    topic = topic_name("room")
    seen = Recorder()
    async with (
        SwitchboardGateway(node.url, user="ada") as ada,
        SwitchboardGateway(node.url, user="bob") as bob,
    ):
        async with (
            ada.join_presence(topic, {"status": "online"}, **seen.callbacks()) as room_a,
            bob.join_presence(topic) as room_b,
        ):
            await room_a.wait_for(lambda p: len(p) == 2, timeout=PATIENCE)
            before = refs(room_a)
            await force_close(ada)
            await room_a.wait_for(lambda p: ada.connection.reconnects == 1 and p.synced, timeout=PATIENCE)
            # The rejoin's state replaced the list: ada once, with a new phx_ref; bob unchanged.
            after = refs(room_a)
            assert after["bob"] == before["bob"] and len(after["ada"]) == 1
            assert after["ada"] != before["ada"]
            assert ("leave", "ada", before["ada"]) in seen.calls
            assert room_a.metas("ada")[0]["status"] == "online"  # rejoined with its meta
            await room_b.wait_for(lambda p: refs(p) == after, timeout=PATIENCE)


async def test_node_restart_rejoins_with_a_fresh_list_and_no_zombie(config: str) -> None:
    node = presence_node(config)
    try:
        topic = topic_name("room")
        seen = Recorder()
        async with (
            SwitchboardGateway(node.url, user="ada") as ada,
            SwitchboardGateway(node.url, user="bob") as bob,
        ):
            async with (
                ada.join_presence(topic, {"status": "online"}, **seen.callbacks()) as room_a,
                bob.join_presence(topic, {"status": "away"}) as room_b,
            ):
                await room_a.wait_for(lambda p: len(p) == 2, timeout=PATIENCE)
                old_refs = {r for rs in refs(room_a).values() for r in rs}
                node.restart()  # SIGTERM, then a new process (a new node id) on the same port
                for gateway, room in ((ada, room_a), (bob, room_b)):
                    connection = gateway.connection
                    await room.wait_for(
                        lambda p: connection.reconnects == 1 and p.synced, timeout=PATIENCE
                    )
                for room in (room_a, room_b):
                    await room.wait_for(lambda p: len(p) == 2 and p.member_count == 2, timeout=PATIENCE)
                    assert not old_refs & {r for rs in refs(room).values() for r in rs}
                assert refs(room_a) == refs(room_b)
                assert room_a.metas("ada")[0]["status"] == "online"
                assert room_a.metas("bob")[0]["status"] == "away"
                # The old members left through on_leave, the new ones joined.
                left = {r for kind, _, rs in seen.calls if kind == "leave" for r in rs}
                assert old_refs <= left
                async with SwitchboardGateway(node.url, api_key=API_KEY) as backend:
                    assert refs(await backend.fetch_presence(topic)) == refs(room_a)
    finally:
        node.close()


@pytest.fixture(scope="module")
def two_nodes_with_presence(config: str) -> Iterator[tuple[Node, Node]]:
    redis = Redis()
    a = presence_node(config, "--redis-url", redis.url, "--presence-ttl", "3s")
    b = presence_node(config, "--redis-url", redis.url, "--presence-ttl", "3s")
    yield a, b
    a.close()
    b.close()
    redis.close()


async def test_two_nodes_agree(two_nodes_with_presence: tuple[Node, Node]) -> None:
    a, b = two_nodes_with_presence
    topic = topic_name("room")
    async with (
        SwitchboardGateway(a.url, user="ada") as ada_on_a,
        SwitchboardGateway(b.url, user="bob") as bob_on_b,
        SwitchboardGateway(b.url, user="ada") as ada_on_b,
        SwitchboardGateway(a.url, api_key=API_KEY) as backend_a,
        SwitchboardGateway(b.url, api_key=API_KEY) as backend_b,
    ):
        async with (
            ada_on_a.join_presence(topic, {"node": "a"}) as room_a,
            bob_on_b.join_presence(topic) as room_b,
        ):
            second = await ada_on_b.join_presence(topic, {"node": "b"})
            # One key per user, one meta per socket, the same on both nodes.
            for room in (room_a, room_b, second):
                await room.wait_for(
                    lambda p: sorted(p.keys()) == ["ada", "bob"] and len(p.metas("ada")) == 2, timeout=PATIENCE
                )
            assert refs(room_a) == refs(room_b) == refs(second)
            assert refs(await backend_a.fetch_presence(topic)) == refs(room_a)
            assert refs(await backend_b.fetch_presence(topic)) == refs(room_a)

            await second.leave()
            for room in (room_a, room_b):
                await room.wait_for(lambda p: len(p.metas("ada")) == 1, timeout=PATIENCE)
                assert room.metas("ada")[0]["node"] == "a"

            # An update on A reaches B.
            await room_a.update({"node": "a", "status": "typing"})
            await room_b.wait_for(lambda p: p.metas("ada")[0].get("status") == "typing", timeout=PATIENCE)

            # Node A restarts (SIGTERM: its members leave at once, a new node id): B sees ada
            # go and come back; both lists end the same, with nothing of A's old incarnation.
            old_ref = room_b.metas("ada")[0]["phx_ref"]
            old_node = old_ref.rsplit(".", 1)[0]
            a.restart()
            await room_a.wait_for(lambda p: ada_on_a.connection.reconnects == 1 and p.synced, timeout=PATIENCE)
            for room in (room_a, room_b):
                await room.wait_for(
                    lambda p: len(p) == 2
                    and len(p.metas("ada")) == 1
                    and p.metas("ada")[0]["phx_ref"] != old_ref,
                    timeout=PATIENCE,
                )
                assert not any(r.startswith(old_node + ".") for rs in refs(room).values() for r in rs)
            assert refs(room_a) == refs(room_b)
            assert room_b.metas("ada")[0]["status"] == "typing"  # rejoined with the updated meta
            assert refs(await backend_b.fetch_presence(topic)) == refs(room_a)


def test_user_is_checked_and_read_from_the_environment() -> None:
    from switchboard_client import ConfigurationError, get_default_client

    with pytest.raises(ValueError):
        SwitchboardGateway("http://127.0.0.1:1", user="")
    client = get_default_client({"SWITCHBOARD_URL": "http://127.0.0.1:1", "SWITCHBOARD_USER": "ada"})
    assert client.connection.user == "ada" and client.connection.ws_url().endswith("&user=ada")
    client.close()
    with pytest.raises(ConfigurationError):
        get_default_client({"SWITCHBOARD_URL": "http://127.0.0.1:1", "SWITCHBOARD_USER": "x" * 300})
