"""Fixtures: real nodes (one shared, fresh ones, two behind a private Redis) and helpers."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodes import Node, Redis  # noqa: E402

PATIENCE = 10.0
"""How long anything that should happen promptly may take (a debug node on 2 busy cores)."""


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """One open in-memory node shared by the tests that need nothing special (they use
    topics of their own)."""
    n = Node("--push-rate", "100000", "--push-burst", "100000")
    yield n
    n.close()


@pytest.fixture
def fresh_node() -> Iterator[Node]:
    """A node of this test's own (restarts, metrics)."""
    n = Node()
    yield n
    n.close()


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    r = Redis()
    yield r
    r.close()


@pytest.fixture(scope="module")
def two_nodes(redis: Redis) -> Iterator[tuple[Node, Node]]:
    a = Node("--redis-url", redis.url)
    b = Node("--redis-url", redis.url)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def user_id() -> uuid.UUID:
    return uuid.uuid4()


def topic_name(prefix: str = "t") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = PATIENCE, what: str = "condition"
) -> None:
    """Waits until ``check()`` is true, or fails the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
