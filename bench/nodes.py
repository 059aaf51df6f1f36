"""Real node processes for the benchmarks: start a bootstrap and nodes, drive their API.

The node processes are started exactly as a user starts them (``python run.py node``),
on free ports, and spoken to only through the node API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

__all__ = ["MiB", "NodeProcess", "form_group", "start_bootstrap", "start_group", "start_node",
           "start_process"]

MiB = 1024 * 1024


@dataclass
class NodeProcess:
    """A running node. ``host`` is the Host header its UI expects when the driver
    reaches it through a forwarder (``url`` then names the forwarder)."""

    popen: subprocess.Popen[str]
    url: str
    token: str
    user_id: str
    host: str | None = None

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", **extra}
        if self.host is not None:
            headers["Host"] = self.host
        return headers

    async def call(self, method: str, path: str, body: object | None = None, *,
                   raw: bytes | None = None, content_type: str = "application/json") -> dict:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        request = HTTPRequest(self.url + path, method=method, body=data, request_timeout=300,
                              headers=self._headers(**{"Content-Type": content_type}))
        response = await AsyncHTTPClient(max_body_size=64 * MiB).fetch(request)
        return json.loads(response.body) if response.body else {}

    async def events(self) -> WebSocketClientConnection:
        ws = await websocket_connect(HTTPRequest(
            self.url.replace("http", "ws") + "/api/v1/events", headers=self._headers()))
        await ws.read_message()  # "ready"
        return ws

    async def fetch(self, path: str) -> bytes:
        request = HTTPRequest(self.url + path, headers=self._headers(), request_timeout=300)
        return (await AsyncHTTPClient(max_body_size=64 * MiB).fetch(request)).body

    async def registered(self) -> None:
        """Wait until the node has registered with the bootstrap."""
        for _ in range(300):
            with contextlib.suppress(OSError):  # a forwarder may still be starting
                if (await self.call("GET", "/api/v1/me"))["registered"]:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("a node did not register")

    def memory(self, field: str) -> int:
        with open(f"/proc/{self.popen.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} for {self.popen.pid}")


def start_process(args: Sequence[str], pattern: str, prefix: Sequence[str] = (),
                  ) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """``run.py *args`` (behind ``prefix``, e.g. ``ip netns exec NS``), once its output
    matched ``pattern``."""
    popen = subprocess.Popen([*prefix, sys.executable, "run.py", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert popen.stdout is not None
    for _ in range(100):
        line = popen.stdout.readline()
        if match := re.search(pattern, line):
            return popen, match
    popen.kill()
    raise RuntimeError(f"{args[0]} did not start")


def start_bootstrap(base: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen[str], str]:
    """A bootstrap process (no DHT, no rate limit to speak of): (process, URL)."""
    boot, match = start_process(["bootstrap", "--host", host, "--port", "0", "--no-dht",
                                 "--db", str(base / "b.db"), "--rate", "1e6",
                                 "--burst", "1000000", "--pow-bits", "8"],
                                r"listening on (http://\S+)")
    return boot, match.group(1)


def start_node(data_dir: Path, bootstrap: str, *, prefix: Sequence[str] = (),
               args: Sequence[str] = ("--ui-port", "0", "--mesh-port", "0"),
               ui_via: str | None = None) -> NodeProcess:
    """A node process (see ``NodeProcess.registered``). ``ui_via`` (host:port) is where
    the driver reaches its UI when it runs elsewhere (a forwarder to the UI's port on
    the node's 127.0.0.1)."""
    if not prefix and "--mesh-host" not in args:
        args = (*args, "--mesh-host", "127.0.0.1")   # no mDNS or port mapping from a bench
    popen, m = start_process(["node", "--data-dir", str(data_dir), "--bootstrap", bootstrap,
                              *args], r"Parley node ([0-9 ]+): open (http://\S+)/#token=(\S+)",
                             prefix)
    url, host = m.group(2), None
    if ui_via is not None:
        url, host = f"http://{ui_via}", url.removeprefix("http://")
    return NodeProcess(popen, url, m.group(3), m.group(1).replace(" ", ""), host)


async def form_group(nodes: Sequence[NodeProcess], name: str = "bench") -> str:
    """The first node creates a group and invites the others; returns its id once every
    member lists all of them."""
    group = (await nodes[0].call("POST", "/api/v1/groups", {"name": name}))["group_id"]
    for node in nodes[1:]:
        invite = (await nodes[0].call("POST", f"/api/v1/groups/{group}/invites", {}))["invite"]
        await node.call("POST", "/api/v1/join", {"invite": invite})
    everyone = {n.user_id for n in nodes}
    for node in nodes:
        for _ in range(300):
            info = await node.call("GET", f"/api/v1/groups/{group}")
            if {m["id"] for m in info["members"]} == everyone:
                break
            await asyncio.sleep(0.1)
    return group


async def start_group(base: Path, count: int
                      ) -> tuple[list[subprocess.Popen[str]], list[NodeProcess], str]:
    """A bootstrap process and ``count`` node processes on loopback in one group, links
    settled."""
    boot, url = start_bootstrap(base)
    procs, nodes = [boot], []
    try:
        for i in range(count):
            nodes.append(start_node(base / f"n{i}", url))
            procs.append(nodes[-1].popen)
        for node in nodes:
            await node.registered()
        group = await form_group(nodes)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    await asyncio.sleep(2.0)  # links between all of them settle
    return procs, nodes, group
