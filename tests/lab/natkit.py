"""Helpers for NAT lab scenarios and bench.connect: bootstraps that are relays on the
lab's internet, nodes behind routers, groups made through the UI API, file upload and
download through the API, and a packet capture of what a relay's interface carries."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from tests.conftest import Proc
from tests.lab.netlab import Lab, LabNode, Namespace, Nat, Syn, inside

__all__ = ["BOOT", "BOOT2", "BOOT2_IP", "BOOT_IP", "Capture", "behind_router",
           "bootstrap_proc", "captured", "download", "group_of", "me", "paths", "send",
           "start_bootstrap", "upload", "wait_text"]

BOOT_IP, BOOT2_IP = "198.51.100.10", "198.51.100.11"
BOOT = f"http://{BOOT_IP}:8470"
BOOT2 = f"http://{BOOT2_IP}:8470"
ETH_P_ALL = 0x0003


def start_bootstrap(lab: Lab, ip: str, *extra: str) -> Namespace:
    ns = lab.public_host(f"boot{ip.rsplit('.', 1)[1]}", ip)
    proc = lab.popen(ns, *lab.run_py, "bootstrap", "--host", "0.0.0.0", "--port", "8470",
                     "--no-dht", "--db", str(lab.workdir / f"boot-{ip}.db"),
                     "--rate", "1000", "--burst", "1000", *extra)
    proc.wait_for(r"listening on .*relay at /relay")
    return ns


def bootstrap_proc(lab: Lab, ip: str) -> Proc:
    """The process of the bootstrap started on ``ip`` by start_bootstrap."""
    (proc,) = [p for p in lab._procs if f"boot-{ip}.db" in " ".join(map(str, p.popen.args))]
    return proc


def behind_router(lab: Lab, name: str, index: int, *, nat: Nat = Nat.ENDPOINT_INDEPENDENT,
                  syn: Syn = Syn.DROP, relays: tuple[str, ...] = ()) -> LabNode:
    router = lab.router(f"r{name}", f"203.0.113.{index}", f"10.{index}.0.0/24", nat=nat,
                        syn=syn)
    host = lab.host(name, router.lan)
    extra = [arg for url in relays for arg in ("--relay-via", url)]
    node = lab.start_node(host, "--bootstrap", BOOT, "--no-dht", "--mesh-port", "8472",
                          *extra, label=name)
    node.wait_api("GET", "/me", lambda me: me["registered"] and me["reachability"]["relays"],
                  timeout=60)
    return node


def group_of(nodes: list[LabNode]) -> str:
    """The first node makes a group and invites the others through the API."""
    owner = nodes[0]
    _, made = owner.api("POST", "/groups", {"name": "Across routers"})
    group = made["group_id"]
    for node in nodes[1:]:
        _, invite = owner.api("POST", f"/groups/{group}/invites", {})
        status, joined = node.api("POST", "/join", {"invite": invite["invite"]}, timeout=60)
        assert status == 200 and joined["joined"], joined
    return group


def send(node: LabNode, group: str, text: str) -> None:
    status, body = node.api("POST", f"/groups/{group}/messages", {"text": text})
    assert status == 201, body


def wait_text(node: LabNode, group: str, text: str, timeout: float = 60.0) -> None:
    node.wait_api("GET", f"/groups/{group}/messages",
                  lambda r: text in [m["text"] for m in r["messages"]], timeout=timeout)


def paths(node: LabNode, group: str) -> dict[str, Any]:
    _, info = node.api("GET", f"/groups/{group}")
    return {m["id"]: m["path"] for m in info["members"]}


def me(node: LabNode) -> dict[str, Any]:
    return node.api("GET", "/me")[1]


class Capture:
    """Every frame crossing one interface of a namespace (AF_PACKET, as root): what a
    relay operator could record."""

    def __init__(self, ns: Namespace, ifname: str = "eth0") -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.data += self.sock.recv(65536)

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return bytes(self.data)


@contextlib.contextmanager
def captured(ns: Namespace) -> Iterator[Capture]:
    capture = Capture(ns)
    try:
        yield capture
    finally:
        capture.stop()


def upload(node: LabNode, group: str, name: str, content: bytes) -> dict[str, Any]:
    """POST a file as multipart through the node's API (inside its namespace)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    with inside(node.ns):
        conn = http.client.HTTPConnection("127.0.0.1", node.ui_port, timeout=120)
        conn.connect()
    try:
        conn.request("POST", f"/api/v1/groups/{group}/messages", body=body, headers={
            "Authorization": f"Bearer {node.token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 201, answer
    return answer


def download(node: LabNode, attachment: str) -> bytes:
    with inside(node.ns):
        conn = http.client.HTTPConnection("127.0.0.1", node.ui_port, timeout=120)
        conn.connect()
    try:
        conn.request("GET", f"/api/v1/attachments/{attachment}",
                     headers={"Authorization": f"Bearer {node.token}"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status == 200, data[:200]
    return data
