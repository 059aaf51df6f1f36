"""The messenger's checks on what the mesh hands it: forged, non-member, swapped and
replayed messages are refused and nothing of them is stored.

Three real messengers on the in-memory bus of tests/unit/groups/bus.py.
"""

from __future__ import annotations

import pytest

from groups import history
from groups.crypto import MAX_CHAIN_GAP, MemberBudget
from groups.group import Op, OpKind, _sign
from groups.messages import Envelope, EnvelopeKind, Text
from groups.messenger import Messenger
from mesh.errors import NotYetValid, RemoteError
from mesh.gossip_state import Message
from tests.unit.groups.bus import club
from tests.unit.groups.helpers import NOW, User


@pytest.fixture
def group():
    return club()


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


def test_member_over_its_rate_is_refused_for_now_and_accepted_later(group) -> None:
    """Issue 15, finding 2: the validate hook charges the sender's budget
    (groups.crypto.MemberBudget); over it, the message is "not yet valid", so the gossip
    does not remember it as rejected and anti-entropy brings it again."""
    group_id, nodes, (alice, bob, _, _) = group
    bob.crypto.member_budget = MemberBudget(rate=1.0, burst=1.0)
    first, second = (sealed(alice, group_id, text, seq=seq)
                     for seq, text in ((1, "one"), (2, "two")))
    nodes[bob.id].validate(first)
    assert nodes[bob.id].commit(first)
    with pytest.raises(NotYetValid) as info:
        nodes[bob.id].validate(second)
    assert info.value.reason == "throttled"
    assert not stored(nodes[bob.id], second)
    nodes[bob.id].clock = lambda: NOW + 1
    nodes[bob.id].validate(second)
    assert nodes[bob.id].commit(second)
    assert [m["text"] for m in nodes[bob.id].messages(group_id)] == ["one", "two"]


def test_message_far_ahead_of_the_chain_is_refused_for_now_and_accepted_later(group) -> None:
    """A message more than MAX_CHAIN_GAP iterations ahead of bob's chain is "not yet
    valid" (nothing stored or derived); once the messages in between have arrived, as
    they do when he catches up in alice's order, it is read."""
    group_id, nodes, (alice, bob, _, _) = group
    backlog = [sealed(alice, group_id, f"m{seq}", seq=seq)
               for seq in range(1, MAX_CHAIN_GAP + 3)]
    with pytest.raises(NotYetValid) as info:
        nodes[bob.id].validate(backlog[-1])
    assert info.value.reason == "ahead_of_chain"
    assert not stored(nodes[bob.id], backlog[-1])
    nodes[bob.id].validate(backlog[0])
    assert nodes[bob.id].commit(backlog[0])
    nodes[bob.id].validate(backlog[-1])
    assert nodes[bob.id].commit(backlog[-1])
    assert {"m1", f"m{MAX_CHAIN_GAP + 2}"} <= {m["text"]
                                               for m in nodes[bob.id].messages(group_id)}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def publish(self, event_type: str, data: dict) -> None:
        self.events.append((event_type, data))


def test_ui_events_wait_for_the_commit_and_vanish_with_a_rollback(group) -> None:
    group_id, nodes, (alice, bob, _, _) = group
    b = nodes[bob.id]
    b.io.events = recorder = Recorder()
    message = sealed(alice, group_id, "rolled back")
    with pytest.raises(RuntimeError), b.transaction():
        b.validate(message)
        assert b.commit(message)
        assert recorder.events == []  # not while the transaction is open
        raise RuntimeError("the disk is full")
    assert recorder.events == [] and not stored(b, message)
    b.validate(message)
    assert b.commit(message)
    assert [(kind, data["text"]) for kind, data in recorder.events] == [("message",
                                                                          "rolled back")]
