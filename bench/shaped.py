"""Attachments over shaped links: ``python -m bench.shaped [--runs N] [--mib 25] [--quick]``.

Needs root (network namespaces, ``tc``); without it the benchmark says so and skips.

The lab: one namespace per node and a hub namespace with two bridges. Each node has
a mesh interface (10.231.1.0/24) shaped with ``tc tbf`` in both directions, its uplink
on its own end of the veth pair and its downlink on the hub's end, and an unshaped
control interface (10.231.2.0/24) through which the driver (which runs in the hub)
reaches the node's API: a forwarder in the node's namespace passes it on to the UI on
that namespace's 127.0.0.1. Uploads and read-backs so stay off the shaped links.
(``netem`` does not load on the machines we run on, so links have no added delay.)

Four real node processes (``run.py node``, one per namespace) and a bootstrap:

- **single source**: n0 sends a file to n1 in a group of those two, both links at
  RATE up and down; next to it, in the same round, a plain Tornado WebSocket transfer
  of the same size from n0's namespace to n1's (256 KiB frames, the receiver counts
  bytes). Parley's time runs from the upload's commit to the receiver's ``complete``
  event.
- **several sources**: in a group of all four, n3 is stopped, n0 sends a file, n1 and
  n2 fetch it; then n3 starts again and fetches it from the three holders, each
  holding RATE of uplink while n3's downlink is WIDE. Timed from n3's ``downloading``
  event to its ``complete`` one; no single source could beat the plain WebSocket over
  one RATE link, so the speed-up is measured against that.

Namespaces are named ``pf-<pid>-*`` and are deleted, with every process in them, when
the benchmark ends, also when it fails (and those of a run that was killed outright, at
the start of the next). ``--quick`` (2 MiB, faster links, one round)
is the smoke run the test suite makes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, websocket_connect

from bench.attachments import FRAME, multipart
from bench.nodes import MiB, NodeProcess, form_group, start_bootstrap, start_node
from mesh import malloc

NODES = 4
MESH_NET, CONTROL_NET = "10.231.1", "10.231.2"
HUB_ADDRESS = 254
UI_PORT, MESH_PORT, WS_PORT = 8471, 8472, 8473


@dataclass(frozen=True)
class Rates:
    """Mbit/s: every node's uplink and downlink, and the wide downlink of n3."""

    rate: int
    wide: int


# The lab (run as root in the root namespace) -----------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _tc(namespace: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "tc", *args], check=True,
                   capture_output=True)


class Lab:
    """The namespaces, bridges, veth pairs and shapers; ``teardown`` removes them all."""

    def __init__(self, rates: Rates) -> None:
        self.prefix = f"pf-{os.getpid()}"
        self.hub = f"{self.prefix}-hub"
        self.nodes = [f"{self.prefix}-n{k}" for k in range(NODES)]
        self.rates = rates
        self.made: list[str] = []

    def build(self) -> None:
        for namespace in (self.hub, *self.nodes):
            _ip("netns", "add", namespace)
            self.made.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        for bridge in ("bm", "bc"):
            _ip("-n", self.hub, "link", "add", bridge, "type", "bridge")
            _ip("-n", self.hub, "link", "set", bridge, "up")
        _ip("-n", self.hub, "addr", "add", f"{CONTROL_NET}.{HUB_ADDRESS}/24", "dev", "bc")
        for k, namespace in enumerate(self.nodes):
            for inner, outer, bridge, net in (("m0", f"m{k}", "bm", MESH_NET),
                                              ("c0", f"c{k}", "bc", CONTROL_NET)):
                _ip("-n", namespace, "link", "add", inner, "type", "veth", "peer", "name",
                    outer, "netns", self.hub)
                _ip("-n", namespace, "addr", "add", f"{net}.{k + 1}/24", "dev", inner)
                _ip("-n", namespace, "link", "set", inner, "up")
                _ip("-n", self.hub, "link", "set", outer, "master", bridge, "up")
            down = self.rates.wide if k == NODES - 1 else self.rates.rate
            _shape(namespace, "m0", self.rates.rate)
            _shape(self.hub, f"m{k}", down)

    @staticmethod
    def sweep() -> None:
        """Remove the namespaces of earlier runs whose process is gone (killed with
        SIGKILL, say, so that their ``finally`` never ran)."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        stale = [name for line in listed.stdout.splitlines()
                 if (match := re.match(r"^(pf-(\d+)-(?:hub|n\d+))\b", line))
                 and not Path(f"/proc/{match.group(2)}").exists()
                 for name in [match.group(1)]]
        if stale:
            lab = Lab(Rates(0, 0))
            lab.made = stale
            lab.teardown()

    def teardown(self) -> None:
        """Kill whatever still runs in our namespaces, then delete them."""
        for namespace in reversed(self.made):
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
        for namespace in reversed(self.made):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.made.clear()


def _shape(namespace: str, device: str, mbit: int) -> None:
    """Token bucket at ``mbit``: a bucket of 10 ms of traffic (at least 64 KiB), and
    at most 50 ms of queue before drops."""
    burst = max(64 * 1024, mbit * 1_000_000 // 8 // 100)
    _tc(namespace, "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{mbit}mbit",
        "burst", str(burst), "latency", "50ms")


def outer(args: argparse.Namespace, rates: Rates) -> int:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("bench.shaped needs root and iproute2 (network namespaces, tc): skipped")
        return 0
    Lab.sweep()
    lab = Lab(rates)
    with tempfile.TemporaryDirectory(prefix="parley-shaped-") as tmp:
        try:
            lab.build()
            inner = subprocess.run(
                ["ip", "netns", "exec", lab.hub, sys.executable, "-m", "bench.shaped",
                 "--role", "drive", "--prefix", lab.prefix, "--base", tmp,
                 "--runs", str(args.runs), "--size", str(args.size),
                 "--rate", str(rates.rate), "--wide", str(rates.wide)])
            return inner.returncode
        finally:
            lab.teardown()


# Helpers inside namespaces --------------------------------------------------------------


async def forward(listen: str, port: int) -> None:
    """Pass connections to ``listen:port`` on to 127.0.0.1:port (the node's UI)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen, port)
    print("forwarding", flush=True)
    await server.serve_forever()


class _Push(WebSocketHandler):
    def initialize(self, state: dict) -> None:
        self.state = state

    async def open(self) -> None:
        self.set_nodelay(True)
        data, self.state["t0"] = self.state["data"], time.perf_counter()
        for offset in range(0, len(data), FRAME):
            await self.write_message(data[offset:offset + FRAME], binary=True)

    def on_message(self, message: str | bytes) -> None:
        self.state["done"].set_result(time.perf_counter() - self.state["t0"])


async def ws_serve(address: str, size: int) -> None:
    """Send ``size`` bytes to the first client; print the seconds until it had them."""
    state = {"data": os.urandom(size), "done": asyncio.get_running_loop().create_future()}
    server = HTTPServer(Application([(r"/", _Push, {"state": state})],
                                    websocket_max_message_size=FRAME + 1024))
    server.add_sockets(bind_sockets(WS_PORT, address))
    print("ready", flush=True)
    print(json.dumps({"seconds": await asyncio.wait_for(state["done"], 600)}), flush=True)
    server.stop()


async def ws_get(address: str, size: int) -> None:
    ws = await websocket_connect(f"ws://{address}:{WS_PORT}/", max_message_size=FRAME + 1024)
    got = 0
    while got < size:
        message = await ws.read_message()
        if message is None:
            raise RuntimeError("sender went away")
        got += len(message)
    await ws.write_message("done")
    ws.close()


# The driver (in the hub namespace) --------------------------------------------------------


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.prefix, self.base, self.size = args.prefix, Path(args.base), args.size
        self.bootstrap = ""
        self.procs: list[subprocess.Popen[str]] = []

    def _netns(self, k: int) -> list[str]:
        return ["ip", "netns", "exec", f"{self.prefix}-n{k}"]

    def spawn(self, k: int, *args: str) -> subprocess.Popen[str]:
        """A helper role of this module in node k's namespace."""
        popen = subprocess.Popen([*self._netns(k), sys.executable, "-m", "bench.shaped",
                                  *args], stdout=subprocess.PIPE, text=True)
        self.procs.append(popen)
        return popen

    def helper(self, k: int, *args: str) -> subprocess.Popen[str]:
        """``spawn``, once the helper printed its first line (it is ready)."""
        popen = self.spawn(k, *args)
        assert popen.stdout is not None
        popen.stdout.readline()
        return popen

    def node(self, k: int) -> NodeProcess:
        node = start_node(self.base / f"n{k}", self.bootstrap, prefix=self._netns(k),
                          args=("--ui-port", str(UI_PORT), "--mesh-port", str(MESH_PORT),
                                "--mesh-host", f"{MESH_NET}.{k + 1}", "--no-dht"),
                          ui_via=f"{CONTROL_NET}.{k + 1}:{UI_PORT}")
        self.procs.append(node.popen)
        return node

    async def plain_ws(self) -> float:
        """Seconds for ``size`` bytes over a plain WebSocket from n0 to n1."""
        server = self.helper(0, "--role", "ws-serve", "--address", f"{MESH_NET}.1",
                              "--size", str(self.size))
        client = self.spawn(1, "--role", "ws-get", "--address", f"{MESH_NET}.1",
                            "--size", str(self.size))
        assert server.stdout is not None
        line = await asyncio.to_thread(server.stdout.readline)
        await asyncio.to_thread(client.wait, 600)
        await asyncio.to_thread(server.wait, 60)
        return float(json.loads(line)["seconds"])

    async def upload(self, node: NodeProcess, group: str) -> tuple[str, float]:
        """Upload a random file; (its id, the moment the message was committed)."""
        body, content_type = multipart("bench.bin", os.urandom(self.size))
        reply = await node.call("POST", f"/api/v1/groups/{group}/messages", raw=body,
                                content_type=content_type)
        return reply["attachment"]["id"], time.perf_counter()


async def _states(ws: WebSocketClientConnection, file_id: str | None = None,
                  ) -> dict[str, tuple[float, int]]:
    """Read attachment events until one says ``complete`` (for ``file_id``, if given);
    returns {state: (first time seen, bytes_done then)}."""
    seen: dict[str, tuple[float, int]] = {}
    while (raw := await ws.read_message()) is not None:
        event = json.loads(raw)
        data = event["data"]
        if event["type"] != "attachment" or (file_id and data["id"] != file_id):
            continue
        seen.setdefault(data["state"], (time.perf_counter(), data["bytes_done"]))
        if data["state"] == "complete":
            return seen
    raise RuntimeError("events socket closed")


async def drive(args: argparse.Namespace) -> None:
    d = Driver(args)
    size = args.size
    try:
        for k in range(NODES):
            d.helper(k, "--role", "forward", "--address", f"{CONTROL_NET}.{k + 1}")
        boot, d.bootstrap = start_bootstrap(d.base, f"{CONTROL_NET}.{HUB_ADDRESS}")
        d.procs.append(boot)
        nodes = [d.node(k) for k in range(NODES)]
        for node in nodes:
            await node.registered()
        pair = await form_group(nodes[:2], "single")
        quad = await form_group(nodes, "several")
        await asyncio.sleep(2.0)  # links settle
        single, plain, several, missed, sources = [], [], [], 0, {}
        for _ in range(args.runs):
            # single source: n0 -> n1 over RATE links, then the plain WebSocket
            watch = asyncio.ensure_future(_states(await nodes[1].events()))
            _, committed = await d.upload(nodes[0], pair)
            single.append((await asyncio.wait_for(watch, 600))["complete"][0] - committed)
            plain.append(await d.plain_ws())
            # several sources: n1 and n2 fetch while n3 is down, then n3 from all three
            nodes[3].popen.terminate()
            await asyncio.to_thread(nodes[3].popen.wait, 30)
            watches = [asyncio.ensure_future(_states(await n.events())) for n in nodes[1:3]]
            file_id, _ = await d.upload(nodes[0], quad)
            await asyncio.wait_for(asyncio.gather(*watches), 600)
            started = time.perf_counter()
            nodes[3] = d.node(3)
            seen = await asyncio.wait_for(_states(await nodes[3].events(), file_id), 600)
            begin, done_then = seen.get("downloading", (started, 0))
            if done_then:  # it began before the events socket was up: count from start
                begin, missed = started, missed + 1
            several.append(seen["complete"][0] - begin)
            info = await nodes[3].call("GET", f"/api/v1/attachments/{file_id}/info")
            names = {n.user_id: f"n{k}" for k, n in enumerate(nodes)}
            sources = {names[p]: c for p, c in info["transfer"]["sources"].items()}
    finally:
        for proc in d.procs:
            proc.terminate()
        for proc in d.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    report(size, args, single, plain, several, missed, sources)


def report(size: int, args: argparse.Namespace, single: list[float], plain: list[float],
           several: list[float], missed: int, sources: dict[str, int]) -> None:
    def mbit(seconds: float) -> float:
        return size * 8 / seconds / 1e6

    print(f"# Attachments over shaped links: {size / MiB:g} MiB, every node {args.rate} "
          f"Mbit/s up and down (n3 down: {args.wide} Mbit/s), {args.runs} rounds\n")
    print("| transfer | median s | Mbit/s | rounds (s) |\n|---|---|---|---|")
    for label, times in (("plain WebSocket, n0 -> n1 (baseline)", plain),
                         ("Parley, one source: n0 -> n1", single),
                         ("Parley, three sources: n0, n1, n2 -> n3", several)):
        median = statistics.median(times)
        print(f"| {label} | {median:.2f} | {mbit(median):.1f} | "
              f"{', '.join(f'{t:.2f}' for t in times)} |")
    ratio = [p / s for p, s in zip(plain, single, strict=True)]
    speedup = [p / s for p, s in zip(plain, several, strict=True)]
    print(f"\nOne source, Parley / plain WebSocket per round: "
          f"{', '.join(f'{r:.0%}' for r in ratio)}; median {statistics.median(ratio):.0%} "
          f"(target >= 90%)")
    print(f"Three sources, speed-up over the plain single-source WebSocket per round: "
          f"{', '.join(f'{r:.2f}x' for r in speedup)}; median {statistics.median(speedup):.2f}x "
          f"(target >= 2x)")
    print(f"Chunks n3 got per source in the last round: {sources}")
    if missed:
        print(f"({missed} round(s) timed n3 from its process start: its download began "
              "before its events socket was up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=25)
    parser.add_argument("--rate", type=int, default=20, help="Mbit/s per node, each way")
    parser.add_argument("--wide", type=int, default=100, help="Mbit/s of n3's downlink")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 MiB at 100 Mbit/s (n3: 1000), one round")
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--base", default="", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.mib, args.rate, args.wide = 1, 2, 100, 1000
    malloc.tune()  # the baselines run with the allocator settings every node has
    if args.role == "forward":
        asyncio.run(forward(args.address, UI_PORT))
    elif args.role == "ws-serve":
        asyncio.run(ws_serve(args.address, args.size))
    elif args.role == "ws-get":
        asyncio.run(ws_get(args.address, args.size))
    elif args.role == "drive":
        asyncio.run(drive(args))
    else:
        args.size = args.size or args.mib * MiB
        sys.exit(outer(args, Rates(args.rate, args.wide)))


if __name__ == "__main__":
    main()
