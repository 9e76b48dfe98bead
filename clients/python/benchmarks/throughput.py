#!/usr/bin/env python3
"""How many messages per second one Python subscriber receives through switchboard_client.

Run by hand, not in CI:

    cargo build --release -p switchboard-node --bin switchboard
    python clients/python/benchmarks/throughput.py                 # all modes
    python clients/python/benchmarks/throughput.py --mode gateway --messages 40000

It starts its own node (``$SWITCHBOARD_BIN``, else target/release/switchboard, else
target/debug/switchboard) with the push rate limit lifted and a large send buffer, so the
node queues what the subscriber has not read yet instead of cutting it off as a slow
consumer. A publisher process pushes ``--messages`` small audit-log entries as fast as it can
over its own socket; the subscriber process measures from its first message to its last:
the subscriber process is stopped (SIGSTOP) while the publisher runs, so the node holds the
backlog, and measured draining it once continued: the rate at which one subscriber consumes,
network, decoding and the client's own work included, whatever the publisher's pace.

Modes (what the subscriber is):
- ``gateway``: ``SwitchboardGateway`` subscription, ``await sub.get_message()`` in a loop;
- ``pyview``: ``SwitchboardPubSub`` with one session handler (a task per message, as PyView);
- ``listen``: ``SwitchboardClient.listen`` (seed 003, callback in a plain thread);
- ``raw``: the ``websockets`` library with ``json.loads`` alone: the ceiling for Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
ENTRY = {
    "id": "5f0e4c1e-0000-4000-8000-000000000001",
    "user_id": "123e4567-e89b-12d3-a456-426614174000",
    "activity_type": "TASK_COMPLETED",
    "occurred_at": "2026-01-14T10:00:00Z",
    "entity_type": "task",
}
TOPIC = "auditlog:123e4567-e89b-12d3-a456-426614174000"


def binary() -> str:
    for candidate in (
        os.environ.get("SWITCHBOARD_BIN"),
        str(REPO / "target" / "release" / "switchboard"),
        str(REPO / "target" / "debug" / "switchboard"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("no switchboard binary: cargo build --release -p switchboard-node --bin switchboard")


def start_node() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [binary(), "--bind", "127.0.0.1:0", "--push-rate", "100000000", "--push-burst", "100000000",
         "--send-buffer-bytes", str(1 << 30)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "error"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("switchboard listening on "):
        sys.exit(f"the node did not start: {line!r}")
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    return proc, line.split()[-1]


def publisher(url: str, messages: int, ready: Any, go: Any) -> None:
    from websockets.asyncio.client import connect

    window = 1000  # pushes awaiting the node's ok: flow control without a round trip each

    async def run() -> None:
        ws_url = url.replace("http", "ws", 1) + "/socket/websocket?vsn=2.0.0"
        async with connect(ws_url, compression=None, max_size=None) as ws:
            await ws.send(json.dumps(["1", "1", TOPIC, "phx_join", {}]))
            await ws.recv()
            acked = 0
            progress = asyncio.Event()

            async def read() -> None:  # replies, and our own echo (unread, we'd be a slow consumer)
                nonlocal acked
                async for text in ws:
                    if '"phx_reply"' in text:
                        acked += 1
                        progress.set()

            reader = asyncio.create_task(read())
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            for i in range(messages):
                while i - acked >= window:
                    progress.clear()
                    await progress.wait()
                await ws.send(json.dumps(["1", str(i + 2), TOPIC, "message", {**ENTRY, "seq": i}]))
            while acked < messages:
                progress.clear()
                await progress.wait()
            reader.cancel()

    asyncio.run(run())


async def subscribe(mode: str, url: str, messages: int, joined: Any) -> tuple[float, int]:
    """Returns (seconds from first to last message, messages received)."""
    first = last = 0.0
    count = 0
    done = asyncio.Event()

    def seen() -> None:
        nonlocal first, last, count
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count == messages:
            last = time.perf_counter()
            done.set()

    if mode == "gateway":
        from switchboard_client import SwitchboardGateway

        async with SwitchboardGateway(url, max_queue=messages + 1) as gateway:
            async with gateway.subscribe_to_user_channel(TOPIC.split(":", 1)[1], "auditlog") as sub:
                joined.set()
                while count < messages:
                    message = await sub.get_message(timeout=30)
                    if message is None:
                        break
                    seen()
    elif mode == "pyview":
        from switchboard_client import SwitchboardPubSub

        provider = SwitchboardPubSub(url)

        async def handler(topic: str, message: Any) -> None:
            seen()

        await provider.subscribe_topic("session-1", TOPIC, handler)
        joined.set()
        try:
            await asyncio.wait_for(done.wait(), 120)
        finally:
            await provider.stop()
    elif mode == "listen":
        from switchboard_client import SwitchboardClient

        client = SwitchboardClient(url)
        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def callback(message: dict[str, Any]) -> None:
            nonlocal first, last, count
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == messages:
                last = time.perf_counter()
                stop.set()

        thread = threading.Thread(target=client.listen, args=(TOPIC, callback, stop))
        thread.start()
        while not client.connection.joined(TOPIC):
            await asyncio.sleep(0.01)
        joined.set()
        await loop.run_in_executor(None, thread.join)
        client.close()
    else:
        from websockets.asyncio.client import connect

        async with connect(url.replace("http", "ws", 1) + "/socket/websocket?vsn=2.0.0",
                           compression=None, max_size=None) as ws:
            await ws.send(json.dumps(["1", "1", TOPIC, "phx_join", {}]))
            await ws.recv()
            joined.set()
            async for text in ws:
                frame = json.loads(text)
                if frame[3] == "message":
                    seen()
                    if count == messages:
                        break
    return (last - first if last else float("nan")), count


def subscriber(mode: str, url: str, messages: int, joined: Any, results: Any) -> None:
    results.put(asyncio.run(subscribe(mode, url, messages, joined)))


def run(mode: str, url: str, messages: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    joined, ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.Queue()
    sub = ctx.Process(target=subscriber, args=(mode, url, messages, joined, results))
    pub = ctx.Process(target=publisher, args=(url, messages, ready, go))
    sub.start()
    pub.start()
    if not (joined.wait(30) and ready.wait(30)):
        sys.exit("the subscriber or publisher did not start")
    # The subscriber is stopped while everything is published, so the node holds the backlog
    # (its send buffer is 1 GiB here); then it runs and is measured draining it, whatever the
    # publisher's own pace.
    assert sub.pid is not None
    os.kill(sub.pid, signal.SIGSTOP)
    go.set()
    pub.join(300)
    os.kill(sub.pid, signal.SIGCONT)
    seconds, count = results.get(timeout=300)
    sub.join(10)
    rate = count / seconds if seconds == seconds and seconds > 0 else 0.0
    print(f"{mode:8s} {count:>8d} messages in {seconds:6.2f} s = {rate:>9,.0f} msg/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["gateway", "pyview", "listen", "raw", "all"], default="all")
    parser.add_argument(
        "--messages", type=int, default=40_000,
        help="keep the publishing under ~10 s: the node drops a stopped reader after 10 s unacknowledged",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per mode; the median is reported")
    args = parser.parse_args()
    proc, url = start_node()
    try:
        print(f"node {binary()} at {url}; python {sys.version.split()[0]}; {os.cpu_count()} cores")
        modes = ["raw", "gateway", "pyview", "listen"] if args.mode == "all" else [args.mode]
        for mode in modes:
            rates = sorted(run(mode, url, args.messages) for _ in range(args.runs))
            print(f"{mode:8s} median {rates[len(rates) // 2]:,.0f} msg/s")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
