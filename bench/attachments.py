"""Attachment transfer: ``python -m bench.attachments [--runs N] [--mib 25]``.

Five real node processes on loopback in one group (plus a bootstrap process). The first
uploads a random 25 MiB file through the node API; the four others pull its chunks
(from the sender and from each other), verify, store and report completion. Timed per
receiver from the moment the upload's message is committed (the POST returned) to
the receiver's attachment being complete; the upload itself (receiving the body,
encrypting and hashing 100 chunks, fsyncing them) is reported separately. Peak memory
per node is VmHWM minus the RSS it had before the first upload.

Next to it, in the same run, the same bytes from one process to four receiver
processes over (a) plain Tornado WebSockets in 256 KiB frames and (b) raw loopback TCP.
Those receivers only count bytes: no encryption, hashing or disk. Every process runs
with the allocator settings of a node (mesh.malloc), so that none of the difference
is the allocator's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, websocket_connect

from bench.nodes import MiB, NodeProcess, start_group
from mesh import malloc

RECEIVERS = 4
FRAME = 256 * 1024


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----parleybench" + os.urandom(8).hex()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def parley_run(nodes: list[NodeProcess], group: str, size: int,
                     ) -> tuple[float, list[float], dict, float]:
    """One upload; returns (upload seconds, per-receiver seconds, receiver stats, CPU
    seconds all nodes used from the commit until the last receiver was done)."""
    data = os.urandom(size)
    body, content_type = multipart("bench.bin", data)
    done: dict[int, float] = {}
    sockets = [await node.events() for node in nodes[1:]]

    async def watch(i: int, ws: WebSocketClientConnection) -> None:
        """Completion is taken from the receiver's events socket (no polling load)."""
        while (raw := await ws.read_message()) is not None:
            event = json.loads(raw)
            if event["type"] == "attachment" and event["data"]["state"] == "complete":
                done[i] = time.perf_counter()
                return

    watchers = [asyncio.ensure_future(watch(i, ws)) for i, ws in enumerate(sockets)]
    t0 = time.perf_counter()
    reply = await nodes[0].call("POST", f"/api/v1/groups/{group}/messages", raw=body,
                                content_type=content_type)
    committed = time.perf_counter()
    cpu = -sum(cpu_seconds(n.popen.pid) for n in nodes)
    file_id = reply["attachment"]["id"]
    await asyncio.wait_for(asyncio.gather(*watchers), 300)
    cpu += sum(cpu_seconds(n.popen.pid) for n in nodes)
    for ws in sockets:
        ws.close()
    stats = {i: (await n.call("GET", f"/api/v1/attachments/{file_id}/info"))["transfer"]
             for i, n in enumerate(nodes[1:])}
    digest = hashlib.sha256(data).hexdigest()
    for node in nodes[1:]:
        got = await node.fetch(f"/api/v1/attachments/{file_id}")
        if hashlib.sha256(got).hexdigest() != digest:
            raise RuntimeError("a receiver got different bytes")
    return committed - t0, [done[i] - committed for i in range(RECEIVERS)], stats, cpu


# Baselines: one sender process, four receiver processes ------------------------------


class Push(WebSocketHandler):
    """Sends ``size`` bytes in 256 KiB binary frames once every receiver is there."""

    def initialize(self, state: dict) -> None:
        self.state = state

    def open(self) -> None:
        self.set_nodelay(True)
        self.state["clients"].append(self)
        if len(self.state["clients"]) == RECEIVERS:
            self.state["ready"].set()

    def on_message(self, message: str | bytes) -> None:
        self.state["done"][id(self)] = time.perf_counter()
        self.state["cpu"].append(json.loads(message)["cpu"])
        if len(self.state["done"]) == RECEIVERS:
            self.state["finished"].set()


async def ws_sender(size: int, role: str = "ws-receiver") -> tuple[list[float], float]:
    """(seconds per receiver, CPU seconds of the sender and the four receivers).
    ``role`` "ws-store" makes the receivers hash and write every frame to a file."""
    state = {"clients": [], "done": {}, "cpu": [], "ready": asyncio.Event(),
             "finished": asyncio.Event()}
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/push", Push, {"state": state})],
                                    websocket_max_message_size=FRAME + 1024))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    clients = [_spawn(role, f"ws://127.0.0.1:{port}/push", size)
               for _ in range(RECEIVERS)]
    await asyncio.wait_for(state["ready"].wait(), 30)
    data = os.urandom(size)
    t0, cpu0 = time.perf_counter(), time.process_time()

    async def push(handler: Push) -> None:
        for offset in range(0, size, FRAME):
            await handler.write_message(data[offset:offset + FRAME], binary=True)

    await asyncio.gather(*(push(h) for h in state["clients"]))
    await asyncio.wait_for(state["finished"].wait(), 120)
    times = [t - t0 for t in state["done"].values()]
    cpu = time.process_time() - cpu0 + sum(state["cpu"])
    for client in clients:
        client.wait(10)
    server.stop()
    return times, cpu


async def ws_receiver(url: str, size: int, store: bool = False) -> None:
    ws = await websocket_connect(url, max_message_size=FRAME + 1024)
    got, cpu0 = 0, time.process_time()
    with tempfile.TemporaryFile() as out:
        while got < size:
            message = await ws.read_message()
            if message is None:
                raise RuntimeError("sender went away")
            if store:  # what a receiver must do at least: check and keep every chunk
                assert isinstance(message, bytes)
                hashlib.sha256(message).digest()
                os.pwrite(out.fileno(), message, got)
            got += len(message)
    await ws.write_message(json.dumps({"cpu": time.process_time() - cpu0}))
    ws.close()


def tcp_sender(size: int) -> list[float]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [_spawn("tcp-receiver", str(port), size) for _ in range(RECEIVERS)]
    conns = [listener.accept()[0] for _ in range(RECEIVERS)]
    data = os.urandom(size)
    t0 = time.perf_counter()
    done: list[float] = []

    def send(conn: socket.socket) -> None:
        conn.sendall(data)

    import threading
    threads = [threading.Thread(target=send, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for conn in conns:  # each receiver answers one byte when it has everything
        conn.recv(1)
        done.append(time.perf_counter() - t0)
    for thread in threads:
        thread.join()
    for conn in conns:
        conn.close()
    for client in clients:
        client.wait(10)
    listener.close()
    return sorted(done)


def tcp_receiver(port: int, size: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        got = 0
        buffer = bytearray(FRAME)
        while got < size:
            n = sock.recv_into(buffer)
            if not n:
                raise RuntimeError("sender went away")
            got += n
        sock.sendall(b"!")


def _spawn(role: str, target: str, size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.attachments", "--role", role,
                             "--target", target, "--size", str(size)])


# Report --------------------------------------------------------------------------------


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


async def main_bench(runs: int, size: int) -> None:
    print(f"# Attachments: {size / MiB:.0f} MiB to {RECEIVERS} receivers on loopback "
          f"({os.cpu_count()} CPUs), {runs} rounds\n")
    results, ws_runs, tcp_runs, ws_cpu, store_runs, store_cpu = [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        procs, nodes, group = await start_group(Path(tmp), RECEIVERS + 1)
        try:
            idle = [n.memory("VmRSS") for n in nodes]
            for _ in range(runs):  # interleaved, so all three see the same background load
                results.append(await parley_run(nodes, group, size))
                times, cpu = await ws_sender(size)
                ws_runs.append(sorted(times))
                ws_cpu.append(cpu)
                times, cpu = await ws_sender(size, "ws-store")
                store_runs.append(max(times))
                store_cpu.append(cpu)
                tcp_runs.append(tcp_sender(size))
            peaks = [n.memory("VmHWM") - base for n, base in zip(nodes, idle, strict=True)]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    print("Per round, seconds until the last receiver had everything: Parley",
          [round(max(r[1]), 2) for r in results], "Tornado WS",
          [round(max(r), 2) for r in ws_runs], "\n")

    def per_receiver(rows: list[list[float]], pick) -> list[float]:
        return [pick(sorted(r)[i] for r in rows) for i in range(RECEIVERS)]

    parley_rows = [r[1] for r in results]
    print("| receiver (by finish) | Parley s | Parley MB/s | Tornado WS s | Tornado WS MB/s "
          "| Parley / WS | raw TCP s | raw TCP MB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, pick in (("median", statistics.median), ("best", min)):
        parley = per_receiver(parley_rows, pick)
        ws, tcp = per_receiver(ws_runs, pick), per_receiver(tcp_runs, pick)
        for i in range(RECEIVERS):
            print(f"| {i + 1} ({label}) | {parley[i]:.2f} | {mbps(size, parley[i]):.0f} | "
                  f"{ws[i]:.2f} | {mbps(size, ws[i]):.0f} | {ws[i] / parley[i]:.0%} | "
                  f"{tcp[i]:.3f} | {mbps(size, tcp[i]):.0f} |")
    parley_cpu = statistics.median(r[3] for r in results)
    print(f"\nCPU seconds for the whole distribution (all processes, median): Parley "
          f"{parley_cpu:.2f} ({RECEIVERS + 1} nodes: receive, verify, store, serve), Tornado WS "
          f"{statistics.median(ws_cpu):.2f} (one sender, {RECEIVERS} byte counters); "
          f"{RECEIVERS * size / MiB:.0f} MiB delivered, {os.cpu_count()} CPUs.")
    print(f"Tornado WS whose receivers hash and write every frame (no crypto, no "
          f"protocol): last receiver done after {statistics.median(store_runs):.2f} s, "
          f"{statistics.median(store_cpu):.2f} CPU seconds (medians).")
    upload = statistics.median(r[0] for r in results)
    print(f"\nUpload through the API (body to disk, encrypt + hash + fsync 100 chunks, "
          f"commit the message), median: {upload:.2f} s ({mbps(size, upload):.0f} MB/s).")
    print("\n| node | peak memory over idle (MiB) |\n|---|---|")
    for i, peak in enumerate(peaks):
        role = "sender" if i == 0 else f"receiver {i}"
        print(f"| {role} | {peak / MiB:.1f} |")
    last = results[-1][2]
    print("\nChunks per source in the last round (sender = s, other receivers = r1..r4):")
    names = {n.user_id: ("s" if i == 0 else f"r{i}") for i, n in enumerate(nodes)}
    for i in range(RECEIVERS):
        sources = {names[p]: c for p, c in last[i]["sources"].items()}
        print(f"- r{i + 1}: {sources}")


def main() -> None:
    global RECEIVERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=25)
    parser.add_argument("--receivers", type=int, default=RECEIVERS,
                        help="receiving nodes (and baseline receivers); 1 shows a single "
                             "pair, which on 2 CPUs does not queue for CPU")
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    RECEIVERS = args.receivers
    malloc.tune()  # the baselines run with the allocator settings every node process has
    if args.role in ("ws-receiver", "ws-store"):
        asyncio.run(ws_receiver(args.target, args.size, store=args.role == "ws-store"))
    elif args.role == "tcp-receiver":
        tcp_receiver(int(args.target), args.size)
    else:
        asyncio.run(main_bench(args.runs, args.mib * MiB))


if __name__ == "__main__":
    main()
