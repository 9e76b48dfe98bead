"""Real processes for the tests: a ``switchboard`` node and a private ``redis-server``.

The node binary is ``$SWITCHBOARD_BIN`` (tests/run exports it), else
``<repository>/target/debug/switchboard`` (``cargo build -p switchboard-node --bin
switchboard``). Each node starts on ``--bind 127.0.0.1:0`` and its address is read from its
first line of output, ``switchboard listening on http://ADDR``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 20.0
LISTENING = "switchboard listening on http://"

# The node's configuration variables (docs/node.md): cleared so the caller's shell cannot
# change a test's node.
NODE_ENV_VARS = """BIND CONFIG MAX_FRAME_BYTES MAX_TOPICS_PER_SOCKET IDLE_TIMEOUT SEND_BUFFER_BYTES
MAX_PUBLISH_BYTES SHUTDOWN_TIMEOUT PUBSUB_BACKEND REDIS_URL CHANNEL_PREFIX DATABASE_URL TOKEN_SECRET
API_KEY ALLOWED_ORIGINS MAX_CONNECTIONS MAX_TOPIC_BYTES PUSH_RATE PUSH_BURST JOIN_RATE JOIN_BURST
ENVELOPE SUBSCRIBE_TIMEOUT BACKEND_TIMEOUT UNSUBSCRIBE_LINGER BRIDGE_QUEUE_MESSAGES
BRIDGE_QUEUE_BYTES WRITE_TIMEOUT OPEN_PUBLISH MAX_CONNECTIONS_PER_USER MAX_CONNECTIONS_PER_ADDRESS
CLIENT_IP_HEADER PRESENCE_TTL PRESENCE_MAX_MEMBERS PRESENCE_MAX_META_BYTES""".split()


def node_binary() -> str:
    path = os.environ.get("SWITCHBOARD_BIN") or str(REPO / "target" / "debug" / "switchboard")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"no switchboard binary at {path}: run `cargo build -p switchboard-node --bin "
            "switchboard` or set SWITCHBOARD_BIN"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    """A running node. ``restart()`` starts it again on the same port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = dict(env or {})
        self.port = 0
        self.url = ""
        self._log = tempfile.NamedTemporaryFile(prefix="switchboard-node-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[str] | None = None
        self._start("127.0.0.1:0")

    def _start(self, bind: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in NODE_ENV_VARS}
        env.setdefault("RUST_LOG", "warn")
        env.update(self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            proc = subprocess.Popen(
                [node_binary(), "--bind", bind, *self.args],
                stdout=subprocess.PIPE,
                stderr=self._log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            assert proc.stdout is not None
            line = _read_line(proc.stdout, deadline - time.monotonic())
            if line.startswith(LISTENING):
                break
            proc.kill()
            proc.wait()
            # Restarting on a port the old process just released can race; try again.
            if time.monotonic() > deadline or bind.endswith(":0"):
                raise RuntimeError(f"the node did not start: {line!r}\n{self.log_tail()}")
            time.sleep(0.05)
        self.proc = proc
        addr = line[len(LISTENING) :].strip()
        self.port = int(addr.rsplit(":", 1)[1])
        self.url = f"http://{addr}"
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self._start(f"127.0.0.1:{self.port}")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def http_publish(self, topic: str, payload: Any, event: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"topic": topic, "payload": payload}
        if event is not None:
            body["event"] = event
        request = urllib.request.Request(
            f"{self.url}/api/publish", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def token(self, sub: str, secret: str) -> str:
        out = subprocess.run(
            [node_binary(), "token", "--sub", sub, "--ttl", "1h"],
            env={**{k: v for k, v in os.environ.items() if k not in NODE_ENV_VARS}, "TOKEN_SECRET": secret},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.stop()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


class Redis:
    """A private redis-server on a free port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("redis-server did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _read_line(stream: IO[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, timeout))
    return result[0] if result else ""


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass
