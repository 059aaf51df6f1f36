"""Typing and presence between real node processes: ephemeral signals over the link,
only inside the conversation, never stored, and gone when a user opts out."""

from __future__ import annotations

import sqlite3

from tests.integration.messenger.conftest import Cluster, NodeProc, eventually
from tests.integration.messenger.test_bad_input import count, refused


def group_messages_from(node: NodeProc, group: str, origin: str) -> int:
    """Mesh messages ``node`` stored from ``origin`` on the group's topic: where a
    typing signal would land if it were stored. (Not every mesh message: receipts and
    profiles travel meanwhile, bob's own or pairwise on the direct topics.)"""
    conn = sqlite3.connect(node.data_dir / "node.db")
    try:
        return conn.execute("SELECT COUNT(*) FROM mesh_messages WHERE topic = ? AND "
                            "origin = ?", (bytes.fromhex(group), origin)).fetchone()[0]
    finally:
        conn.close()


def test_typing_and_presence_between_members(cluster: Cluster) -> None:
    alice, bob, mallory = cluster.add("alice"), cluster.add("bob"), cluster.add("mallory")
    group = alice.create_group("Club")
    bob.join(alice.invite(group))
    alice.send(group, "hi")
    eventually(lambda: bob.messages(group))
    path = f"/api/v1/groups/{group}/presence"
    # Bob sees Alice online (their nodes are linked; she shares by default).
    eventually(lambda: bob.ok("GET", path)["presence"][alice.user_id]["online"],
               message="alice online for bob")

    def stored() -> tuple[int, int, int]:
        return (group_messages_from(alice, group, alice.user_id),
                group_messages_from(bob, group, alice.user_id), count(bob, "chat_messages"))

    # Whatever alice published on the group's topic so far (her messages, receipts) has
    # reached bob, so that what arrives later could only be the typing signals.
    before = eventually(lambda: (s := stored())[0] == s[1] and s, message="bob has alice's")
    assert before[0] >= 1  # "hi" at least
    assert alice.call("POST", path, {"typing": True})[0] == 204
    eventually(lambda: bob.ok("GET", path)["typing"] == [alice.user_id],
               message="bob sees alice typing")
    assert alice.call("POST", path, {"typing": False})[0] == 204
    eventually(lambda: bob.ok("GET", path)["typing"] == [], message="typing stopped")
    assert stored() == before  # neither side stored a typing signal
    # Outsiders cannot signal into the group; bad bodies are refused.
    assert refused(mallory, "POST", path, {"typing": True}) == (404, "not_found")
    assert refused(alice, "POST", path, {"typing": "yes"}) == (400, "bad_request")
    assert refused(alice, "POST", path, {"typing": True, "x": 1}) == (400, "bad_request")
    # Alice opts out: Bob sees her offline, and she sees no one's presence either.
    assert alice.ok("POST", "/api/v1/presence", {"share": False}) == {"share": False}
    eventually(lambda: bob.ok("GET", path)["presence"][alice.user_id]["online"] is False,
               message="alice offline for bob")
    assert alice.ok("GET", path)["presence"][bob.user_id] == {"online": None,
                                                              "last_seen": None}
    assert alice.call("POST", path, {"typing": True})[0] == 204
    assert bob.ok("GET", path)["typing"] == []
    assert alice.ok("GET", "/api/v1/presence") == {"share": False}
