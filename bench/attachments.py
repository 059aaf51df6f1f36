"""Attachment transfer: ``python -m bench.attachments [--runs N] [--mib 25]``.

Five real node processes on loopback in one group (plus a bootstrap process). The first
uploads a random 25 MiB file through the node API; the four others pull its chunks
(from the sender and from each other), verify, store and report completion. Timed per
receiver from the moment the upload's message is committed (the POST returned) to
the receiver's attachment being complete; the upload itself (receiving the body,
encrypting and hashing 100 chunks, fsyncing them) is reported separately. Peak memory
per node is VmHWM minus the RSS it had before the first upload.

Next to it, in the same run, the same bytes from one process to four receiver
processes over plain Tornado WebSockets in 256 KiB frames, with receivers that

- do the mandatory work and nothing else (the target's baseline): the sender seals
  every frame with AES-256-GCM under a key of its own per receiver (as a link does),
  and each receiver opens it, checks its SHA-256 against a list sent up front (as a
  FileRef announces) and writes it to a file;
- hash and write every frame (no encryption);
- only count bytes;

and over raw loopback TCP. Every process runs with the allocator settings of a node
(mesh.malloc), so that none of the difference is the allocator's. ``--quick`` is a
short smoke run (2 MiB, one round) for the test suite.
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

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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


# Receiver roles: what each does with every frame.
PLAIN, STORE, MANDATORY = "ws-receiver", "ws-store", "ws-mandatory"


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


async def ws_sender(size: int, role: str = PLAIN) -> tuple[list[float], float]:
    """(seconds per receiver, CPU seconds of the sender and the four receivers).
    STORE receivers hash and write every frame to a file; MANDATORY ones are first sent
    the frames' SHA-256 list, then every frame sealed under their own AES-256-GCM key,
    which they open, check and write."""
    state = {"clients": [], "done": {}, "cpu": [], "ready": asyncio.Event(),
             "finished": asyncio.Event()}
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/push", Push, {"state": state})],
                                    websocket_max_message_size=FRAME + 1024))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    keys = [AESGCM.generate_key(256) for _ in range(RECEIVERS)]
    clients = [_spawn(role, f"ws://127.0.0.1:{port}/push?key={key.hex()}", size)
               for key in keys]
    await asyncio.wait_for(state["ready"].wait(), 30)
    data = os.urandom(size)
    t0, cpu0 = time.perf_counter(), time.process_time()

    async def push(handler: Push) -> None:
        if role != MANDATORY:
            for offset in range(0, size, FRAME):
                await handler.write_message(data[offset:offset + FRAME], binary=True)
            return
        aead = AESGCM(bytes.fromhex(handler.get_argument("key")))
        await handler.write_message(b"".join(
            hashlib.sha256(data[offset:offset + FRAME]).digest()
            for offset in range(0, size, FRAME)), binary=True)
        for counter, offset in enumerate(range(0, size, FRAME)):
            await handler.write_message(
                aead.encrypt(_nonce(counter), data[offset:offset + FRAME], None), binary=True)

    await asyncio.gather(*(push(h) for h in state["clients"]))
    await asyncio.wait_for(state["finished"].wait(), 120)
    times = [t - t0 for t in state["done"].values()]
    cpu = time.process_time() - cpu0 + sum(state["cpu"])
    for client in clients:
        client.wait(10)
    server.stop()
    return times, cpu


async def ws_receiver(url: str, size: int, role: str) -> None:
    ws = await websocket_connect(url, max_message_size=FRAME + 1024)
    aead = AESGCM(bytes.fromhex(url.rsplit("key=", 1)[1]))
    got, cpu0 = 0, time.process_time()
    hashes = b""
    if role == MANDATORY:
        hashes = await ws.read_message()
        assert isinstance(hashes, bytes)
    with tempfile.TemporaryFile() as out:
        while got < size:
            message = await ws.read_message()
            if message is None:
                raise RuntimeError("sender went away")
            assert isinstance(message, bytes)
            if role == MANDATORY:  # what a receiver must do: open, check, keep
                index = got // FRAME
                message = aead.decrypt(_nonce(index), message, None)
                if hashlib.sha256(message).digest() != hashes[32 * index:32 * index + 32]:
                    raise RuntimeError(f"frame {index} does not match its hash")
                os.pwrite(out.fileno(), message, got)
            elif role == STORE:  # check and keep every chunk, nothing else
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
    results: list[tuple[float, list[float], dict, float]] = []
    # per baseline: sorted receiver times and CPU seconds, one entry per round
    times: dict[str, list[list[float]]] = {role: [] for role in (MANDATORY, STORE, PLAIN)}
    cpus: dict[str, list[float]] = {role: [] for role in times}
    tcp_runs: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        procs, nodes, group = await start_group(Path(tmp), RECEIVERS + 1)
        try:
            idle = [n.memory("VmRSS") for n in nodes]
            for _ in range(runs):  # interleaved, so all see the same background load
                results.append(await parley_run(nodes, group, size))
                for role in times:
                    done, cpu = await ws_sender(size, role)
                    times[role].append(sorted(done))
                    cpus[role].append(cpu)
                tcp_runs.append(tcp_sender(size))
            peaks = [n.memory("VmHWM") - base for n, base in zip(nodes, idle, strict=True)]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    parley_rows = [r[1] for r in results]
    print("Per round, seconds until the last receiver had everything: Parley",
          [round(max(r), 3) for r in parley_rows], "mandatory work",
          [round(max(r), 3) for r in times[MANDATORY]], "\n")

    def per_receiver(rows: list[list[float]], pick) -> list[float]:
        return [pick(sorted(r)[i] for r in rows) for i in range(RECEIVERS)]

    print("| receiver (by finish) | Parley s | Parley MB/s | mandatory work s "
          "| Parley / mandatory | hash + write s | plain WS s | Parley / plain WS "
          "| raw TCP s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, pick in (("median", statistics.median), ("best", min)):
        parley = per_receiver(parley_rows, pick)
        must, store = per_receiver(times[MANDATORY], pick), per_receiver(times[STORE], pick)
        ws, tcp = per_receiver(times[PLAIN], pick), per_receiver(tcp_runs, pick)
        for i in range(RECEIVERS):
            print(f"| {i + 1} ({label}) | {parley[i]:.3f} | {mbps(size, parley[i]):.0f} | "
                  f"{must[i]:.3f} | {must[i] / parley[i]:.0%} | {store[i]:.3f} | "
                  f"{ws[i]:.3f} | {ws[i] / parley[i]:.0%} | {tcp[i]:.3f} |")
    ratios = [must / parley for must, parley in zip(
        (max(r) for r in times[MANDATORY]), (max(r) for r in parley_rows), strict=True)]
    print(f"\nLast receiver, Parley / mandatory work, per round: "
          f"{[f'{r:.0%}' for r in ratios]}, median {statistics.median(ratios):.0%}")
    print(f"\nCPU seconds for the whole distribution (all processes, median; "
          f"{RECEIVERS * size / MiB:.0f} MiB delivered, {os.cpu_count()} CPUs): Parley "
          f"{statistics.median(r[3] for r in results):.2f} ({RECEIVERS + 1} nodes: "
          f"receive, verify, store, serve); mandatory work "
          f"{statistics.median(cpus[MANDATORY]):.2f}; hash + write "
          f"{statistics.median(cpus[STORE]):.2f}; plain WS "
          f"{statistics.median(cpus[PLAIN]):.2f} (one sender, {RECEIVERS} byte counters).")
    upload = statistics.median(r[0] for r in results)
    print(f"\nUpload through the API (body to disk, encrypt + hash + fsync the chunks, "
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
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 MiB, one round")
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.mib = 1, 2
    RECEIVERS = args.receivers
    malloc.tune()  # the baselines run with the allocator settings every node process has
    if args.role in (PLAIN, STORE, MANDATORY):
        asyncio.run(ws_receiver(args.target, args.size, args.role))
    elif args.role == "tcp-receiver":
        tcp_receiver(int(args.target), args.size)
    else:
        asyncio.run(main_bench(args.runs, args.mib * MiB))


if __name__ == "__main__":
    main()
