"""Mesh dissemination on loopback: ``python -m bench.mesh --nodes 10,50 [--quick]``.

Per size N, N real nodes (identity, MemoryStore, MeshRuntime = ConnectionManager +
MeshServer + authenticated AES-GCM links + gossip and sync engines) spread over
``--procs`` worker processes form one topic on 127.0.0.1. After a warm-up in which
every node publishes (each author's tree forms), two phases run with 1 KiB payloads
from random nodes:

- steady: ``--rate`` msg/s (whole topic) for ``--seconds``: end-to-end latency (publish
  to delivered at every other member), delivery ratio, bytes on links;
- capacity: offered rates doubling from the steady rate, ``--step-seconds`` each, until
  a step is not fully delivered within 10 s or its p99 exceeds ``--max-p99``: the last
  passing step gives the sustained messages/s and the CPU time per message per node
  (whose inverse is what one node could relay on a core of its own).

The baseline runs in the same processes over exactly the links our mesh had: a plain
Tornado WebSocket relay that floods each new message to every neighbour but the one it
came from (dedup by id), with no crypto, no framing beyond the WebSocket's, no gossip.

Bytes: "payload" counts the payload bytes of every message copy put on a link;
amplification = payload / (payload size x (N-1) x messages); "control" is everything
else on the links (frame headers, link seals, IHave, Ack, sync, ...). WebSocket headers
are counted on neither side. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import struct
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect

from mesh.gossip_state import Deliver, Event
from mesh.identity import LAST_RESORT_PREKEY_ID, KeyPair, PreKey, Record, SignedPreKey
from mesh.memstore import MemoryStore
from mesh.runtime import MeshHooks, MeshRuntime, Meter

TOPIC = b"bench-topic-0001"
HEAD = struct.Struct(">8sd")  # message key, publish time (time.monotonic, system-wide)


def make_record() -> tuple[KeyPair, Record]:
    identity = KeyPair.generate()
    spk = KeyPair.generate()
    record = Record.create(
        identity, signed_prekey=SignedPreKey(1, spk.public, identity.sign(spk.public)),
        last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public),
        endpoints=(), seq=1, now=int(time.time()))
    return identity, record


class Tracker:
    """First delivery time per message key at one node."""

    def __init__(self) -> None:
        self.at: dict[bytes, float] = {}

    def delivered(self, payload: bytes) -> None:
        key = payload[:8]
        if key not in self.at:
            self.at[key] = time.monotonic()


# -- our mesh -------------------------------------------------------------------------------


class GossipNode:
    def __init__(self, seed: int) -> None:
        self.identity, self.record = make_record()
        self.id = self.record.user_id
        self.store = MemoryStore()
        self.tracker = Tracker()
        self.runtime = MeshRuntime(self.identity, self.record, self.store,
                                   rng=random.Random(seed), meter=True)
        self.hooks = MeshHooks(commit=self.store.add, validate=lambda m: None,
                               on_event=self._event)
        self.port = 0

    def _event(self, event: Event) -> None:
        if isinstance(event, Deliver) and event.from_peer is not None:
            self.tracker.delivered(event.message.payload)

    def publish(self, payload: bytes) -> None:
        self.runtime.publish(TOPIC, payload)


# -- baseline relay ------------------------------------------------------------------------


class RelayHandler(WebSocketHandler):
    def initialize(self, node: RelayNode) -> None:
        self.node = node
        self.peer = ""

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.peer = self.get_argument("from")
        self.node.links[self.peer] = self

    def on_message(self, message: str | bytes) -> None:
        assert isinstance(message, bytes)
        self.node.receive(self.peer, message)


class RelayNode:
    """Flooding relay over plain WebSockets: forward each new message to every other
    neighbour. No crypto, no acks, no digests, no sync."""

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.links: dict[str, Any] = {}   # peer -> RelayHandler or client connection
        self.seen: set[bytes] = set()
        self.tracker = Tracker()
        self.payload_bytes = 0
        self.frames_in = 0
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(Application([("/relay", RelayHandler, {"node": self})]))
        self.server.add_sockets(sockets)

    async def dial(self, peer: str, port: int) -> None:
        url = f"ws://127.0.0.1:{port}/relay?from={self.id}"
        conn = await websocket_connect(
            url, on_message_callback=lambda m: m is not None and self.receive(peer, m))
        self.links[peer] = conn

    def receive(self, peer: str, data: bytes) -> None:
        self.frames_in += 1
        key = data[:8]
        if key in self.seen:
            return
        self.seen.add(key)
        self.tracker.delivered(data)
        self._flood(data, skip=peer)

    def publish(self, payload: bytes) -> None:
        self.seen.add(payload[:8])
        self._flood(payload, skip=None)

    def _flood(self, data: bytes, skip: str | None) -> None:
        for peer, link in self.links.items():
            if peer != skip:
                self.payload_bytes += len(data)
                link.write_message(data, binary=True)

    async def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.server.stop()
        await self.server.close_all_connections()


# -- worker process -------------------------------------------------------------------------


class Worker:
    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count
        self.gossip: list[GossipNode] = []
        self.relay: list[RelayNode] = []
        self.rng = random.Random(index)
        self.counter = 0
        self.cpu_mark = 0.0
        self.events_mark: dict[str, int] = {}

    def nodes(self) -> Sequence[GossipNode | RelayNode]:
        return self.relay or self.gossip

    async def cmd_init(self) -> list[tuple[str, int]]:
        for i in range(self.count):
            node = GossipNode(self.index * 1000 + i)
            node.port = node.runtime.start(node.hooks, 0) or 0
            self.gossip.append(node)
        return [(n.id, n.port) for n in self.gossip]

    async def cmd_join(self, members: dict[str, list[str]]) -> None:
        for node in self.gossip:
            node.runtime.join(TOPIC, members)

    async def cmd_mesh(self) -> tuple[int, int]:
        """Smallest mesh here, and how many links closed so far (startup churn)."""
        return (min(len(n.runtime.engine.mesh(TOPIC)) for n in self.gossip),
                sum(len(n.runtime.closures) for n in self.gossip))

    async def cmd_publish(self, count: int, rate: float, size: int,
                          everyone: bool) -> list[tuple[bytes, float]]:
        """Publish ``count`` messages at ``rate``/s from random local nodes (or one from
        each local node if ``everyone``)."""
        out = []
        nodes = self.nodes()
        start = time.monotonic()
        for i in range(len(nodes) if everyone else count):
            due = start + i / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            self.counter += 1
            key = struct.pack(">HIH", self.index, self.counter, 0)
            now = time.monotonic()
            node = nodes[i] if everyone else self.rng.choice(nodes)
            node.publish(HEAD.pack(key, now) + bytes(size - HEAD.size))
            out.append((key, now))
        return out

    async def cmd_deliveries(self, keys: list[bytes]) -> dict[bytes, tuple[int, float]]:
        out = {}
        for key in keys:
            times = [n.tracker.at[key] for n in self.nodes() if key in n.tracker.at]
            out[key] = (len(times), max(times, default=0.0))
        return out

    async def cmd_mark(self) -> None:
        self.cpu_mark = time.process_time()
        self.events_mark = self._events() if self.gossip else {}
        for n in self.gossip:
            if n.runtime.meter is not None:
                n.runtime.meter = Meter()
        for r in self.relay:
            r.payload_bytes = r.frames_in = 0

    def _events(self) -> dict[str, int]:
        keys = ("sent_iwant", "grafts_sent", "optimized", "duplicates", "missing_given_up")
        out = {k: sum(n.runtime.engine.stats[k] for n in self.gossip) for k in keys}
        out["links_closed"] = sum(len(n.runtime.closures) for n in self.gossip)
        return out

    async def cmd_meters(self) -> dict[str, Any]:
        cpu = time.process_time() - self.cpu_mark
        if self.relay:
            payload = sum(r.payload_bytes for r in self.relay)
            return {"cpu": cpu, "payload": payload, "total": payload, "bytes": {}, "events": {}}
        by_type: dict[str, int] = {}
        payload = total = 0
        for n in self.gossip:
            meter = n.runtime.meter or Meter()
            payload += meter.payload_bytes
            total += meter.total_bytes
            for k, v in meter.bytes.items():
                by_type[k] = by_type.get(k, 0) + v
        events = {k: v - self.events_mark.get(k, 0) for k, v in self._events().items()}
        return {"cpu": cpu, "payload": payload, "total": total, "bytes": by_type,
                "events": events}

    async def cmd_meter(self, on: bool) -> None:
        """Metering re-encodes every frame; it is off while CPU time is measured."""
        for n in self.gossip:
            n.runtime.meter = Meter() if on else None

    async def cmd_edges(self) -> list[tuple[str, str]]:
        return [(n.id, p) for n in self.gossip for p in n.runtime.links()]

    async def cmd_to_relay(self) -> list[tuple[str, int]]:
        ids = [n.id for n in self.gossip]
        await asyncio.gather(*(n.runtime.close() for n in self.gossip))
        self.gossip = []
        self.relay = [RelayNode(i) for i in ids]
        return [(r.id, r.port) for r in self.relay]

    async def cmd_relay_dial(self, edges: list[tuple[str, str]], ports: dict[str, int]) -> None:
        mine = {r.id: r for r in self.relay}
        await asyncio.gather(*(mine[a].dial(b, ports[b]) for a, b in edges if a in mine))

    async def cmd_relay_links(self) -> int:
        return min(len(r.links) for r in self.relay)

    async def close(self) -> None:
        await asyncio.gather(*(n.runtime.close() for n in self.gossip),
                             *(r.close() for r in self.relay))


def worker_main(index: int, count: int, conn: Connection) -> None:
    asyncio.run(_worker(index, count, conn))


async def _worker(index: int, count: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(index, count)
    while True:
        cmd, args = await loop.run_in_executor(None, conn.recv)
        if cmd == "stop":
            await worker.close()
            conn.send(None)
            return
        conn.send(await getattr(worker, "cmd_" + cmd)(*args))


# -- coordinator -----------------------------------------------------------------------------


class Cluster:
    def __init__(self, n: int, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.n = n
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for i, size in enumerate(sizes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(i, size, theirs), daemon=True)
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    def all(self, cmd: str, *args: Any) -> list[Any]:
        for conn in self.conns:
            conn.send((cmd, args))
        return [conn.recv() for conn in self.conns]

    def each(self, cmd: str, per_worker: list[tuple]) -> list[Any]:
        for conn, args in zip(self.conns, per_worker, strict=True):
            conn.send((cmd, args))
        return [conn.recv() for conn in self.conns]

    def stop(self) -> None:
        self.all("stop")
        for proc in self.procs:
            proc.join(10)


def wait(pred: Any, within: float, step: float = 0.2) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def phase(cluster: Cluster, count: int, rate: float, size: int, drain: float,
          *, everyone: bool = False) -> dict[str, Any]:
    """Offer ``count`` messages at ``rate``/s (split across workers), wait for them to
    reach everyone, and measure."""
    cluster.all("mark")
    share = len(cluster.conns)
    sent = [kv for part in cluster.all("publish", max(1, count // share), rate / share,
                                       size, everyone) for kv in part]
    published = dict(sent)
    keys = list(published)
    want = (cluster.n - 1) * len(keys)
    result: dict[bytes, tuple[int, float]] = {}

    def done() -> bool:
        result.clear()
        for part in cluster.all("deliveries", keys):
            for key, (c, t) in part.items():
                old = result.get(key, (0, 0.0))
                result[key] = (old[0] + c, max(old[1], t))
        return sum(c for c, _ in result.values()) >= want

    wait(done, drain, 0.25)
    meters = cluster.all("meters")
    got = sum(c for c, _ in result.values())
    lat = sorted(result[k][1] - published[k] for k in keys if result[k][0] == cluster.n - 1)
    first = min(published.values())
    last = max((t for _, t in result.values()), default=first)
    payload = sum(m["payload"] for m in meters)
    total = sum(m["total"] for m in meters)
    return {
        "messages": len(keys), "delivery": got / want if want else 1.0,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "rate": len(keys) / max(last - first, 1e-9),
        "amplification": payload / (size * (cluster.n - 1) * len(keys)) if keys else 0.0,
        "control": (total - payload) / payload if payload else 0.0,
        "cpu_us": 1e6 * sum(m["cpu"] for m in meters) / (len(keys) * cluster.n),
        "by_type": {k: sum(m["bytes"].get(k, 0) for m in meters)
                    for k in {k for m in meters for k in m["bytes"]}},
        "events": {k: sum(m["events"].get(k, 0) for m in meters)
                   for k in {k for m in meters for k in m["events"]}},
    }


def capacity(cluster: Cluster, start: float, args: argparse.Namespace) -> dict[str, Any]:
    """Sustained throughput: offer doubling rates for ``--step-seconds`` each until a
    step is not fully delivered within 10 s or its p99 latency passes ``--max-p99``;
    report the last step that passed (rate = messages / time to deliver them all)."""
    best: dict[str, Any] = {"rate": 0.0, "delivery": 0.0, "cpu_us": float("nan"),
                            "offered": 0.0}
    rate = start
    while rate <= args.max_rate:
        step = phase(cluster, max(len(cluster.conns), int(rate * args.step_seconds)), rate,
                     args.size, 10.0)
        print(f"#   offered {rate:.0f}/s: delivered {step['rate']:.0f}/s, "
              f"{100 * step['delivery']:.2f}%, p99 {1000 * step['p99']:.0f} ms, "
              f"{step['cpu_us']:.0f} µs CPU/msg/node, events {step['events']}", flush=True)
        if step["delivery"] < 1.0 or not step["p99"] <= args.max_p99:
            wait(lambda: False, 3.0)  # let the overloaded step drain before moving on
            break
        best = {**step, "offered": rate}
        rate *= 2
    return best


def run_size(n: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cluster = Cluster(n, min(args.procs, n))
    try:
        listing = [x for part in cluster.all("init") for x in part]
        members = {uid: [f"ws://127.0.0.1:{port}/mesh"] for uid, port in listing}
        cluster.all("join", members)
        need = min(4, n - 1)
        churn: list[int] = []

        def settled() -> bool:
            state = cluster.all("mesh")
            churn.append(sum(c for _, c in state))
            return min(m for m, _ in state) >= need and churn[-12:] == [churn[-1]] * 12

        if not wait(settled, 120, 0.25):  # formed, and no link closed for 3 s
            raise SystemExit(f"mesh of {n} did not settle")
        out: dict[str, dict[str, Any]] = {}
        rate = args.rate or 1000.0 / n
        for name in ("mesh", "baseline"):
            for _ in range(2):  # warm-up: every node speaks, every author's tree forms
                phase(cluster, 0, 200.0, args.size, 20.0, everyone=True)
            out[name] = phase(cluster, int(rate * args.seconds), rate, args.size, 30.0)
            cluster.all("meter", False)
            out[name + "_capacity"] = capacity(cluster, rate, args)
            cluster.all("meter", True)
            if name == "mesh":
                edges = sorted({tuple(sorted(e)) for part in cluster.all("edges")
                                for e in part})
                out["mesh"]["edges"] = len(edges)
                ports = dict(x for part in cluster.all("to_relay") for x in part)
                cluster.all("relay_dial", edges, ports)
                wait(lambda: min(cluster.all("relay_links")) >= 1, 20)
        return out
    finally:
        cluster.stop()


def table(results: dict[int, dict[str, dict[str, Any]]], size: int) -> str:
    rows = ["| nodes | system | links | steady msg/s | p50 ms | p99 ms | delivery | "
            "payload ampl. | control / payload | sustained msg/s | CPU µs / msg / node | "
            "msg/s per node per core |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, res in results.items():
        for name, label in (("mesh", "Parley mesh"), ("baseline", "plain WS relay")):
            s, b = res[name], res[name + "_capacity"]
            rows.append(
                f"| {n} | {label} | {res['mesh'].get('edges', '')} | {s['rate']:.0f} | "
                f"{1000 * s['p50']:.1f} | {1000 * s['p99']:.1f} | "
                f"{100 * s['delivery']:.2f}% | {s['amplification']:.2f} | "
                f"{100 * s['control']:.0f}% | {b['rate']:.0f} | "
                f"{b['cpu_us']:.0f} | {1e6 / b['cpu_us']:.0f} |")
    return "\n".join(rows) + f"\n\nPayload {size} bytes."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,50", help="comma-separated sizes")
    parser.add_argument("--procs", type=int, default=max(2, 2 * (os.cpu_count() or 1)))
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="steady msg/s, whole topic (default 1000/N)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--step-seconds", type=float, default=2.0,
                        help="length of each capacity step")
    parser.add_argument("--max-rate", type=float, default=6400.0)
    parser.add_argument("--max-p99", type=float, default=1.0,
                        help="a capacity step fails above this p99 latency (s)")
    parser.add_argument("--sim", default="", help="also simulate these sizes, e.g. 10000")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds (5 nodes in 2 processes, short phases)")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.procs, args.seconds = "5", 2, 1.0
        args.step_seconds, args.max_rate = 0.5, 400.0
    results = {}
    for n in (int(x) for x in args.nodes.split(",") if x):
        started = time.monotonic()
        results[n] = run_size(n, args)
        print(f"# {n} nodes done in {time.monotonic() - started:.0f} s", flush=True)
        for name in ("mesh", "mesh_capacity"):
            print(f"#   {name}: bytes by frame type {results[n][name]['by_type']}, "
                  f"events {results[n][name]['events']}", flush=True)
    if results:
        print(table(results, args.size))
    if args.sim:
        from mesh.sim import SimReport, run_scenario
        print("\nSimulated (mesh/sim.py, 1% loss, 20% churn, 60 msgs from 20 senders):\n")
        print(SimReport.HEADER)
        for n in (int(x) for x in args.sim.split(",") if x):
            started = time.monotonic()
            report = run_scenario(nodes=n, messages=60, senders=20, loss=0.01, churn=0.2)
            print(report.row(), f"<!-- {time.monotonic() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
