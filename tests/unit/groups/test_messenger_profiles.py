"""Profiles through the messenger: owed once to everyone we chat with (not to a stranger
who merely linked to us), received from the peers whose topics are ours, and a profile
breaking a bound (oversized name or avatar, a control character) refused with nothing
of it stored.

Real messengers on the in-memory bus of tests/unit/groups/bus.py, pairwise sessions
made as tests/unit/groups/helpers.py pairs users."""

from __future__ import annotations

import msgpack
import pytest

from groups import profiles
from groups.messages import Envelope, EnvelopeKind, Profile, direct_topic
from groups.messenger import Messenger
from mesh.gossip_state import Message
from tests.unit.groups.bus import club
from tests.unit.groups.helpers import User, pair


@pytest.fixture
def group():
    group_id, nodes, (alice, bob, carol, mallory) = club()
    for sender in (alice, mallory):
        pair(sender, bob)
        nodes[bob.id].peer_connected(sender.id)  # a link makes the 1:1 topic ours
    return group_id, nodes, (alice, bob, carol, mallory)


def pairwise(sender: User, receiver: User, plaintext: bytes, seq: int = 1) -> Message:
    body = sender.crypto.encrypt(receiver.id, plaintext)
    return Message(direct_topic(sender.id, receiver.id), sender.id, seq,
                   Envelope(EnvelopeKind.PAIRWISE, body).encode())


def raw_profile(version: int, name: object, avatar: object) -> bytes:
    """A profile content as a hostile peer could encode it (no checks on the way out)."""
    return msgpack.packb({"t": "profile", "version": version, "name": name, "avatar": avatar},
                         use_bin_type=True)


def receive(node: Messenger, message: Message) -> None:
    node.validate(message)
    node.commit(message)


def test_our_profile_is_owed_once_to_everyone_we_chat_with(group) -> None:
    _, nodes, (alice, bob, carol, mallory) = group
    a = nodes[alice.id]
    a.peer_connected(mallory.id)  # a stranger who linked to us: a hidden 1:1 topic only
    assert a.share_profile() == 0  # no profile yet
    profiles.set_own_profile(alice.conn, alice.id, "Alice", b"", now_ms=1)
    assert a.share_profile() == 2  # bob and carol; mallory shares no chat with us
    owed = alice.conn.execute("SELECT peer, kind FROM pairwise_outbox WHERE kind = 'profile'")
    assert sorted(owed.fetchall()) == sorted([(bob.id, "profile"), (carol.id, "profile")])
    assert a.share_profile() == 0  # owed already


def test_a_members_profile_is_kept(group) -> None:
    _, nodes, (alice, bob, _, _) = group
    receive(nodes[bob.id], pairwise(alice, bob, Profile(7, "Alice", b"").encode()))
    assert profiles.load_profiles(bob.conn)[alice.id].name == "Alice"


def test_a_linked_strangers_profile_is_kept_but_ours_is_not_sent(group) -> None:
    """A stranger who added us sends their profile before their first message: we keep
    it (to name them when they write), but owe them ours only once we chat."""
    _, nodes, (_, bob, _, mallory) = group
    b = nodes[bob.id]
    receive(b, pairwise(mallory, bob, Profile(7, "Mallory", b"").encode()))
    assert profiles.load_profiles(bob.conn)[mallory.id].name == "Mallory"
    profiles.set_own_profile(bob.conn, bob.id, "Bob", b"", now_ms=1)
    b.share_profile()
    owed = {p for (p,) in bob.conn.execute("SELECT peer FROM pairwise_outbox WHERE kind = ?",
                                           ("profile",))}
    assert mallory.id not in owed
    b.open_direct(mallory.id, visible=True)  # bob writes to her: now a chat of his
    assert b.share_profile() == 1


@pytest.mark.parametrize("plaintext", [
    raw_profile(1, "A" * 65, b""),                       # name over 64 bytes
    raw_profile(1, "Alice", b"\x89PNG" + b"\x00" * 32 * 1024),   # avatar over 32 KiB
    raw_profile(1, "Alice\u202e", b""),                  # a bidi override
    raw_profile(1, "Alice", b"<svg onload=alert(1)>"),   # not a picture
    raw_profile(1, " Alice", b""),                       # not in stored form
    raw_profile(-5, "Alice", b""),
])
def test_a_bad_profile_is_refused_and_nothing_is_stored(group, plaintext: bytes) -> None:
    _, nodes, (alice, bob, _, _) = group
    message = pairwise(alice, bob, plaintext)
    receive(nodes[bob.id], message)
    assert profiles.load_profiles(bob.conn) == {}
    reason = bob.conn.execute("SELECT reason FROM undecrypted WHERE msg_id = ?",
                              (message.msg_id,)).fetchone()
    assert reason == ("bad_content",)
