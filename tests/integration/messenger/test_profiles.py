"""Profiles between real node processes: a name and an avatar reach the group's members
(also one who joins later), a change propagates, a lookalike name is marked, nicknames
stay local, and bad input is refused with nothing stored."""

from __future__ import annotations

import base64
import struct
import urllib.request
import zlib
from typing import Any

from .conftest import Cluster, NodeProc, eventually


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def set_profile(node: NodeProc, name: str, avatar: bytes | None = None) -> dict[str, Any]:
    """avatar None: remove it."""
    body = {"name": name, "avatar": None if avatar is None else base64.b64encode(avatar).decode()}
    return node.ok("PUT", "/api/v1/profile", body)


def person(node: NodeProc, user_id: str) -> dict[str, Any] | None:
    return node.ok("GET", "/api/v1/profiles")["people"].get(user_id)


def test_names_reach_members_and_lookalikes_are_marked(cluster: Cluster) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    group = alice.create_group("Names")
    bob.join(alice.invite(group))
    picture = png()
    mine = set_profile(alice, " Alice ", picture)
    assert mine["name"] == "Alice" and mine["avatar"]
    seen = eventually(lambda: (p := person(bob, alice.user_id)) and p["name"] == "Alice" and p,
                      message="Bob has Alice's profile")
    assert seen["avatar"] == mine["avatar"] and seen["nickname"] is None
    # A change of name alone (no "avatar" field) keeps the picture.
    renamed = alice.ok("PUT", "/api/v1/profile", {"name": "Alice"})
    assert renamed["avatar"] and renamed["avatar"] > mine["avatar"]
    assert fetch_avatar(bob, alice.user_id) == (picture, "image/png")

    # A member who joins later gets it too; a change reaches everyone.
    carol = cluster.add("carol")
    carol.join(alice.invite(group))
    eventually(lambda: (p := person(carol, alice.user_id)) and p["name"] == "Alice",
               message="Carol, who joined later, has Alice's profile")
    set_profile(alice, "Alice B.")
    for node in (bob, carol):
        eventually(lambda n=node: (p := person(n, alice.user_id)) and p["name"] == "Alice B."
                   and p["avatar"] is None, message=f"{node.name} has Alice's new name")

    # Carol calls herself "A1ice b": Bob sees her marked as imitating Alice, who had the
    # name first; Alice is not marked.
    set_profile(carol, "A1ice b")
    eventually(lambda: (p := person(bob, carol.user_id)) and p["lookalike"] == alice.user_id,
               message="Bob sees Carol's name marked")
    assert person(bob, alice.user_id)["lookalike"] is None

    # Bob's nickname for Alice is his alone, and ends the likeness on his screen.
    reply = bob.ok("PUT", f"/api/v1/nicknames/{alice.user_id}", {"nickname": " Mum "})
    assert reply == {"id": alice.user_id, "nickname": "Mum"}
    assert person(bob, alice.user_id) == {"name": "Alice B.", "nickname": "Mum",
                                          "avatar": None, "lookalike": None}
    assert person(bob, carol.user_id)["lookalike"] is None
    assert bob.user_id not in carol.ok("GET", "/api/v1/profiles")["people"] or \
        person(carol, bob.user_id)["nickname"] is None
    bob.ok("PUT", f"/api/v1/nicknames/{alice.user_id}", {"nickname": ""})
    assert person(bob, alice.user_id)["nickname"] is None


def fetch_avatar(node: NodeProc, user_id: str) -> tuple[bytes, str]:
    request = urllib.request.Request(f"{node.url}/api/v1/profiles/{user_id}/avatar",
                                     headers={"Authorization": f"Bearer {node.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        return response.read(), response.headers["Content-Type"]


def test_an_avatar_is_served_as_a_picture_only(cluster: Cluster) -> None:
    alice = cluster.add("alice")
    picture = png(3, 3)
    set_profile(alice, "Alice", picture)
    assert fetch_avatar(alice, alice.user_id) == (picture, "image/png")
    status, reply = alice.call("GET", "/api/v1/profiles/123456789012345/avatar")
    assert (status, reply["error"]) == (404, "not_found")
    status, reply = alice.call("GET", "/api/v1/profiles/nope/avatar")
    assert (status, reply["error"]) == (400, "bad_user_id")


BAD_PROFILES = [
    ({"name": "x" * 65}, 400, "bad_name"),
    ({"name": "é" * 33}, 400, "bad_name"),
    ({"name": "   "}, 400, "bad_name"),
    ({"name": "Bob\u202e"}, 400, "bad_name"),
    ({"name": 5}, 400, "bad_request"),
    ({"name": "Bob", "bio": "x"}, 400, "bad_request"),
    ({"name": "Bob", "avatar": base64.b64encode(b"\x89PNG" + b"\x00" * 40_000).decode()},
     413, "avatar_too_large"),
    ({"name": "Bob", "avatar": base64.b64encode(png() + b"\x00" * 33_000).decode()},
     413, "avatar_too_large"),
    ({"name": "Bob", "avatar": base64.b64encode(b"<svg onload=alert(1)/>").decode()},
     400, "bad_avatar"),
    ({"name": "Bob", "avatar": "not base64!"}, 400, "bad_avatar"),
    ({"name": "Bob", "avatar": 7}, 400, "bad_avatar"),
]


def test_bad_profiles_are_refused_and_nothing_is_stored(cluster: Cluster) -> None:
    bob = cluster.add("bob")
    for kept in ({"name": None, "avatar": None}, {"name": "Bob", "avatar": None}):
        for body, status, error in BAD_PROFILES:
            code, reply = bob.call("PUT", "/api/v1/profile", body)
            assert (code, reply["error"]) == (status, error), body
            assert reply["message"]
            assert bob.ok("GET", "/api/v1/profiles")["me"] == kept
        assert set_profile(bob, "Bob\n") == {"name": "Bob", "avatar": None}  # trimmed


def test_bad_nicknames_are_refused(cluster: Cluster) -> None:
    bob = cluster.add("bob")
    other = "123456789012345"
    for nickname, error in (("x" * 65, "bad_nickname"), ("a\u0000b", "bad_nickname"),
                            (None, "bad_request")):
        status, reply = bob.call("PUT", f"/api/v1/nicknames/{other}", {"nickname": nickname})
        assert (status, reply["error"]) == (400, error)
    status, reply = bob.call("PUT", "/api/v1/nicknames/12345", {"nickname": "x"})
    assert (status, reply["error"]) == (400, "bad_user_id")
    assert bob.ok("GET", "/api/v1/profiles")["people"] == {}
