"""Messenger throughput and latency: ``python -m bench.messenger``.

Five real node processes on loopback in one group (plus a bootstrap process). One
sender posts text messages through the node API; "delivered" means the sender's node
holds a delivery receipt from each of the four others (so the figure includes
encryption, gossip, commit with fsync, decryption and the receipt coming back).
Next to it, measured in the same run: a plain Tornado WebSocket relay forwarding the
same messages to four clients that each send an ack back through it. The CPU time
each node process used during the burst, divided by the messages, is printed too
(the sender's node, and the mean of the four receiving nodes). ``--quick`` is the
smoke run the test suite makes (50 messages, 10 one at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect

from bench.attachments import cpu_seconds
from bench.nodes import NodeProcess, start_group

NODES = 5


async def messenger_run(sender: NodeProcess, group: str, count: int,
                        sequential: bool) -> tuple[float, list[float]]:
    """Send ``count`` messages; return (seconds until all delivered, per-message latency).

    Latency is measured from the POST to the delivery event that completes the set
    (events WebSocket of the sender's node)."""
    ws = await websocket_connect(HTTPRequest(
        sender.url.replace("http", "ws") + "/api/v1/events",
        headers={"Authorization": f"Bearer {sender.token}"}))
    started: dict[str, float] = {}
    done: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[None]] = {}

    async def reader() -> None:
        while True:
            raw = await ws.read_message()
            if raw is None:
                return
            event = json.loads(raw)
            if event["type"] != "delivery":
                continue
            status = event["data"]["status"]
            mid = event["data"]["message_id"]
            if len(status) == NODES - 1 and all(s in ("delivered", "read")
                                                for s in status.values()):
                done.setdefault(mid, time.perf_counter())
                if mid in waiters and not waiters[mid].done():
                    waiters[mid].set_result(None)

    task = asyncio.ensure_future(reader())
    await ws.read_message()  # "ready"
    t0 = time.perf_counter()
    for i in range(count):
        sent_at = time.perf_counter()
        reply = await sender.call("POST", f"/api/v1/groups/{group}/messages",
                                  {"text": f"bench message {i} " + "x" * 200})
        mid = reply["message_id"]
        started[mid] = sent_at
        waiters[mid] = asyncio.get_running_loop().create_future()
        if mid in done:
            waiters[mid].set_result(None)
        if sequential:
            await asyncio.wait_for(waiters[mid], 30)
    await asyncio.wait_for(asyncio.gather(*waiters.values()), 120)
    total = time.perf_counter() - t0
    task.cancel()
    ws.close()
    return total, [(done[m] - started[m]) * 1000 for m in started]


# The baseline: a plain relay ------------------------------------------------------


class Relay(WebSocketHandler):
    clients: list[Relay]

    def initialize(self, clients: list[Relay]) -> None:
        self.clients = clients

    def open(self) -> None:
        self.set_nodelay(True)
        self.clients.append(self)

    def on_message(self, message: str | bytes) -> None:
        for client in self.clients:
            if client is not self:
                client.write_message(message)

    def on_close(self) -> None:
        self.clients.remove(self)


async def relay_run(count: int, sequential: bool) -> tuple[float, list[float]]:
    clients: list[Relay] = []
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/relay", Relay, {"clients": clients})]))
    server.add_sockets(sockets)
    url = f"ws://127.0.0.1:{sockets[0].getsockname()[1]}/relay"
    sender = await websocket_connect(url)
    receivers = [await websocket_connect(url) for _ in range(NODES - 1)]
    for ws in [sender, *receivers]:
        ws.protocol.set_nodelay(True)
    acks: dict[str, int] = {}
    waiters: dict[str, asyncio.Future[None]] = {}
    done: dict[str, float] = {}

    async def receiver(ws) -> None:
        while (raw := await ws.read_message()) is not None:
            obj = json.loads(raw)
            if obj["kind"] == "msg":
                ws.write_message(json.dumps({"kind": "ack", "id": obj["id"]}))

    async def sender_reader() -> None:
        while (raw := await sender.read_message()) is not None:
            obj = json.loads(raw)
            if obj["kind"] == "ack":
                acks[obj["id"]] = acks.get(obj["id"], 0) + 1
                if acks[obj["id"]] == NODES - 1:
                    done[obj["id"]] = time.perf_counter()
                    waiters[obj["id"]].set_result(None)

    tasks = [asyncio.ensure_future(receiver(ws)) for ws in receivers]
    tasks.append(asyncio.ensure_future(sender_reader()))
    started: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(count):
        mid = str(i)
        waiters[mid] = asyncio.get_running_loop().create_future()
        started[mid] = time.perf_counter()
        await sender.write_message(json.dumps({"kind": "msg", "id": mid,
                                               "text": f"bench message {i} " + "x" * 200}))
        if sequential:
            await waiters[mid]
    await asyncio.gather(*waiters.values())
    total = time.perf_counter() - t0
    for task in tasks:
        task.cancel()
    for ws in [sender, *receivers]:
        ws.close()
    server.stop()
    return total, [(done[m] - started[m]) * 1000 for m in started]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(count: int, latency_count: int) -> tuple[list[str], list[float]]:
    """Table rows, and the CPU milliseconds per burst message of each node process."""
    with tempfile.TemporaryDirectory(prefix="parley-bench-messenger-") as tmp:
        procs, nodes, group = await start_group(Path(tmp), NODES)
        rows, cpu = [], []
        try:
            for name, run in (("plain WebSocket relay (baseline)", relay_run),
                              ("Parley group, 5 nodes", None)):
                if run is None:
                    before = [cpu_seconds(n.popen.pid) for n in nodes]
                    burst_s, _ = await messenger_run(nodes[0], group, count,
                                                     sequential=False)
                    await asyncio.sleep(0.5)  # the last receipts' commits
                    cpu = [(cpu_seconds(n.popen.pid) - b) * 1000 / count
                           for n, b in zip(nodes, before, strict=True)]
                    _, lat = await messenger_run(nodes[0], group, latency_count,
                                                 sequential=True)
                else:
                    burst_s, _ = await run(count, sequential=False)
                    _, lat = await run(latency_count, sequential=True)
                rows.append(f"| {name} | {count / burst_s:,.0f} | "
                            f"{statistics.median(lat):.1f} | {pct(lat, 99):.1f} |")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    return rows, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500,
                        help="messages in the throughput burst")
    parser.add_argument("--latency-count", type=int, default=100,
                        help="messages sent one at a time for the latency figures")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 50 messages, 10 one at a time")
    args = parser.parse_args()
    if args.quick:
        args.count, args.latency_count = 50, 10
    rows, cpu = asyncio.run(measure(args.count, args.latency_count))
    print("| system | messages/s, all delivered | send-to-all-delivered p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nCPU per burst message (ms, including the 0.5 s after it): sender's node "
          f"{cpu[0]:.2f}, receiving nodes {statistics.mean(cpu[1:]):.2f} each "
          f"(min {min(cpu[1:]):.2f}, max {max(cpu[1:]):.2f}); all five {sum(cpu):.2f}")


if __name__ == "__main__":
    main()
