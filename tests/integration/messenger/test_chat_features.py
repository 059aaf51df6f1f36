"""Chat features between real node processes, through the node API only: replies,
reactions, edits, deletes, disappearing messages, mute, search and paging, and the
API's refusals of bad input (nothing stored)."""

from __future__ import annotations

from tests.integration.attachments.conftest import multipart, upload, wait_complete
from tests.integration.messenger.conftest import Cluster, NodeProc, eventually
from tests.integration.messenger.test_bad_input import count, refused


def chunks(node: NodeProc, attachment_id: str) -> bool:
    return (node.data_dir / "files" / f"{attachment_id}.chunks").exists()


def test_chat_features_between_two_nodes(cluster: Cluster) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    group = alice.create_group("Club")
    bob.join(alice.invite(group))
    base = f"/api/v1/groups/{group}"
    first = alice.send(group, "lunch at noon?")
    eventually(lambda: bob.texts(group) == ["lunch at noon?"], message="bob has it")
    # Reply, reaction, edit, as seen by the other node.
    reply = bob.ok("POST", f"{base}/messages", {"text": "yes", "reply_to": first})
    shown = bob.ok("PUT", f"{base}/messages/{first}/reaction", {"emoji": "👍"})
    assert shown["reactions"] == {"👍": [bob.user_id]}
    edited = alice.ok("PATCH", f"{base}/messages/{first}", {"text": "lunch at one?"})
    assert edited["text"] == "lunch at one?" and edited["edited_at"]

    def seen_by_bob() -> bool:
        messages = {m["message_id"]: m for m in bob.messages(group)}
        return (messages[first]["text"] == "lunch at one?"
                and messages[reply["message_id"]]["reply_to"]["available"])
    eventually(seen_by_bob, message="bob sees the edit and his reply's quote")
    eventually(lambda: alice.ok("GET", f"{base}/messages/{first}")["reactions"]
               == {"👍": [bob.user_id]}, message="alice sees bob's reaction")
    # Search (both nodes), then delete for everyone.
    assert [r["message"]["message_id"] for r in
            bob.ok("GET", "/api/v1/search?q=lunch%20on")["results"]] == [first]
    assert alice.ok("DELETE", f"{base}/messages/{first}")["deleted"] is True
    eventually(lambda: bob.ok("GET", f"{base}/messages/{first}")["deleted"],
               message="deleted for bob")
    assert bob.ok("GET", "/api/v1/search?q=lunch")["results"] == []
    # Disappearing messages, set by bob, enforced on alice's node too.
    assert bob.ok("POST", f"{base}/settings", {"timer": 5}) == {"timer": 5, "muted": False}
    eventually(lambda: next(c for c in alice.ok("GET", "/api/v1/groups")["groups"]
                            if c["id"] == group)["timer"] == 5, message="alice has the timer")
    gone = alice.send(group, "self-destructing")
    eventually(lambda: gone in {m["message_id"] for m in bob.messages(group)},
               message="bob has the disappearing message")
    for node in (alice, bob):
        eventually(lambda n=node: gone not in {m["message_id"] for m in n.messages(group)},
                   timeout=20, message=f"{node.name}: it disappeared")
    # A file disappears with its message: chunk files and search entries on both nodes.
    assert bob.ok("POST", f"{base}/settings", {"timer": 10})["timer"] == 10
    eventually(lambda: next(c for c in alice.ok("GET", "/api/v1/groups")["groups"]
                            if c["id"] == group)["timer"] == 10, message="alice has 10 s")
    status, sent = upload(alice, f"{base}/messages", b"\x89photo" * 40_000,
                          name="holiday.bin", caption="beach")
    assert status == 201, sent
    file_id = sent["attachment"]["id"]
    wait_complete(bob, file_id)
    for node in (alice, bob):
        assert chunks(node, file_id)
        found = node.ok("GET", "/api/v1/search?q=holiday")["results"]
        assert [r["message"]["message_id"] for r in found] == [sent["message_id"]]
    for node in (alice, bob):
        eventually(lambda n=node: not chunks(n, file_id), timeout=20,
                   message=f"{node.name}: the file's chunks are deleted")
        assert node.ok("GET", "/api/v1/search?q=holiday")["results"] == []
        assert node.call("GET", f"/api/v1/attachments/{file_id}/info")[0] == 404
    bob.ok("POST", f"{base}/settings", {"timer": 0})
    # The same features in a 1:1 chat.
    direct = f"/api/v1/chats/{bob.user_id}/messages"
    hello = alice.ok("POST", direct, {"text": "just us"})["message_id"]
    eventually(lambda: bob.call("GET", f"/api/v1/chats/{alice.user_id}/messages/{hello}")[0]
               == 200, message="bob has the 1:1 message")
    bob.ok("PUT", f"/api/v1/chats/{alice.user_id}/messages/{hello}/reaction", {"emoji": "🙂"})
    eventually(lambda: alice.ok("GET", f"{direct}/{hello}")["reactions"]
               == {"🙂": [bob.user_id]}, message="alice sees the 1:1 reaction")
    # A file can be a reply too (multipart field reply_to); a bad one stores nothing.
    body, kind = multipart({"file": ("map.png", b"png" * 100), "text": (None, b"here"),
                            "reply_to": (None, hello.encode())})
    status, sent = bob.call("POST", f"/api/v1/chats/{alice.user_id}/messages", raw=body,
                            headers={"Content-Type": kind})
    assert status == 201, sent
    eventually(lambda: alice.call("GET", f"{direct}/{sent['message_id']}")[0] == 200,
               message="alice has the file reply")
    quote = alice.ok("GET", f"{direct}/{sent['message_id']}")["reply_to"]
    assert (quote["available"], quote["text"]) == (True, "just us")
    before = count(bob, "attachments")
    body, kind = multipart({"file": ("x.bin", b"x"), "reply_to": (None, b"f" * 64)})
    assert bob.call("POST", f"/api/v1/chats/{alice.user_id}/messages", raw=body,
                    headers={"Content-Type": kind})[1]["error"] == "not_found"
    body, kind = multipart({"file": ("x.bin", b"x"), "reply_to": (None, b"nope")})
    assert bob.call("POST", f"/api/v1/chats/{alice.user_id}/messages", raw=body,
                    headers={"Content-Type": kind})[1]["error"] == "bad_reply_to"
    assert count(bob, "attachments") == before
    # Mute is local.
    assert alice.ok("POST", f"{base}/settings", {"muted": True})["muted"] is True
    assert not next(c for c in bob.ok("GET", "/api/v1/groups")["groups"]
                    if c["id"] == group)["muted"]
    # Paging: a cursor from the answer; limits checked.
    page = bob.ok("GET", f"{base}/messages?limit=1")
    assert len(page["messages"]) == 1 and page["before"]
    older = bob.ok("GET", f"{base}/messages?limit=500&before={page['before']}")
    assert older["before"] is None and older["messages"]
    # Bad input: refused, nothing stored.
    stored = (count(alice, "mesh_messages"), count(alice, "reactions"))
    bad = "f" * 64
    assert refused(alice, "PUT", f"{base}/messages/{bad}/reaction",
                   {"emoji": "👍"}) == (404, "not_found")
    assert refused(alice, "PUT", f"{base}/messages/{reply['message_id']}/reaction",
                   {"emoji": "x" * 40}) == (400, "bad_emoji")
    assert refused(alice, "PATCH", f"{base}/messages/{reply['message_id']}",
                   {"text": "forged"}) == (403, "not_yours")
    assert refused(alice, "DELETE", f"{base}/messages/{reply['message_id']}") == (
        403, "not_yours")
    assert refused(alice, "POST", f"{base}/messages", {"text": "re", "reply_to": bad}) == (
        404, "not_found")
    assert refused(alice, "POST", f"{base}/messages", {"text": "re", "reply_to": "zz"}) == (
        400, "bad_reply_to")
    assert refused(bob, "PATCH", f"{base}/messages/{reply['message_id']}",
                   {"text": "\n" * (64 * 1024 + 1)}) == (413, "text_too_long")
    assert refused(bob, "PUT", f"{base}/messages/{reply['message_id']}/reaction",
                   {"emoji": "👍" * 9}) == (400, "bad_emoji")
    assert bob.ok("GET", f"{base}/messages/{reply['message_id']}")["text"] == "yes"
    assert refused(alice, "POST", f"{base}/settings", {"timer": 1}) == (400, "bad_timer")
    assert refused(alice, "POST", f"{base}/settings", {"timer": "1h"}) == (400, "bad_timer")
    assert refused(alice, "GET", f"{base}/messages?limit=0") == (400, "bad_limit")
    assert refused(alice, "GET", f"{base}/messages?before=nonsense") == (404, "not_found")
    assert refused(alice, "GET", "/api/v1/search?q=") == (400, "bad_query")
    assert (count(alice, "mesh_messages"), count(alice, "reactions")) == stored
