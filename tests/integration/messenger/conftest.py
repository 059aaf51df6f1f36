"""Real node processes (``python run.py node``) and a bootstrap process, driven only
through the node API, as a user's scripts would."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, start_run_py


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NodeProc:
    """One user's node process and a bearer-token client for its API."""

    name: str
    data_dir: Path
    bootstrap: str
    mesh_port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    proc: Proc | None = None
    url: str = ""
    token: str = ""
    user_id: str = ""
    output: list[str] = field(default_factory=list)  # of the runs stopped so far

    def start(self, *, ready: str = "registered") -> NodeProc:
        """Start and wait until the node is ``ready``: "registered" with the bootstrap,
        or "dht" (joined the DHT), or "" (serving its API)."""
        self.proc = start_run_py("node", "--data-dir", str(self.data_dir), "--ui-port", "0",
                                 "--mesh-port", str(self.mesh_port), "--bootstrap",
                                 self.bootstrap, "--log-level", "INFO", *self.extra)
        match = self.proc.wait_for(r"Parley node ([0-9 ]+): open (http://127\.0\.0\.1:\d+)/#token=(\S+)")
        self.user_id = match.group(1).replace(" ", "")
        self.url, self.token = match.group(2), match.group(3)
        self.proc.keep_reading()
        if ready == "registered":
            eventually(lambda: self.ok("GET", "/api/v1/me")["registered"],
                       message=f"{self.name} registered with the bootstrap")
        elif ready == "dht":
            eventually(lambda: (self.ok("GET", "/api/v1/me")["dht"] or {}).get("joined"),
                       message=f"{self.name} joined the DHT")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)
            self.output += self.proc.lines
            self.proc = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def call(self, method: str, path: str, body: Any = None, *,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             token: str | None = "default") -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json"} if method != "GET" else {}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        return status, (json.loads(payload) if payload else None)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = self.call(method, path, body)
        assert 200 <= status < 300, f"{self.name} {method} {path}: {status} {reply}"
        return reply

    # Conveniences for the stories below

    def create_group(self, name: str) -> str:
        return self.ok("POST", "/api/v1/groups", {"name": name})["group_id"]

    def invite(self, group: str) -> str:
        return self.ok("POST", f"/api/v1/groups/{group}/invites", {})["invite"]

    def join(self, invite: str) -> str:
        status, reply = self.call("POST", "/api/v1/join", {"invite": invite})
        assert status == 200 and reply["joined"], f"{self.name} join: {status} {reply}"
        return reply["group_id"]

    def send(self, group: str, text: str) -> str:
        return self.ok("POST", f"/api/v1/groups/{group}/messages", {"text": text})["message_id"]

    def messages(self, group: str) -> list[dict[str, Any]]:
        return self.ok("GET", f"/api/v1/groups/{group}/messages")["messages"]

    def texts(self, group: str) -> list[str]:
        return [m["text"] for m in self.messages(group)]

    def members(self, group: str) -> set[str]:
        return {m["id"] for m in self.ok("GET", f"/api/v1/groups/{group}")["members"]}


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2,
               message: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (the API is asynchronous by
    nature: delivery happens in the background)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} not reached in {timeout} s; last value: {last!r}")


@dataclass
class Cluster:
    bootstrap_url: str
    base: Path
    boot: Proc
    nodes: dict[str, NodeProc] = field(default_factory=dict)

    def add(self, name: str, *extra: str) -> NodeProc:
        node = NodeProc(name, self.base / name, self.bootstrap_url, extra=extra).start()
        self.nodes[name] = node
        return node


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    boot = start_run_py("bootstrap", "--port", "0", "--dht-port", "0", "--db",
                        str(tmp_path / "boot.db"),
                        "--rate", "10000", "--burst", "10000", "--pow-bits", "8",
                        "--log-level", "WARNING")
    url = boot.wait_for(r"listening on (http://\S+)").group(1)
    cluster = Cluster(url, tmp_path, boot)
    try:
        yield cluster
    finally:
        for node in cluster.nodes.values():
            node.stop()
            # Shown by pytest only when the test failed: what each node logged (INFO).
            print(f"--- {node.name} ({node.user_id}), last 80 lines:\n"
                  + "".join(node.output[-80:]))
        boot.stop()
