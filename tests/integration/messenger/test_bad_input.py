"""Bad input to the node API: each gets a clear error, stores nothing, and the node
keeps serving. Real node processes, as in the stories."""

from __future__ import annotations

import base64
import sqlite3
import time

import msgpack
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.integration.messenger.conftest import Cluster, NodeProc, eventually


def count(node: NodeProc, table: str) -> int:
    conn = sqlite3.connect(node.data_dir / "node.db")
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def tamper(invite: str, **changes) -> str:
    body = invite.removeprefix("parley:invite/")
    fields = msgpack.unpackb(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    names = ["v", "group", "name", "inviter", "endpoints", "bootstrap", "secret", "expires",
             "dht", "members"]
    for key, value in changes.items():
        fields[names.index(key)] = value
    packed = msgpack.packb(fields, use_bin_type=True)
    return "parley:invite/" + base64.urlsafe_b64encode(packed).rstrip(b"=").decode()


@pytest.fixture
def trio(cluster: Cluster) -> tuple[str, NodeProc, NodeProc, NodeProc]:
    alice, bob, mallory = cluster.add("alice"), cluster.add("bob"), cluster.add("mallory")
    group = alice.create_group("Club")
    bob.join(alice.invite(group))
    return group, alice, bob, mallory


def refused(node: NodeProc, method: str, path: str, body=None, **kw) -> tuple[int, str]:
    status, reply = node.call(method, path, body, **kw)
    assert 400 <= status < 500 and reply["message"], (status, reply)
    return status, reply["error"]


def test_bad_invites(trio) -> None:
    group, alice, bob, mallory = trio
    link = alice.invite(group)
    before = count(alice, "group_ops"), count(mallory, "conversations")
    # Forged: right group and inviter, a secret nobody issued.
    assert refused(mallory, "POST", "/api/v1/join",
                   {"invite": tamper(link, secret=b"\x00" * 16)}) == (403, "invite_invalid")
    # Expired on its face, and really expired (the log's expiry, checked by the member).
    assert refused(mallory, "POST", "/api/v1/join",
                   {"invite": tamper(link, expires=int(time.time()) - 10)}) == \
        (403, "invite_expired")
    short = alice.ok("POST", f"/api/v1/groups/{group}/invites", {"ttl": 1})["invite"]
    time.sleep(2.1)
    assert refused(mallory, "POST", "/api/v1/join",
                   {"invite": tamper(short, expires=int(time.time()) + 60)}) == \
        (403, "invite_expired")
    # Malformed.
    for junk in ["", "parley:invite/!!!", "https://example.com", link[:-10], 42]:
        assert refused(mallory, "POST", "/api/v1/join", {"invite": junk}) == \
            (400, "invite_malformed")
    assert mallory.call("GET", f"/api/v1/groups/{group}")[0] == 404
    assert (count(alice, "group_ops") - before[0]) == 1  # only the short invite's op
    # Nothing of the group is stored; only (hidden) direct topics with the members asked.
    assert count(mallory, "conversations WHERE kind = 'group'") == 0
    assert count(mallory, "conversations") - before[1] <= 2
    # Reused: the first bearer gets in, the second is refused.
    assert mallory.join(link) == group
    carol_like = bob  # already a member: joining again is harmless
    assert carol_like.join(alice.invite(group)) == group
    assert refused(alice, "POST", "/api/v1/join", {"invite": link}) == (403, "own_invite")


def test_removed_member_rejoins_only_with_a_newer_invite(trio) -> None:
    group, alice, bob, mallory = trio
    stale = alice.invite(group)
    seen = alice.send(group, "read after the removal")
    eventually(lambda: "read after the removal" in bob.texts(group))
    assert alice.call("DELETE", f"/api/v1/groups/{group}/members/{bob.user_id}")[0] == 204
    eventually(lambda: bob.call("GET", f"/api/v1/groups/{group}")[0] == 404)
    # A page still showing the chat marks it read: local, not an error (no receipt goes
    # out); a message that is not in the group's history is still a 404.
    assert bob.ok("POST", f"/api/v1/groups/{group}/read", {"message_id": seen}) == {"marked": 1}
    assert refused(mallory, "POST", f"/api/v1/groups/{group}/read", {"message_id": seen}) == \
        (404, "not_found")
    assert refused(bob, "POST", "/api/v1/join", {"invite": stale}) == (403, "removed_member")
    assert bob.user_id not in alice.members(group)
    assert bob.join(alice.invite(group)) == group
    assert bob.user_id in alice.members(group)
    alice.send(group, "welcome back")
    eventually(lambda: "welcome back" in [m["text"] for m in bob.messages(group)])
    bob.send(group, "glad to be back")
    eventually(lambda: "glad to be back" in [m["text"] for m in alice.messages(group)])


def test_permissions_and_limits(trio) -> None:
    group, alice, bob, mallory = trio
    assert refused(bob, "DELETE", f"/api/v1/groups/{group}/members/{alice.user_id}") == \
        (403, "not_admin")
    assert refused(bob, "POST", f"/api/v1/groups/{group}/invites", {}) == (403, "not_admin")
    assert refused(bob, "POST", f"/api/v1/groups/{group}/admins", {"id": bob.user_id}) == \
        (403, "not_admin")
    stored = count(alice, "chat_messages")
    assert refused(alice, "POST", f"/api/v1/groups/{group}/messages",
                   {"text": "x" * (64 * 1024 + 1)}) == (413, "text_too_long")
    assert refused(alice, "POST", f"/api/v1/groups/{group}/messages", {"text": "  "}) == \
        (400, "empty_message")
    assert count(alice, "chat_messages") == stored
    alice.send(group, "é" * (32 * 1024))  # exactly 64 KiB of UTF-8 is fine
    # Not a member: mallory cannot read or post, even knowing the group id.
    assert refused(mallory, "GET", f"/api/v1/groups/{group}/messages")[0] == 404
    assert refused(mallory, "POST", f"/api/v1/groups/{group}/messages", {"text": "hi"})[0] \
        in (403, 404)


def test_unknown_ids_and_malformed_requests(trio) -> None:
    group, alice, _, _ = trio
    assert refused(alice, "GET", "/api/v1/groups/" + "ab" * 16) == (404, "not_found")
    assert refused(alice, "GET", "/api/v1/groups/xyz") == (400, "bad_group_id")
    assert refused(alice, "POST", "/api/v1/contacts", {"id": "123"}) == (400, "bad_user_id")
    assert refused(alice, "POST", "/api/v1/contacts", {"id": "000000000000001"}) == \
        (404, "unknown_user")
    assert refused(alice, "GET", "/api/v1/chats/000000000000001/messages") == \
        (404, "not_found")
    assert refused(alice, "POST", "/api/v1/groups", raw=b"{not json") == \
        (400, "malformed_json")
    assert refused(alice, "POST", "/api/v1/groups", {"name": "x", "extra": 1}) == \
        (400, "bad_request")
    assert refused(alice, "POST", "/api/v1/groups", {"name": 5}) == (400, "bad_request")
    assert refused(alice, "POST", f"/api/v1/groups/{group}/read",
                   {"message_id": "00" * 32}) == (404, "not_found")
    assert alice.ok("GET", "/api/v1/me")["id"] == alice.user_id  # still serving


def test_tokens_and_origins(trio) -> None:
    _, alice, _, _ = trio
    assert refused(alice, "GET", "/api/v1/groups", token=None) == (401, "unauthenticated")
    assert refused(alice, "GET", "/api/v1/groups", token="x" * 43) == (401, "unauthenticated")
    assert refused(alice, "POST", "/api/v1/groups", {"name": "Evil"},
                   headers={"Origin": "http://evil.example"}) == (403, "forbidden_origin")
    assert refused(alice, "GET", "/api/v1/groups",
                   headers={"Host": "evil.example"}) == (403, "bad_host")
    assert [g["name"] for g in alice.ok("GET", "/api/v1/groups")["groups"]] == ["Club"]


async def test_events_socket_refuses_other_origins_and_missing_tokens(trio) -> None:
    _, alice, _, _ = trio
    ws_url = alice.url.replace("http://", "ws://") + "/api/v1/events"
    auth = {"Authorization": f"Bearer {alice.token}"}
    for headers in ({"Origin": "http://evil.example", **auth}, {}):
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(HTTPRequest(ws_url, headers=headers))
        assert info.value.code in (401, 403)
    conn = await websocket_connect(HTTPRequest(ws_url, headers=auth))
    first = await conn.read_message()
    assert '"ready"' in first
    conn.close()
