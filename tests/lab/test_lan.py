"""LAN discovery in the lab: real mDNS multicast between namespaces on one switch.

The first test runs the mDNS adapter in-process (each LanDiscovery's sockets are made
inside a namespace); the second is the issue's scenario with two real ``run.py`` nodes
that have no bootstrap and no internet.
"""

from __future__ import annotations

import asyncio
import os
import socket

from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from mesh.identity import KeyPair
from mesh.lan import SERVICE_TYPE, LanCore, Match
from mesh.mdns import LanDiscovery
from tests.integration.mesh.conftest import wait_for
from tests.lab.netlab import Lab, Namespace, inside

SUBNET = "192.168.7.0/24"


async def _discovery(ns: Namespace, me: KeyPair, peers: dict[str, bytes],
                     found: list[Match]) -> LanDiscovery:
    disc = LanDiscovery(LanCore(me), 4242, peers=lambda: peers, on_match=found.append,
                        addresses=lambda: (ns.ip,))
    with inside(ns):   # start() makes its sockets before its first await
        await disc.start()
    return disc


async def test_known_peers_match_while_strangers_and_garbage_are_ignored(lab: Lab) -> None:
    lan = lab.lan("home", SUBNET)
    a_ns, b_ns, c_ns, x_ns = (lab.host(n, lan) for n in ("alice", "bob", "carol", "junk"))
    alice, bob, carol = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    a_id, b_id = alice.user_id, bob.user_id
    at_alice: list[Match] = []
    at_bob: list[Match] = []
    at_carol: list[Match] = []
    with inside(x_ns):
        junk = AsyncZeroconf()
    discs = [await _discovery(a_ns, alice, {b_id: bob.public}, at_alice),
             await _discovery(b_ns, bob, {a_id: alice.public}, at_bob),
             # carol knows alice's public key (a stranger who learnt her id): no use.
             await _discovery(c_ns, carol, {a_id: alice.public}, at_carol)]
    try:
        for i, props in enumerate([{b"v": b"1", b"e": b"zz"}, {b"\xff": b"\x00" * 200},
                                   {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"127.0.0.1",
                                    b"t0": b"x" * 8}]):
            await junk.async_register_service(AsyncServiceInfo(
                SERVICE_TYPE, f"junk{i}.{SERVICE_TYPE}", port=9, properties=props,
                server=f"junk{i}.local.", addresses=[bytes([192, 168, 7, 4])]))
        with lab.socket(x_ns, socket.SOCK_DGRAM) as raw:   # not even DNS
            for blob in (b"", b"\x00" * 12, os.urandom(300), b"\xff" * 1500):
                raw.sendto(blob, ("224.0.0.251", 5353))
        await wait_for(lambda: at_alice and at_bob, within=20)
        await asyncio.sleep(1.0)   # time for the junk and carol to be heard too
        assert {m.peer_id for m in at_alice} == {b_id}
        assert at_alice[0].addresses == (b_ns.ip,) and at_alice[0].port == 4242
        assert {m.peer_id for m in at_bob} == {a_id}
        assert at_carol == []
        # What a node keeps about the LAN is the instance names present, nothing more.
        assert len(discs[0]._present) >= 4
    finally:
        for disc in discs:
            await disc.close()
        await junk.async_close()


def test_two_members_without_internet_link_over_mdns_and_chat(lab: Lab) -> None:
    lan = lab.lan("home", SUBNET)
    boot_ns, a_ns, b_ns = (lab.host(n, lan) for n in ("boot", "alice", "bob"))
    bootstrap_url = f"http://{boot_ns.ip}:8470"
    # Before: they meet through a bootstrap on the LAN and make a group.
    boot = lab.popen(boot_ns, *lab.run_py, "bootstrap", "--host", boot_ns.ip,
                     "--db", str(lab.workdir / "boot.db"), "--no-dht")
    boot.wait_for("listening")
    first = ("--bootstrap", bootstrap_url, "--no-dht", "--mesh-port", "0",
             "--no-lan-discovery")
    alice = lab.start_node(a_ns, *first, "--mesh-host", a_ns.ip)
    bob = lab.start_node(b_ns, *first, "--mesh-host", b_ns.ip)
    alice.wait_api("GET", "/me", lambda me: me["registered"])
    bob.wait_api("GET", "/me", lambda me: me["registered"])
    status, made = alice.api("POST", "/groups", {"name": "LAN"})
    assert status == 201
    group = made["group_id"]
    _, invite = alice.api("POST", f"/groups/{group}/invites", {})
    status, joined = bob.api("POST", "/join", {"invite": invite["invite"]})
    assert (status, joined["joined"]) == (200, True)
    for proc in (alice.proc, bob.proc, boot):
        proc.stop()
    # Now: no bootstrap (nothing listens there any more), no DHT, new mesh ports, so
    # the endpoints in their records are dead: only mDNS can bring them together.
    later = ("--bootstrap", bootstrap_url, "--no-dht", "--mesh-port", "0",
             "--mesh-host", "0.0.0.0", "--log-level", "INFO")
    alice, bob = lab.start_node(a_ns, *later), lab.start_node(b_ns, *later)
    status, _ = alice.api("POST", f"/groups/{group}/messages", {"text": "found you on the LAN"})
    assert status == 201
    got = bob.wait_api("GET", f"/groups/{group}/messages",
                       lambda answer: any(m["text"] == "found you on the LAN"
                                          for m in answer["messages"]), timeout=40)
    assert got
    found = alice.proc.wait_for(r"found (\d{3} \d{3} \d{3} \d{3} \d{3}) on the LAN at (\S+)")
    assert found.group(1).replace(" ", "") == bob.api("GET", "/me")[1]["id"]
    assert found.group(2).startswith(f"ws://{b_ns.ip}:")
    bob_id = found.group(1).replace(" ", "")
    members = alice.api("GET", f"/groups/{group}")[1]["members"]
    assert {m["id"]: m["path"] for m in members}[bob_id] == "lan"
    reach = alice.api("GET", "/me")[1]["reachability"]
    assert reach["lan_discovery"] == {"state": "on", "reason": ""}
