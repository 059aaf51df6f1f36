"""DHT lookup latency: ``python -m bench.dht [--quick]``.

100 DHT nodes on 127.0.0.1 in this process (one event loop, which is fine for a DHT:
nodes mostly wait), records published from random nodes, then lookups one at a time
from random nodes for random records: first with every node up, then after 30% of
the nodes were killed silently (their sockets closed: requests to them vanish, as
with a crashed or unplugged machine). Next to it, in the same run, the bootstrap HTTP
lookup of the same records from a real ``run.py bootstrap`` process: raw keep-alive
GETs (bench/httpload.py) and DiscoveryClient.lookup (new connection + verification,
what a node does). ``--with-stock`` adds the `kademlia` package's own Server.get on a
network of unmodified package nodes, for the churn numbers the tuning is about.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kademlia.network import Server

from bench.httpload import run_load, start_server_process
from mesh.dht import DhtConfig, DhtNode, record_key
from mesh.discovery import DiscoveryClient, sign_request
from mesh.errors import DhtError
from mesh.identity import LAST_RESORT_PREKEY_ID, KeyPair, PreKey, Record, SignedPreKey


@dataclass
class Sample:
    latencies_ms: list[float]
    found: int

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def row(self, what: str, network: str) -> str:
        return (f"| {what} | {network} | {self.count} | {self.found / self.count:.1%} | "
                f"{statistics.median(self.latencies_ms):.2f} | {self.pct(99):.2f} | "
                f"{max(self.latencies_ms):.2f} |")


async def timed(count: int, one: Callable[[int], Awaitable[bool]]) -> Sample:
    latencies, found = [], 0
    for i in range(count):
        t0 = time.perf_counter()
        ok = await one(i)
        latencies.append((time.perf_counter() - t0) * 1000)
        found += ok
    return Sample(latencies, found)


def make_users(count: int) -> list[tuple[KeyPair, Record]]:
    users = []
    for i in range(count):
        identity, spk = KeyPair.generate(), KeyPair.generate()
        users.append((identity, Record.create(
            identity, signed_prekey=SignedPreKey(1, spk.public, identity.sign(spk.public)),
            last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public),
            endpoints=[f"ws://127.0.0.1:{20000 + i}/mesh"], seq=1, now=time.time())))
    return users


def registration(identity: KeyPair, record: Record) -> bytes:
    body = json.dumps({"record": record.to_json(), "one_time_prekeys": []}).encode()
    headers = sign_request(identity, "POST", "/v1/users", body, time.time())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /v1/users HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body


async def start_network(size: int, config: DhtConfig) -> list[DhtNode]:
    nodes: list[DhtNode] = []
    for _ in range(size):
        node = DhtNode(config)
        await node.listen(0, "127.0.0.1")
        if nodes:
            await node.join([nodes[0].address, random.choice(nodes).address])
        nodes.append(node)
    return nodes


async def bench_ours(size: int, users: list[tuple[KeyPair, Record]], lookups: int,
                     kill: float, config: DhtConfig) -> tuple[Sample, Sample, int]:
    nodes = await start_network(size, config)
    try:
        for _, record in users:
            await random.choice(nodes).publish(record)

        async def lookup(_: int) -> bool:
            _, record = random.choice(users)
            try:
                return await random.choice(live).lookup(record.user_id) == record
            except DhtError:
                return False

        live = nodes
        healthy = await timed(lookups, lookup)
        dead = random.sample(nodes, int(size * kill))
        for node in dead:
            await node.stop()
        live = [n for n in nodes if n.running]
        churned = await timed(lookups, lookup)
        return healthy, churned, len(live)
    finally:
        for node in nodes:
            await node.stop()


async def bench_stock(size: int, users: list[tuple[KeyPair, Record]], lookups: int,
                      kill: float) -> tuple[Sample, Sample]:
    """The package as it comes: Server.set/get, 5 s RPC timeout, lock-step crawler."""
    servers: list[Server] = []
    for _ in range(size):
        server = Server()
        await server.listen(0, "127.0.0.1")
        if servers:
            first = servers[0].transport.get_extra_info("sockname")[:2]
            other = random.choice(servers).transport.get_extra_info("sockname")[:2]
            await server.bootstrap([first, other])
        servers.append(server)
    try:
        for _, record in users:
            await random.choice(servers).set(record_key(record.user_id), record.encode())

        async def lookup(_: int) -> bool:
            _, record = random.choice(users)
            return await random.choice(live).get(record_key(record.user_id)) == record.encode()

        live = servers
        healthy = await timed(lookups, lookup)
        for server in random.sample(servers, int(size * kill)):
            server.stop()
            servers.remove(server)
        live = servers
        churned = await timed(lookups, lookup)
        return healthy, churned
    finally:
        for server in servers:
            server.stop()
        await asyncio.sleep(6)  # let the package's pending 5 s timeouts fire before exit


async def bench_bootstrap(users: list[tuple[KeyPair, Record]],
                          lookups: int) -> tuple[Sample, Sample]:
    tmp = tempfile.mkdtemp(prefix="parley-bench-dht-")
    proc, port = start_server_process(
        ["run.py", "bootstrap", "--port", "0", "--no-dht", "--db", f"{tmp}/b.db", "--rate", "1e9",
         "--burst", "1000000000", "--pow-bits", "0", "--registration-quota", "1e9",
         "--log-level", "WARNING"])
    try:
        regs = [registration(identity, record) for identity, record in users]
        result = await run_load("127.0.0.1", port, regs.__getitem__, concurrency=4,
                                total=len(regs))
        assert result.errors == 0, "registrations failed"
        ids = [record.user_id for _, record in users]
        raw = await run_load("127.0.0.1", port, lambda i: (
            f"GET /v1/users/{random.choice(ids)} HTTP/1.1\r\nHost: bench\r\n\r\n").encode(),
            concurrency=1, total=lookups)
        client = DiscoveryClient(f"http://127.0.0.1:{port}", KeyPair.generate())

        async def lookup(_: int) -> bool:
            _, record = random.choice(users)
            return await client.lookup(record.user_id) == record

        verified = await timed(lookups, lookup)
        return Sample(raw.latencies_ms, raw.requests - raw.errors), verified
    finally:
        proc.terminate()
        proc.wait()


async def measure(args: argparse.Namespace) -> list[str]:
    users = make_users(args.records)
    http_raw, http_verified = await bench_bootstrap(users, args.lookups)
    net = f"{args.nodes} nodes"
    rows = [
        http_raw.row("bootstrap GET /v1/users/{id}, keep-alive, unverified (baseline)",
                     "bootstrap up"),
        http_verified.row("bootstrap DiscoveryClient.lookup (verified)", "bootstrap up"),
    ]
    for name, config in (("loopback timeouts 0.3 s / 0.05 s", DhtConfig.loopback()),
                         ("default timeouts 1 s / 0.3 s", DhtConfig())):
        healthy, churned, alive = await bench_ours(args.nodes, users, args.lookups,
                                                   args.kill, config)
        dead = f"{alive} of {args.nodes} alive ({args.kill:.0%} killed silently)"
        rows += [healthy.row(f"DHT DhtNode.lookup, {name}", net),
                 churned.row(f"DHT DhtNode.lookup, {name}", dead)]
    if args.with_stock:
        stock_healthy, stock_churned = await bench_stock(args.nodes, users,
                                                         args.stock_lookups, args.kill)
        rows += [stock_healthy.row("kademlia 2.2.3 Server.get as shipped (unverified)", net),
                 stock_churned.row("kademlia 2.2.3 Server.get as shipped (unverified)",
                                   f"{args.nodes - int(args.nodes * args.kill)} of "
                                   f"{args.nodes} alive")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--kill", type=float, default=0.3, help="fraction of nodes killed")
    parser.add_argument("--with-stock", action="store_true",
                        help="also measure the kademlia package's own Server.get (slow)")
    parser.add_argument("--stock-lookups", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds (20 nodes, 10 records, 20 lookups)")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.records, args.lookups, args.stock_lookups = 20, 10, 20, 5
    random.seed(args.seed)
    # the package logs every routing-table change at INFO and each timeout at ERROR
    logging.basicConfig(level=logging.CRITICAL)
    rows = asyncio.run(measure(args))
    print("| lookup | network | lookups | found | p50 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
