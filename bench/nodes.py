"""Real node processes for the benchmarks: start a bootstrap and nodes, drive their API.

The node processes are started exactly as a user starts them (``python run.py node``),
on free ports, and spoken to only through the node API.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

__all__ = ["MiB", "NodeProcess", "start_group", "start_process"]

MiB = 1024 * 1024


@dataclass
class NodeProcess:
    popen: subprocess.Popen[str]
    url: str
    token: str
    user_id: str

    async def call(self, method: str, path: str, body: object | None = None, *,
                   raw: bytes | None = None, content_type: str = "application/json") -> dict:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        request = HTTPRequest(self.url + path, method=method, body=data, request_timeout=300,
                              headers={"Authorization": f"Bearer {self.token}",
                                       "Content-Type": content_type})
        response = await AsyncHTTPClient(max_body_size=64 * MiB).fetch(request)
        return json.loads(response.body) if response.body else {}

    async def events(self) -> WebSocketClientConnection:
        ws = await websocket_connect(HTTPRequest(
            self.url.replace("http", "ws") + "/api/v1/events",
            headers={"Authorization": f"Bearer {self.token}"}))
        await ws.read_message()  # "ready"
        return ws

    async def fetch(self, path: str) -> bytes:
        request = HTTPRequest(self.url + path, headers={"Authorization": f"Bearer {self.token}"},
                              request_timeout=300)
        return (await AsyncHTTPClient(max_body_size=64 * MiB).fetch(request)).body

    def memory(self, field: str) -> int:
        with open(f"/proc/{self.popen.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} for {self.popen.pid}")


def start_process(args: list[str], pattern: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
    popen = subprocess.Popen([sys.executable, "run.py", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert popen.stdout is not None
    for _ in range(100):
        line = popen.stdout.readline()
        if match := re.search(pattern, line):
            return popen, match
    popen.kill()
    raise RuntimeError(f"{args[0]} did not start")


async def start_group(base: Path, count: int
                      ) -> tuple[list[subprocess.Popen[str]], list[NodeProcess], str]:
    """A bootstrap process and ``count`` node processes in one group, links settled."""
    boot, match = start_process(["bootstrap", "--port", "0", "--no-dht", "--db", str(base / "b.db"),
                         "--rate", "1e6", "--burst", "1000000"], r"listening on (http://\S+)")
    procs, nodes = [boot], []
    for i in range(count):
        popen, m = start_process(["node", "--data-dir", str(base / f"n{i}"), "--ui-port", "0",
                          "--mesh-port", "0", "--bootstrap", match.group(1)],
                         r"Parley node ([0-9 ]+): open (http://\S+)/#token=(\S+)")
        procs.append(popen)
        nodes.append(NodeProcess(popen, m.group(2), m.group(3), m.group(1).replace(" ", "")))
    for node in nodes:
        for _ in range(300):
            if (await node.call("GET", "/api/v1/me"))["registered"]:
                break
            await asyncio.sleep(0.1)
    group = (await nodes[0].call("POST", "/api/v1/groups", {"name": "bench"}))["group_id"]
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
    await asyncio.sleep(2.0)  # links between all five settle
    return procs, nodes, group
