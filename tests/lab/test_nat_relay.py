"""Nodes behind real home routers (network namespaces, nftables NAT) reach each other
through circuit relays: run.py processes only, driven through their UI API.

Topology: the "internet" holds two bootstraps that are also relays (198.51.100.10 and
.11); each user sits behind a router of their own (203.0.113.x), which drops or resets
unsolicited SYNs and masquerades endpoint-independently or symmetrically.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.lab.netlab import Lab, LabNode, Namespace, Nat, Syn, inside

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


def test_two_homes_link_through_the_relay_then_punch_a_direct_link(lab: Lab) -> None:
    """alice and bob behind two endpoint-independent routers that drop unsolicited SYNs:
    an invite and texts both ways over the relay; the link is hole-punched to a direct
    one, and a 5 MiB file then travels without the relay carrying it."""
    boot = start_bootstrap(lab, BOOT_IP)
    alice, bob = behind_router(lab, "alice", 1), behind_router(lab, "bob", 2)
    assert me(alice)["reachability"]["state"] == "relayed"
    group = group_of([alice, bob])
    send(alice, group, "hello bob, from behind my router")
    wait_text(bob, group, "hello bob, from behind my router")
    send(bob, group, "hello alice")
    wait_text(alice, group, "hello alice")
    bob_id, alice_id = me(bob)["id"], me(alice)["id"]
    alice.wait_api("GET", f"/groups/{group}", lambda info: {
        m["id"]: m["path"] for m in info["members"]}[bob_id] == "hole_punched", timeout=60)
    bob.wait_api("GET", f"/groups/{group}", lambda info: {
        m["id"]: m["path"] for m in info["members"]}[alice_id] == "hole_punched", timeout=30)
    content = os.urandom(5 * 1024 * 1024)
    with captured(boot) as capture:
        sent = upload(alice, group, "holiday.bin", content)
        attachment = sent["attachment"]["id"]
        bob.wait_api("GET", f"/attachments/{attachment}/info",
                     lambda info: info["state"] == "complete", timeout=120)
    assert download(bob, attachment) == content
    assert len(capture.data) < 256 * 1024, "the relay carried the file"
    send(bob, group, "got it, directly")
    wait_text(alice, group, "got it, directly")


def test_symmetric_nat_chats_through_the_relay_which_sees_no_plaintext(lab: Lab) -> None:
    boot = start_bootstrap(lab, BOOT_IP)
    alice = behind_router(lab, "alice", 1)
    carol = behind_router(lab, "carol", 3, nat=Nat.SYMMETRIC, syn=Syn.RESET)
    group = group_of([carol, alice])
    secret = f"the secret plan {uuid.uuid4().hex}"
    with captured(boot) as capture:
        send(carol, group, secret)
        wait_text(alice, group, secret)
        send(alice, group, secret + " (reply)")
        wait_text(carol, group, secret + " (reply)")
        time.sleep(0.5)
    seen = bytes(capture.data)
    assert len(seen) > 2000, "the capture saw the relayed traffic"
    assert secret.encode() not in seen
    assert b"secret plan" not in seen
    assert paths(carol, group)[me(alice)["id"]] == "relayed"


def test_links_move_to_a_second_relay_when_the_first_dies(lab: Lab) -> None:
    """Messages sent (acknowledged by alice's node) while the relay is down reach bob
    once both hold reservations on the second relay."""
    start_bootstrap(lab, BOOT_IP)
    boot2 = start_bootstrap(lab, BOOT2_IP)
    # Routers that reset unsolicited SYNs: punching fails, the link stays relayed.
    alice = behind_router(lab, "alice", 1, syn=Syn.RESET, relays=(BOOT2,))
    bob = behind_router(lab, "bob", 2, syn=Syn.RESET, relays=(BOOT2,))
    group = group_of([alice, bob])
    send(alice, group, "before the relay died")
    wait_text(bob, group, "before the relay died")
    assert paths(alice, group)[me(bob)["id"]] == "relayed"
    first = [p for p in lab._procs if BOOT_IP in " ".join(p.popen.args)]
    del boot2
    assert first, "the first bootstrap process"
    first[0].stop()
    for node in (alice, bob):
        node.wait_api("GET", "/me", lambda m: m["reachability"]["relays"] and all(
            BOOT2_IP in r for r in m["reachability"]["relays"]), timeout=90)
    acked = [f"message {i} while the relay moved" for i in range(5)]
    for text in acked:
        send(alice, group, text)
    for text in acked:
        wait_text(bob, group, text, timeout=120)
    assert paths(alice, group)[me(bob)["id"]] == "relayed"


def test_a_full_relay_refuses_new_reservations_and_keeps_serving_the_old(lab: Lab) -> None:
    start_bootstrap(lab, BOOT_IP, "--relay-max-reservations", "1")
    alice = behind_router(lab, "alice", 1)
    router = lab.router("rbob", "203.0.113.2", "10.2.0.0/24")
    bob = lab.start_node(lab.host("bob", router.lan), "--bootstrap", BOOT, "--no-dht",
                         "--mesh-port", "8472", label="bob")
    status = bob.wait_api("GET", "/me", lambda m: any(
        r["state"] == "refused" for r in m["reachability"]["relay_status"]), timeout=60)
    refused = status["reachability"]["relay_status"][0]
    assert refused["reason"] == "relay_full"
    assert status["reachability"]["relays"] == []
    assert me(alice)["reachability"]["relay_status"][0]["state"] == "reserved"


MALLORY = """
import asyncio, sys
from tornado.websocket import websocket_connect
from mesh.identity import KeyPair
from mesh.relay import RelayRefused, make_reserve, read_reserved

async def main(victim_key):
    url = sys.argv[2]
    ws = await websocket_connect(url)
    mallory = KeyPair.generate()
    claim = make_reserve(mallory, url, await ws.read_message())
    ws.write_message(claim.replace(mallory.public, victim_key), binary=True)
    try:
        read_reserved(await ws.read_message())
        print("RESERVED")
    except RelayRefused as exc:
        print("REFUSED", exc.reason)

asyncio.run(main(bytes.fromhex(sys.argv[1])))
"""


def test_a_stranger_cannot_take_over_someones_reservation(lab: Lab) -> None:
    """mallory, on another network, claims alice's identity key at the relay with her
    own signature: refused; alice's reservation and links are untouched."""
    start_bootstrap(lab, BOOT_IP)
    alice = behind_router(lab, "alice", 1)
    alice_me = me(alice)
    router = lab.router("rmallory", "203.0.113.6", "10.6.0.0/24")
    mallory = lab.host("mallory", router.lan)
    out = lab.run(mallory, "env", f"PYTHONPATH={ROOT}", sys.executable, "-c", MALLORY,
                  alice_me["identity_key"], f"ws://{BOOT_IP}:8470/relay")
    assert out.strip() == "REFUSED bad_signature"
    bob = behind_router(lab, "bob", 2)
    group = group_of([alice, bob])
    send(bob, group, "only alice can read this")
    wait_text(alice, group, "only alice can read this")
    assert paths(bob, group)[alice_me["id"]] in {"relayed", "hole_punched"}
    assert me(alice)["reachability"]["relays"] == alice_me["reachability"]["relays"]


@pytest.fixture(autouse=True)
def _generous_timeout(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.timeout(300))
