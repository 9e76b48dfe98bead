"""Seed 003: ``get_default_client()`` from the environment, ``publish`` / ``listen`` /
``close``, and the seed's ``python test_pubsub.py both`` (a listener thread and a publisher
together) against a real node. These tests are synchronous, as the seed's code is."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import PATIENCE, topic_name
from nodes import Node

from switchboard_client import (
    ConfigurationError,
    InvalidMessageError,
    InvalidTopicError,
    JoinError,
    SwitchboardClient,
    get_default_client,
)
from switchboard_client.protocols import PubSubClient


def listen_in_thread(
    client: PubSubClient, channel: str, got: list[dict[str, Any]], stop: threading.Event
) -> threading.Thread:
    thread = threading.Thread(target=client.listen, args=(channel, got.append, stop), daemon=True)
    thread.start()
    return thread


def wait_for(check: Any, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.01)


def joined(client: SwitchboardClient, channel: str) -> bool:
    return client.connection.joined(channel)


@pytest.mark.parametrize("via", ["socket", "http"])
def test_both(node: Node, via: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's `python test_pubsub.py both`: listen and publish in one process."""
    monkeypatch.setenv("SWITCHBOARD_URL", node.url)
    monkeypatch.setenv("SWITCHBOARD_PUBLISH_VIA", via)
    monkeypatch.delenv("PUBSUB_BACKEND", raising=False)
    channel = topic_name("test_channel")
    listener, publisher = get_default_client(), get_default_client()
    got: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = listen_in_thread(listener, channel, got, stop)
    try:
        wait_for(lambda: joined(listener, channel))
        sent = [{"data": "value", "n": i} for i in range(20)]
        assert all(publisher.publish(channel, message) for message in sent)
        wait_for(lambda: len(got) >= len(sent))
        assert got == sent
    finally:
        stop.set()
        thread.join(PATIENCE)
        listener.close()
        publisher.close()
    assert not thread.is_alive()


def test_callback_errors_do_not_stop_listening(node: Node) -> None:
    channel = topic_name()
    client = SwitchboardClient(node.url)
    seen: list[int] = []

    def callback(message: dict[str, Any]) -> None:
        seen.append(message["n"])
        if message["n"] == 0:
            raise ValueError("a bad callback")
        # Publishing from inside a callback works (the callback runs in the listen thread).
        if message["n"] == 1:
            client.publish(channel, {"n": 2})

    stop = threading.Event()
    thread = threading.Thread(target=client.listen, args=(channel, callback, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: joined(client, channel))
        assert client.publish(channel, {"n": 0})
        assert client.publish(channel, {"n": 1})
        wait_for(lambda: len(seen) == 3)
        assert seen == [0, 1, 2]
    finally:
        stop.set()
        thread.join(PATIENCE)
        client.close()


def test_publish_reports_an_outage_with_false() -> None:
    gone = Node()
    url = gone.url
    gone.close()
    for via in ("socket", "http"):
        client = SwitchboardClient(url, publish_via=via, connect_timeout=0.5, publish_timeout=0.5)
        started = time.monotonic()
        assert client.publish("channel", {"data": 1}) is False
        assert time.monotonic() - started < 3
        client.close()


def test_bad_input_raises(node: Node) -> None:
    with SwitchboardClient(node.url) as client:
        with pytest.raises(InvalidMessageError):
            client.publish("channel", {"when": object()})
        with pytest.raises(InvalidTopicError):
            client.publish("", {"x": 1})
        with pytest.raises(InvalidTopicError):
            client.listen("__keyspace@0__:x", print, threading.Event())


def test_listen_refused_join_raises() -> None:
    secret = "k" * 40
    node = Node("--token-secret", secret, "--api-key", "a-key")
    try:
        with SwitchboardClient(node.url, token=node.token("7", secret)) as client:
            with pytest.raises(JoinError):
                client.listen("auditlog:8", print, threading.Event())
    finally:
        node.close()


def test_get_default_client_maps_pubsub_backend_honestly() -> None:
    url = "http://127.0.0.1:4000"
    client = get_default_client({"SWITCHBOARD_URL": url})
    assert client.connection.base_url == url and client.connection.publish_via == "socket"
    client = get_default_client(
        {"SWITCHBOARD_URL": url, "PUBSUB_BACKEND": "switchboard", "SWITCHBOARD_API_KEY": "k"}
    )
    assert client.connection.publish_via == "http" and client.connection.api_key == "k"
    # The seed's backends are the node's business now, and nothing falls back silently.
    for backend in ("redis", "postgres", "kafka"):
        with pytest.raises(ConfigurationError, match="--pubsub-backend"):
            get_default_client({"SWITCHBOARD_URL": url, "PUBSUB_BACKEND": backend})
    with pytest.raises(ConfigurationError, match="SWITCHBOARD_URL"):
        get_default_client({"REDIS_URL": "redis://localhost:6379/0"})
    with pytest.raises(ConfigurationError):
        get_default_client({"SWITCHBOARD_URL": "localhost:4000"})
    with pytest.raises(ConfigurationError):
        get_default_client({"SWITCHBOARD_URL": url, "SWITCHBOARD_PUBLISH_VIA": "carrier-pigeon"})
