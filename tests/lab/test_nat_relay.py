"""Nodes behind real home routers (network namespaces, nftables NAT) reach each other
through circuit relays: run.py processes only, driven through their UI API.

Topology: the "internet" holds two bootstraps that are also relays (198.51.100.10 and
.11); each user sits behind a router of their own (203.0.113.x), which drops or resets
unsolicited SYNs and masquerades endpoint-independently or symmetrically.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.lab.natkit import (
    BOOT,
    BOOT2,
    BOOT2_IP,
    BOOT_IP,
    behind_router,
    bootstrap_proc,
    captured,
    download,
    group_of,
    me,
    paths,
    send,
    start_bootstrap,
    upload,
    wait_text,
)
from tests.lab.netlab import Lab, Nat, Syn


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
    """Each node holds reservations on both relays (its record lists both addresses).
    The first relay (and bootstrap) is killed: messages alice's node accepted while the
    link was down reach bob over the second relay."""
    start_bootstrap(lab, BOOT_IP)
    start_bootstrap(lab, BOOT2_IP)
    # Routers that reset unsolicited SYNs: punching fails, the link stays relayed.
    alice = behind_router(lab, "alice", 1, syn=Syn.RESET, relays=(BOOT2,))
    bob = behind_router(lab, "bob", 2, syn=Syn.RESET, relays=(BOOT2,))
    for node in (alice, bob):
        node.wait_api("GET", "/me", lambda m: len(m["reachability"]["relays"]) == 2)
    group = group_of([alice, bob])
    send(alice, group, "before the relay died")
    wait_text(bob, group, "before the relay died")
    assert paths(alice, group)[me(bob)["id"]] == "relayed"
    bootstrap_proc(lab, BOOT_IP).stop()
    acked = [f"message {i} while the relay moved" for i in range(5)]
    for text in acked:  # each answered 201: committed by alice's node
        send(alice, group, text)
    for node in (alice, bob):
        node.wait_api("GET", "/me", lambda m: m["reachability"]["relays"] and all(
            BOOT2_IP in r for r in m["reachability"]["relays"]), timeout=90)
    for text in acked:
        wait_text(bob, group, text, timeout=120)
    send(bob, group, "and back over the second relay")
    wait_text(alice, group, "and back over the second relay")
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
