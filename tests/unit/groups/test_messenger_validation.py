"""The messenger's checks on what the mesh hands it: forged, non-member, swapped and
replayed messages are refused and nothing of them is stored.

Three real messengers (real SQLite stores, real crypto) joined by an in-memory bus
that runs the same validate-then-commit sequence the mesh runtime does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from groups import history
from groups.directory import Directory
from groups.group import Op, OpKind, _sign
from groups.messages import Envelope, EnvelopeKind, Text, Welcome
from groups.messenger import Messenger
from groups.store import atomic
from mesh.errors import RemoteError
from mesh.gossip_state import Message
from tests.unit.groups.helpers import NOW, User, make_user, share_sender_keys


@dataclass
class Bus:
    """Delivers every published message to the other messengers sharing its topic."""

    nodes: dict[str, Messenger] = field(default_factory=dict)
    topics: dict[str, dict[bytes, set[str]]] = field(default_factory=dict)

    def deliver(self, message: Message, sender: str) -> None:
        for user_id, node in self.nodes.items():
            if user_id != sender and message.topic in self.topics.get(user_id, {}):
                node.validate(message)
                assert node.commit(message)


@dataclass
class BusPort:
    bus: Bus
    me: str

    def publish(self, message: Message) -> None:
        self.bus.deliver(message, self.me)

    def set_topic(self, topic: bytes, members: dict[str, list[str]]) -> None:
        self.bus.topics.setdefault(self.me, {})[topic] = set(members)

    def leave_topic(self, topic: bytes) -> None:
        self.bus.topics.get(self.me, {}).pop(topic, None)

    def resync(self, topic: bytes) -> None:
        """Everything is delivered at once on the bus: nothing to catch up."""


class NoEvents:
    def publish(self, event_type: str, data: dict) -> None:
        """The tests read state from the stores, not events."""


class NoLookup:
    """Every record is known in advance here; a lookup would be a test bug."""

    async def lookup(self, user_id: str, **_):
        raise AssertionError(f"unexpected lookup of {user_id}")

    async def bundle(self, user_id: str, **_):
        raise AssertionError(f"unexpected bundle claim for {user_id}")


def messenger(user: User, bus: Bus, everyone: list[User]) -> Messenger:
    directory = Directory(user.conn, user.crypto, NoLookup())
    for other in everyone:
        directory.remember(other.record(), NOW)
    node = Messenger(user.identity, user.conn, user.crypto, directory, BusPort(bus, user.id),
                     NoEvents(), clock=lambda: NOW)
    bus.nodes[user.id] = node
    return node


@pytest.fixture
def group():
    """alice (admin), bob and carol in one group with everyone's sender keys shared;
    mallory is known to all but not a member."""
    alice, bob, carol, mallory = (make_user() for _ in range(4))
    everyone = [alice, bob, carol, mallory]
    bus = Bus()
    nodes = {u.id: messenger(u, bus, everyone) for u in everyone}
    a = nodes[alice.id]
    group_id = a.groups.create("Club")
    # bob and carol get the log the way a welcome would give it to them.
    for user in (bob, carol):
        op = a.groups.log_of(group_id).make_op(alice.identity, OpKind.ADD, NOW,
                                               target=user.id, target_key=user.identity.public)
        a.groups._publish_op(group_id, op)
    chain = tuple(op.encode() for op in a.groups.log_of(group_id).chain())
    for user in (bob, carol):
        with atomic(user.conn):
            nodes[user.id].groups.receive_welcome(alice.id, Welcome(group_id, chain))
    share_sender_keys(group_id, [alice, bob, carol])
    mallory.crypto.sender_key_distribution(group_id, now=NOW)
    share_sender_keys(group_id, [mallory, bob])  # bob even holds mallory's key
    return group_id, nodes, (alice, bob, carol, mallory)


def sealed(user: User, group_id: bytes, text: str, origin: str | None = None,
           seq: int = 1) -> Message:
    body = user.crypto.encrypt_group(group_id, Text(1, 0, text).encode())
    return Message(group_id, origin or user.id, seq,
                   Envelope(EnvelopeKind.SEALED, body).encode())


def stored(node: Messenger, message: Message) -> bool:
    return node.mailbox.has(message.msg_id)


def test_genuine_message_is_accepted(group) -> None:
    group_id, nodes, (alice, bob, _, _) = group
    message_id = nodes[alice.id].send_text(group_id, "hello")
    assert "hello" in [m["text"] for m in nodes[bob.id].messages(group_id)]
    assert nodes[bob.id].mailbox.has(message_id)


def test_member_forging_another_members_message_is_refused(group) -> None:
    group_id, nodes, (alice, bob, carol, _) = group
    forged = sealed(carol, group_id, "alice says: give carol the keys", origin=alice.id)
    with pytest.raises(RemoteError):
        nodes[bob.id].validate(forged)
    assert not stored(nodes[bob.id], forged)
    assert nodes[bob.id].messages(group_id) == []


def test_message_from_a_non_member_is_refused(group) -> None:
    group_id, nodes, (_, bob, _, mallory) = group
    intruder = sealed(mallory, group_id, "let me in")
    with pytest.raises(RemoteError) as info:
        nodes[bob.id].validate(intruder)
    assert info.value.reason == "not_member"
    assert not stored(nodes[bob.id], intruder)


def test_relay_swapping_the_body_is_refused_and_the_real_one_still_lands(group) -> None:
    group_id, nodes, (alice, bob, _, _) = group
    genuine = sealed(alice, group_id, "the real text")
    body = Envelope.decode(genuine.payload).body
    swapped_body = body[:-20] + bytes(20)
    swapped = Message(group_id, alice.id, 1, Envelope(EnvelopeKind.SEALED,
                                                      swapped_body).encode())
    nodes[bob.id].validate(swapped)  # the signature covers the header only...
    assert nodes[bob.id].commit(swapped) is False  # ...decrypting finds the swap
    assert not stored(nodes[bob.id], swapped)
    nodes[bob.id].validate(genuine)
    assert nodes[bob.id].commit(genuine)
    assert [m["text"] for m in nodes[bob.id].messages(group_id)] == ["the real text"]


def test_duplicates_are_committed_once(group) -> None:
    group_id, nodes, (alice, bob, _, _) = group
    message = sealed(alice, group_id, "once")
    for _ in range(3):
        nodes[bob.id].validate(message)
        assert nodes[bob.id].commit(message)
    assert [m["text"] for m in nodes[bob.id].messages(group_id)] == ["once"]
    assert len(history.due_receipts(nodes[bob.id].conn)[group_id][0]) == 1


def test_op_by_a_non_admin_is_refused(group) -> None:
    group_id, nodes, (alice, bob, carol, _) = group
    state = nodes[bob.id].groups.log_of(group_id).state
    op = _sign(bob.identity, Op(group_id, state.epoch + 1, state.head, OpKind.REMOVE, bob.id,
                                bob.identity.public, int(NOW), target=carol.id))
    message = Message(group_id, bob.id, 1, Envelope(EnvelopeKind.OP, op.encode()).encode())
    nodes[alice.id].validate(message)  # well-formed and signed by its author...
    assert nodes[alice.id].commit(message) is False  # ...but not allowed by the log
    assert carol.id in nodes[alice.id].groups.log_of(group_id).state.members
    assert not stored(nodes[alice.id], message)


def test_retention_retires_old_mesh_messages_but_keeps_heads_and_history(group) -> None:
    group_id, nodes, (alice, bob, _, _) = group
    a, b = nodes[alice.id], nodes[bob.id]
    first = a.send_text(group_id, "old news")
    head = b.mailbox.head(group_id, alice.id)
    assert b.mailbox.has(first)
    b.clock = lambda: NOW + 10 * 86400
    assert b.apply_retention(7 * 86400) >= 1
    assert not b.mailbox.has(first)
    assert b.mailbox.head(group_id, alice.id) == head  # peers will not offer it again
    assert "old news" in [m["text"] for m in b.messages(group_id)]
    # Alice's own message is still unconfirmed by bob (no receipt came back on the
    # bus): she keeps it, being its only sure source.
    a.clock = lambda: NOW + 10 * 86400
    a.apply_retention(7 * 86400)
    assert a.mailbox.has(first)
