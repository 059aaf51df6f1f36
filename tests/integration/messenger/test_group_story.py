"""Four users, one group, through the node API of real node processes."""

from __future__ import annotations

from tests.integration.messenger.conftest import Cluster, eventually


def all_in_state(node, group: str, message_id: str, state: str, members: set[str]) -> bool:
    msg = next((m for m in node.messages(group) if m["message_id"] == message_id), None)
    return msg is not None and all(msg["status"].get(u) == state for u in members)


def test_four_users_group_delivery_and_read(cluster: Cluster) -> None:
    alice, bob, carol, dave = (cluster.add(n) for n in ("alice", "bob", "carol", "dave"))
    group = alice.create_group("Trip")
    for friend in (bob, carol, dave):
        assert friend.join(alice.invite(group)) == group
    everyone = {n.user_id for n in (alice, bob, carol, dave)}
    for node in (alice, bob, carol, dave):
        eventually(lambda node=node: node.members(group) == everyone,
                   message=f"{node.name} sees all four members")

    first = alice.send(group, "Who brings the tent?")
    others = everyone - {alice.user_id}
    for node in (bob, carol, dave):
        eventually(lambda node=node: "Who brings the tent?" in node.texts(group),
                   message=f"{node.name} receives alice's message")
    eventually(lambda: all_in_state(alice, group, first, "delivered", others),
               message="alice's message delivered to all")

    reply = bob.send(group, "I do")
    for node in (alice, carol, dave):
        eventually(lambda node=node: "I do" in node.texts(group))
    eventually(lambda: all_in_state(bob, group, reply, "delivered",
                                    everyone - {bob.user_id}))

    for node in (bob, carol, dave):
        node.ok("POST", f"/api/v1/groups/{group}/read", {"message_id": first})
    eventually(lambda: all_in_state(alice, group, first, "read", others),
               message="alice's message read by all")
    # Everyone sees the same order.
    orders = [[m["message_id"] for m in n.messages(group)] for n in (alice, bob, carol, dave)]
    assert all(order == orders[0] for order in orders)
