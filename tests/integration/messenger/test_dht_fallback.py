"""With the bootstrap server gone, people are still found through the DHT (real node
processes, driven through the node API)."""

from __future__ import annotations

from tests.integration.messenger.conftest import Cluster, eventually, free_port

FAST = ("--refresh-interval", "0.5")


def dht_ready(node) -> bool:
    dht = node.ok("GET", "/api/v1/me")["dht"]
    return bool(dht and dht["joined"] and dht["peers"] >= 1)


def test_contact_and_moved_member_found_without_the_bootstrap(cluster: Cluster) -> None:
    alice, bob, carol = (cluster.add(n, *FAST) for n in ("alice", "bob", "carol"))
    for node in (alice, bob, carol):
        eventually(lambda node=node: dht_ready(node), message=f"{node.name} in the DHT")
    group = alice.create_group("Offline-proof")
    bob.join(alice.invite(group))
    eventually(lambda: "first" in bob.texts(group) if alice.send(group, "first") else False)

    cluster.boot.stop()  # the bootstrap server is gone from here on

    # 1. A contact by ID that nobody has looked up before: found in the DHT; the session
    #    starts from the last-resort prekey in the signed record.
    reply = alice.ok("POST", "/api/v1/contacts", {"id": carol.user_id})
    assert reply["id"] == carol.user_id
    alice.ok("POST", f"/api/v1/chats/{carol.user_id}/messages", {"text": "found you"})

    def carol_has_it() -> bool:
        status, body = carol.call("GET", f"/api/v1/chats/{alice.user_id}/messages")
        return status == 200 and any(m["text"] == "found you" for m in body["messages"])

    eventually(carol_has_it, message="carol got a message via a DHT lookup")

    # 2. Alice and bob both move (new mesh ports, new DHT ports): neither can dial the
    #    other's old address. Each rejoins the DHT from the contacts it saved, publishes
    #    its new record there, and finds the other's new record there.
    for node in (alice, bob):
        node.stop()
        node.mesh_port = free_port()
    for node in (alice, bob):
        node.start(ready="dht")
    alice.send(group, "after the move")
    eventually(lambda: "after the move" in bob.texts(group), timeout=45,
               message="bob reachable at his new endpoint through the DHT")
    bob.send(group, "got it")
    eventually(lambda: "got it" in alice.texts(group), timeout=45)
