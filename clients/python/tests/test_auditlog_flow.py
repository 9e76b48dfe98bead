"""Seed 001's flow against a real node: audit-log entries published to ``auditlog:{user_id}``
after the database commit (never on rollback, never breaking the commit), and the seed's
WebSocket relay written as the seed writes it, on ``SwitchboardGateway``.

The database is SQLite (standard library) standing in for the seed's SQLAlchemy; the web
framework is the ``websockets`` server standing in for FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from conftest import PATIENCE, eventually
from nodes import Node
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from switchboard_client import SwitchboardGateway
from switchboard_client.protocols import PubSubGatewayProtocol


class UnitOfWork:
    """The seed's SqlAlchemyUnitOfWork, reduced: entities created in the transaction are
    broadcast after a successful commit; a failed broadcast never undoes the commit."""

    def __init__(self, db: Path, gateway: PubSubGatewayProtocol) -> None:
        self._db = db
        self._gateway = gateway
        self._created: list[dict[str, Any]] = []
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> UnitOfWork:
        self._conn = sqlite3.connect(self._db)
        self._conn.execute(
            "create table if not exists audit_log (id text primary key, user_id text, body text)"
        )
        return self

    async def create(self, entry: dict[str, Any]) -> None:
        assert self._conn is not None
        self._conn.execute(
            "insert into audit_log values (?, ?, ?)", (entry["id"], entry["user_id"], json.dumps(entry))
        )
        self._created.append(entry)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        try:
            if exc_type is not None:
                self._conn.rollback()
                return
            self._conn.commit()
        finally:
            self._conn.close()
        for entry in self._created:  # after the commit only
            await self._gateway.publish_to_user_channel(
                uuid.UUID(entry["user_id"]), "auditlog", entry
            )


def audit_entry(user_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "user_id": str(user_id),
        "activity_type": "TASK_COMPLETED",
        "occurred_at": "2026-01-14T10:00:00Z",
        "entity_id": str(uuid.uuid4()),
        "entity_type": "task",
        "meta": {"action_created_at": "2026-01-14T10:00:00Z"},
    }


def rows(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("select id from audit_log")}


async def test_publish_after_commit(node: Node, user_id: uuid.UUID, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    async with SwitchboardGateway(node.url) as gateway:
        async with gateway.subscribe_to_user_channel(user_id, "auditlog") as sub:
            entry = audit_entry(user_id)
            async with UnitOfWork(db, gateway) as uow:
                await uow.create(entry)
                assert await sub.get_message(timeout=0.2) is None  # not before the commit
            message = await sub.get_message(timeout=PATIENCE)
            assert message == entry
            assert entry["id"] in rows(db)  # the row was committed before it was announced

            rolled_back = audit_entry(user_id)
            with pytest.raises(RuntimeError):
                async with UnitOfWork(db, gateway) as uow:
                    await uow.create(rolled_back)
                    raise RuntimeError("the command failed")
            assert await sub.get_message(timeout=0.3) is None
            assert rolled_back["id"] not in rows(db)


async def test_publish_failure_does_not_break_the_commit(user_id: uuid.UUID, tmp_path: Path) -> None:
    gone = Node()
    url = gone.url
    gone.close()
    db = tmp_path / "app.db"
    gateway = SwitchboardGateway(url, connect_timeout=0.5, publish_timeout=0.5)
    entry = audit_entry(user_id)
    async with UnitOfWork(db, gateway) as uow:
        await uow.create(entry)
    assert entry["id"] in rows(db)
    assert gateway.publish_failures == 1
    await gateway.close()


# --- the seed's WebSocket relay ---------------------------------------------------------------


async def websocket_endpoint(websocket: ServerConnection, gateway: SwitchboardGateway, user_id: str) -> None:
    """Seed 001's "WebSocket Integration" handler, with the gateway swapped for Switchboard's
    (``websocket.send_json`` / ``receive_json`` written out for the websockets server)."""
    async with gateway.subscribe_to_user_channel(user_id=user_id, channel_type="auditlog") as subscription:
        try:
            while True:
                redis_message = await subscription.get_message(timeout=0.1)
                if redis_message:
                    await websocket.send(json.dumps({"type": "auditlog", "data": redis_message}))
                try:
                    client_message = json.loads(await asyncio.wait_for(websocket.recv(), timeout=0.1))
                    if client_message.get("broadcast"):
                        await subscription.send_message(
                            {"type": "client_broadcast", "data": client_message["data"]}
                        )
                except asyncio.TimeoutError:
                    pass
        except Exception:
            pass  # the browser went away
        finally:
            await websocket.close()


@asynccontextmanager
async def relay_app(node_url: str) -> AsyncIterator[tuple[str, SwitchboardGateway]]:
    gateway = SwitchboardGateway(node_url)

    async def handler(websocket: ServerConnection) -> None:
        assert websocket.request is not None
        user_id = websocket.request.path.rsplit("/", 1)[1]
        await websocket_endpoint(websocket, gateway, user_id)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", gateway
    await gateway.close()


async def test_websocket_relay(node: Node, user_id: uuid.UUID) -> None:
    async with relay_app(node.url) as (app_url, relay_gateway):
        async with connect(f"{app_url}/{user_id}") as browser, connect(f"{app_url}/{user_id}") as other_tab:
            # Both tabs' subscriptions are in effect once the relay's joins were answered.
            await eventually(lambda: len(relay_gateway._subscriptions) == 2, what="two relay subscriptions")
            producer = SwitchboardGateway(node.url, publish_via="http")
            entry = audit_entry(user_id)
            await producer.publish_to_user_channel(user_id, "auditlog", entry)
            for tab in (browser, other_tab):
                assert json.loads(await asyncio.wait_for(tab.recv(), PATIENCE)) == {
                    "type": "auditlog",
                    "data": entry,
                }

            # A browser's broadcast goes out through the relay's subscription to every tab.
            await browser.send(json.dumps({"broadcast": True, "data": "hello from tab 1"}))
            expected = {"type": "auditlog", "data": {"type": "client_broadcast", "data": "hello from tab 1"}}
            for tab in (other_tab, browser):
                assert json.loads(await asyncio.wait_for(tab.recv(), PATIENCE)) == expected
            await producer.close()
