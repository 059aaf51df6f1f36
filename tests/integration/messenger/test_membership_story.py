"""Removal, offline catch-up and crash durability, with real node processes."""

from __future__ import annotations

import sqlite3

from groups.crypto import MAX_CHAIN_GAP
from tests.integration.messenger.conftest import Cluster, NodeProc, eventually


def setup_group(cluster: Cluster, names: list[str]) -> tuple[str, list[NodeProc]]:
    nodes = [cluster.add(n) for n in names]
    group = nodes[0].create_group("Crew")
    for node in nodes[1:]:
        node.join(nodes[0].invite(group))
    everyone = {n.user_id for n in nodes}
    for node in nodes:
        eventually(lambda node=node: node.members(group) == everyone)
    return group, nodes


def delivered_to(node: NodeProc, group: str, message_id: str, members: set[str]) -> bool:
    msg = next((m for m in node.messages(group) if m["message_id"] == message_id), None)
    return msg is not None and all(msg["status"].get(u) in ("delivered", "read")
                                   for u in members)


def test_removed_member_reads_nothing_sent_later(cluster: Cluster) -> None:
    group, (alice, bob, carol, dave) = setup_group(cluster, ["alice", "bob", "carol", "dave"])
    before = alice.send(group, "before removal")
    for node in (bob, carol, dave):
        eventually(lambda node=node: "before removal" in node.texts(group))

    status, reply = bob.call("DELETE", f"/api/v1/groups/{group}/members/{dave.user_id}")
    assert (status, reply["error"]) == (403, "not_admin")  # bob is no admin
    assert alice.call("DELETE", f"/api/v1/groups/{group}/members/{carol.user_id}")[0] == 204
    remaining = {alice.user_id, bob.user_id, dave.user_id}
    for node in (alice, bob, dave):
        eventually(lambda node=node: node.members(group) == remaining)
    # Carol's node learns it was removed and stops sharing the group.
    eventually(lambda: carol.call("GET", f"/api/v1/groups/{group}")[0] == 404,
               message="carol's node knows she was removed")

    after = [alice.send(group, "secret plan A"), bob.send(group, "secret plan B"),
             dave.send(group, "secret plan D")]
    for node in (alice, bob, dave):
        eventually(lambda node=node: {"secret plan A", "secret plan B", "secret plan D"}
                   <= set(node.texts(group)))
    eventually(lambda: delivered_to(alice, group, after[0], {bob.user_id, dave.user_id}))

    # Nothing sent later is readable by carol's node: not in its database in clear,
    # and no decryptable copy (her keys are dropped and the topic is no longer shared).
    conn = sqlite3.connect(carol.data_dir / "node.db")
    texts = {row[0] for row in conn.execute("SELECT text FROM chat_messages")}
    conn.close()
    assert "before removal" in texts
    assert not texts & {"secret plan A", "secret plan B", "secret plan D"}
    status, reply = carol.call("POST", f"/api/v1/groups/{group}/messages", {"text": "hi?"})
    assert (status, reply["error"]) == (403, "not_member")
    assert before in {m["message_id"] for m in alice.messages(group)}

    # Dave leaves on his own; the others see it and go on without him.
    assert dave.call("DELETE", f"/api/v1/groups/{group}/members/{dave.user_id}")[0] == 204
    for node in (alice, bob):
        eventually(lambda node=node: node.members(group) == {alice.user_id, bob.user_id})
    assert dave.call("GET", f"/api/v1/groups/{group}")[0] == 404
    alice.send(group, "just us")
    eventually(lambda: "just us" in bob.texts(group))


def test_member_removed_while_away_learns_it_and_refuses_sends(cluster: Cluster) -> None:
    """Issue 15, finding 10: the removed member's node learns of its removal (from the
    notice the remover sends pairwise, which carries the ops it missed) and refuses
    local sends, as the others refuse its messages."""
    group, (alice, bob, carol) = setup_group(cluster, ["alice", "bob", "carol"])
    carol.stop()
    alice.invite(group)  # an op carol misses while away
    assert alice.call("DELETE", f"/api/v1/groups/{group}/members/{carol.user_id}")[0] == 204
    carol.start()
    # It learns within a second or so of its restart. Runs that never learned were a
    # late welcome from bob (answering carol's first join request) putting her back in
    # after the notice (test_conversation: a late welcome does not undo a removal).
    eventually(lambda: carol.call("GET", f"/api/v1/groups/{group}")[0] == 404, timeout=60,
               message="carol's node knows she was removed")
    status, reply = carol.call("POST", f"/api/v1/groups/{group}/messages", {"text": "hi?"})
    assert (status, reply["error"]) == (403, "not_member")
    alice.send(group, "without carol")
    eventually(lambda: "without carol" in bob.texts(group))


def test_offline_member_catches_up_and_receipts_flow_back(cluster: Cluster) -> None:
    group, (alice, bob, dave) = setup_group(cluster, ["alice", "bob", "dave"])
    dave.stop()
    sent = [alice.send(group, f"while dave was away {i}") for i in range(5)]
    eventually(lambda: all(f"while dave was away {i}" in bob.texts(group) for i in range(5)))
    dave.start()
    eventually(lambda: all(f"while dave was away {i}" in dave.texts(group) for i in range(5)),
               message="dave caught up")
    for message_id in sent:
        eventually(lambda m=message_id: delivered_to(alice, group, m, {bob.user_id,
                                                                       dave.user_id}),
                   message="receipts from dave reached alice")


def test_member_back_after_a_long_absence_reads_a_backlog_beyond_the_chain_gap(
        cluster: Cluster) -> None:
    """Issue 15: one message may move a sender's chain at most MAX_CHAIN_GAP steps; the
    rest wait as "not yet valid". Dave, offline while alice sent several gaps' worth,
    still reads all of it, and a live message that may overtake the backlog too."""
    group, (alice, dave) = setup_group(cluster, ["alice", "dave"])
    dave.stop()
    count = 3 * MAX_CHAIN_GAP + 44  # three gaps and more, within one page of the API
    for i in range(count):
        alice.send(group, f"backlog {i}")
    dave.start()
    alice.send(group, "live")
    expected = {f"backlog {i}" for i in range(count)} | {"live"}

    def read() -> set[str]:
        page = dave.ok("GET", f"/api/v1/groups/{group}/messages?limit=500")["messages"]
        return {m["text"] for m in page}

    eventually(lambda: expected <= read(), timeout=60.0,
               message="dave read the whole backlog and the live message")


def test_kill9_right_after_accept_still_delivers(cluster: Cluster) -> None:
    group, (alice, bob) = setup_group(cluster, ["alice", "bob"])
    bob.stop()  # nobody can take the message before alice dies
    message_id = alice.send(group, "accepted means committed")
    alice.kill9()
    alice.start()
    bob.start()
    eventually(lambda: "accepted means committed" in bob.texts(group),
               message="the message survived kill -9")
    eventually(lambda: delivered_to(alice, group, message_id, {bob.user_id}))


def test_direct_chat_between_strangers(cluster: Cluster) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    reply = alice.ok("POST", "/api/v1/contacts", {"id": bob.user_id})
    assert reply["id"] == bob.user_id
    message_id = alice.ok("POST", f"/api/v1/chats/{bob.user_id}/messages",
                          {"text": "hi bob, it's alice"})["message_id"]

    def bob_has_it() -> bool:
        status, body = bob.call("GET", f"/api/v1/chats/{alice.user_id}/messages")
        return status == 200 and any(m["text"] == "hi bob, it's alice"
                                     for m in body["messages"])

    eventually(bob_has_it, message="bob received the direct message")
    bob.ok("POST", f"/api/v1/chats/{alice.user_id}/messages", {"text": "hi alice"})

    def status_of() -> str | None:
        msgs = alice.ok("GET", f"/api/v1/chats/{bob.user_id}/messages")["messages"]
        mine = next(m for m in msgs if m["message_id"] == message_id)
        return mine["status"].get(bob.user_id)

    eventually(lambda: status_of() == "delivered")
    bob.ok("POST", f"/api/v1/chats/{alice.user_id}/read", {"message_id": message_id})
    eventually(lambda: status_of() == "read")
    texts = [m["text"] for m in alice.ok("GET", f"/api/v1/chats/{bob.user_id}/messages")[
        "messages"]]
    assert texts == ["hi bob, it's alice", "hi alice"]

    # Both see the same 60-digit safety number; alice marks it verified.
    mine, theirs = (alice.ok("GET", f"/api/v1/safety/{bob.user_id}"),
                    bob.ok("GET", f"/api/v1/safety/{alice.user_id}"))
    assert mine["safety_number"] == theirs["safety_number"]
    assert len(mine["safety_number"]) == 60 and not mine["verified"]
    status, reply = alice.call("POST", f"/api/v1/safety/{bob.user_id}/verified",
                               {"identity_key": "05" + "00" * 32})
    assert (status, reply["error"]) == (403, "key_mismatch")
    done = alice.ok("POST", f"/api/v1/safety/{bob.user_id}/verified",
                    {"identity_key": mine["identity_key"]})
    assert done["verified"] and alice.ok("GET", f"/api/v1/safety/{bob.user_id}")["verified"]
