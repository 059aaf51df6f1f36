"""Bootstrap throughput and latency: ``python -m bench.bootstrap [--quick]``.

Lookups and registrations at 1, 10 and 50 concurrent keep-alive clients against a
real ``run.py bootstrap`` process, next to a bare Tornado handler returning a fixed
JSON body in its own process, measured by the same client in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from bench.httpload import LoadResult, run_load, start_server_process
from mesh.discovery import sign_request
from mesh.identity import LAST_RESORT_PREKEY_ID, KeyPair, PreKey, Record, SignedPreKey

LEVELS = (1, 10, 50)


def _registration(now: float) -> bytes:
    identity = KeyPair.generate()
    spk = KeyPair.generate()
    record = Record.create(identity, signed_prekey=SignedPreKey(1, spk.public,
                                                                identity.sign(spk.public)),
                           last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID,
                                                     KeyPair.generate().public),
                           endpoints=["ws://127.0.0.1:9/mesh"], seq=1, now=now)
    body = json.dumps({"record": record.to_json(), "one_time_prekeys": []}).encode()
    headers = sign_request(identity, "POST", "/v1/users", body, now)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /v1/users HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def serve_bare() -> None:
    """The baseline: the least a Tornado JSON endpoint can do."""
    body = json.dumps({"record": {"id": "0" * 15, "pad": "x" * 600}})

    class Bare(RequestHandler):
        def get(self, _: str) -> None:
            self.set_header("Content-Type", "application/json")
            self.finish(body)

    async def main() -> None:
        sockets = bind_sockets(0, "127.0.0.1")
        HTTPServer(Application([(r"/v1/users/(\d+)", Bare)])).add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        print(f"bare listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def row(name: str, clients: int, result: LoadResult) -> str:
    return (f"| {name} | {clients} | {result.rate:,.0f} | {result.p50:.2f} | "
            f"{result.percentile(99):.2f} | {result.errors} |")


async def measure(duration: float, registrations: int, seeds: int) -> list[str]:
    tmp = tempfile.mkdtemp(prefix="parley-bench-")
    boot, boot_port = start_server_process(
        ["run.py", "bootstrap", "--port", "0", "--no-dht", "--db", f"{tmp}/b.db", "--rate", "1e9",
         # Registration cost is the proof of work's, not the server's: measured without.
         "--burst", "1000000000", "--pow-bits", "0", "--registration-quota", "1e9",
         "--log-level", "WARNING"])
    bare, bare_port = start_server_process(["-m", "bench.bootstrap", "--serve-bare"])
    try:
        now = time.time()
        seed = [_registration(now) for _ in range(seeds)]
        await run_load("127.0.0.1", boot_port, lambda i: seed[i], concurrency=10,
                       total=len(seed))
        ids = [json.loads(r.split(b"\r\n\r\n", 1)[1])["record"]["id"] for r in seed]
        rows = []
        for clients in LEVELS:
            bare_result = await run_load("127.0.0.1", bare_port,
                                         lambda i: _get(f"/v1/users/{ids[i % len(ids)]}"),
                                         concurrency=clients, duration=duration)
            lookups = await run_load("127.0.0.1", boot_port,
                                     lambda i: _get(f"/v1/users/{random.choice(ids)}"),
                                     concurrency=clients, duration=duration)
            regs = [_registration(time.time()) for _ in range(registrations)]
            register = await run_load("127.0.0.1", boot_port, regs.__getitem__,
                                      concurrency=clients, total=len(regs))
            ratio = lookups.rate / bare_result.rate
            rows += [row("bare Tornado handler (baseline)", clients, bare_result),
                     row(f"lookup GET /v1/users/{{id}} ({ratio:.0%} of baseline)", clients,
                         lookups),
                     row("register POST /v1/users", clients, register)]
        return rows
    finally:
        for proc in (boot, bare):
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per lookup run")
    parser.add_argument("--registrations", type=int, default=300,
                        help="registrations per concurrency level")
    parser.add_argument("--seeds", type=int, default=200, help="users registered to look up")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds (0.3 s per run, 20 registrations)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare()
        return
    if args.quick:
        args.duration, args.registrations, args.seeds = 0.3, 20, 20
    rows = asyncio.run(measure(args.duration, args.registrations, args.seeds))
    print("| endpoint | clients | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
