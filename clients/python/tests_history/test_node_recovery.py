"""Recovery against a real node with history (NOT run by tests/run yet: see README.md).

A TCP proxy between the client and the node cuts the client off while the node stays up, so
what is published meanwhile is in the node's history and must come back on rejoin.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nodes import Node  # noqa: E402

from switchboard_client import Gap, SwitchboardGateway  # noqa: E402

PATIENCE = 10.0


def _config(history: int) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f"[channels.hist]\nhistory = {history}\n")
        return f.name


class CutProxy:
    """Forwards 127.0.0.1:<port> to the node; ``cut()`` drops every connection and refuses
    new ones until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> CutProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.refusing = True
        for w in self.writers:
            w.close()
        self.writers.clear()

    def restore(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@pytest.fixture
def history_node() -> Iterator[Node]:
    node = Node("--config", _config(3))
    yield node
    node.close()


@pytest.fixture
async def proxy(history_node: Node) -> AsyncIterator[CutProxy]:
    p = await CutProxy(history_node.port).start()
    yield p
    p.close()


async def _until(check: object) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_broadcasts_carry_positions(history_node: Node) -> None:
    async with SwitchboardGateway(history_node.url) as gateway:
        async with gateway.subscribe_to_user_channel(uuid.uuid4(), "hist") as sub:
            start = sub.position
            assert start is not None, "the join reply carries the topic's position"
            history_node.http_publish(sub.topic, {"n": 1})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 1}
            assert sub.position is not None and sub.position != start


async def test_a_cut_connection_recovers_what_was_missed(history_node: Node, proxy: CutProxy) -> None:
    async with SwitchboardGateway(proxy.url) as gateway:
        async with gateway.subscribe_to_user_channel(uuid.uuid4(), "hist") as sub:
            history_node.http_publish(sub.topic, {"n": 0})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 0}
            proxy.cut()
            await _until(lambda: not gateway.connection.connected)
            for n in (1, 2):  # within history = 3
                history_node.http_publish(sub.topic, {"n": n})
            proxy.restore()
            await _until(lambda: gateway.connection.joined(sub.topic))
            history_node.http_publish(sub.topic, {"n": 3})
            got = [await sub.get_message(timeout=PATIENCE) for _ in range(3)]
            assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
            assert sub.gaps == []


async def test_too_much_missed_is_reported(history_node: Node, proxy: CutProxy) -> None:
    async with SwitchboardGateway(proxy.url) as gateway:
        async with gateway.subscribe_to_user_channel(uuid.uuid4(), "hist") as sub:
            proxy.cut()
            await _until(lambda: not gateway.connection.connected)
            for n in range(10):  # more than history = 3
                history_node.http_publish(sub.topic, {"n": n})
            proxy.restore()
            await _until(lambda: gateway.connection.joined(sub.topic))
            assert [g.reason for g in sub.gaps] == ["not_recovered"]
            history_node.http_publish(sub.topic, {"live": True})
            assert await sub.get_message(timeout=PATIENCE) == {"live": True}


async def test_a_restarted_node_is_a_new_epoch(history_node: Node) -> None:
    async with SwitchboardGateway(history_node.url) as gateway:
        async with gateway.subscribe_to_user_channel(uuid.uuid4(), "hist") as sub:
            history_node.http_publish(sub.topic, {"n": 0})
            assert await sub.get_message(timeout=PATIENCE) == {"n": 0}
            history_node.restart()  # an in-memory history is gone
            await _until(lambda: gateway.connection.reconnects == 1 and gateway.connection.joined(sub.topic))
            assert len(sub.gaps) == 1 and isinstance(sub.gaps[0], Gap)
            assert sub.gaps[0].reason == "not_recovered"
