"""Two nodes that nobody can dial directly (their only direct endpoint goes nowhere)
reach each other through the bootstrap's circuit relay, and the API says so."""

from __future__ import annotations

from tests.integration.messenger.conftest import Cluster, eventually

NOWHERE = "ws://192.0.2.1:9/mesh"  # TEST-NET-1: never answers


def path_to(node, group: str, user_id: str) -> str | None:
    members = node.ok("GET", f"/api/v1/groups/{group}")["members"]
    return next(m["path"] for m in members if m["id"] == user_id)


def test_group_over_the_relay(cluster: Cluster) -> None:
    behind = ("--advertise", NOWHERE, "--relay-via", cluster.bootstrap_url)
    alice = cluster.add("alice", *behind)
    bob = cluster.add("bob", *behind)
    relay_prefix = cluster.bootstrap_url.replace("http://", "ws://") + "/relay/"
    for node in (alice, bob):
        me = eventually(lambda n=node: (m := n.ok("GET", "/api/v1/me"))["reachability"]
                        ["relays"] and m)
        address = relay_prefix + node.user_id
        assert me["endpoints"] == [NOWHERE, address]
        # A configured endpoint is taken at its word: "public", but with a relay too.
        assert me["reachability"]["state"] == "public"
        assert me["reachability"]["relays"] == [address]
        assert me["reachability"]["relay_status"][0]["state"] == "reserved"
    group = alice.create_group("Behind routers")
    bob.join(alice.invite(group))
    bob.send(group, "hello through the relay")
    eventually(lambda: "hello through the relay" in alice.texts(group))
    alice.send(group, "and back")
    eventually(lambda: "and back" in bob.texts(group))
    assert eventually(lambda: path_to(alice, group, bob.user_id)) == "relayed"
    assert eventually(lambda: path_to(bob, group, alice.user_id)) == "relayed"
    assert path_to(alice, group, alice.user_id) is None


def test_a_member_node_serves_as_a_relay(cluster: Cluster) -> None:
    relay = cluster.add("relay", "--relay")
    member_relay = f"ws://127.0.0.1:{relay.mesh_port}"
    behind = ("--advertise", NOWHERE, "--relay-via", member_relay)
    alice, bob = cluster.add("alice", *behind), cluster.add("bob", *behind)
    for node in (alice, bob):
        eventually(lambda n=node: f"{member_relay}/relay/{n.user_id}" in n.ok(
            "GET", "/api/v1/me")["reachability"]["relays"])
    group = alice.create_group("Via a friend's node")
    bob.join(alice.invite(group))
    alice.send(group, "carried by a member relay")
    eventually(lambda: "carried by a member relay" in bob.texts(group))
