"""A small keep-alive HTTP/1.1 load generator on raw asyncio streams.

Tornado's own client opens a connection per request and would measure itself; this
one keeps ``concurrency`` connections busy and records each request's latency, so the
same client measures our server and the baseline next to it.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoadResult", "run_load", "start_server_process"]


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_load(host: str, port: int, make_request: Callable[[int], bytes], *,
                   concurrency: int, total: int | None = None, duration: float | None = None,
                   ok_status: tuple[int, ...] = (200, 201)) -> LoadResult:
    """Send requests made by ``make_request(i)`` over ``concurrency`` connections until
    ``total`` requests are done or ``duration`` seconds have passed."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    start = time.perf_counter()
    deadline = start + duration if duration else float("inf")

    async def worker() -> None:
        nonlocal counter, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and (total is None or counter < total):
                i = counter
                counter += 1
                t0 = time.perf_counter()
                writer.write(make_request(i))
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
                if status not in ok_status:
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - start, latencies)


def start_server_process(args: list[str], pattern: bytes = b"http://"
                         ) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server process that prints a URL with its port; return (popen, port)."""
    popen = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    assert popen.stdout is not None
    for _ in range(50):
        line = popen.stdout.readline()
        if pattern in line:
            match = re.search(rb":(\d+)", line.split(pattern, 1)[1])
            if match:
                return popen, int(match.group(1))
    popen.kill()
    raise RuntimeError(f"server {args} did not print its address")
