"""Issue 15, finding 1: values a member controls that feed a clock, counter or index.

A member once sent a correctly signed text whose ordering value was 2^63-1; the
receivers' conversation clock overflowed into a SQLite REAL and every later message was
dropped. These tests replay that with real messengers (real SQLite, real crypto) and
show the group keeps working and nothing out of bounds is stored; and that a database
poisoned before the fix is repaired when it is opened.
"""

from __future__ import annotations

import sqlite3

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groups import conversation_clock, history
from groups.errors import BadContent, Unsendable
from groups.group import MAX_OPS, Op, OpKind, _sign
from groups.messages import MAX_INT, MAX_SENT_AT, Envelope, EnvelopeKind, Text, decode_content
from groups.schema import MIGRATIONS
from groups.store import open_store
from mesh.db import open_db
from mesh.errors import RemoteError
from mesh.gossip_state import Message
from tests.unit.groups.bus import club
from tests.unit.groups.helpers import NOW

NOW_MS = int(NOW * 1000)


@pytest.fixture
def group():
    return club()


def hostile_text(user, group_id: bytes, lamport: int, sent_at: int = 0,
                 seq: int | None = None) -> Message:
    """A text a modified client would send: signed and encrypted like any other, with
    the sender's next seq unless told otherwise."""
    plaintext = msgpack.packb({"t": "text", "lamport": lamport, "sent_at": sent_at,
                               "text": "boom", "file": None}, use_bin_type=True)
    body = user.crypto.encrypt_group(group_id, plaintext)
    if seq is None:
        seq = history.next_own_seq(user.conn, group_id)
    return Message(group_id, user.id, seq, Envelope(EnvelopeKind.SEALED, body).encode())


def clock_column(conn: sqlite3.Connection, table: str, topic: bytes) -> set[tuple[str, int]]:
    return set(conn.execute(f"SELECT typeof(lamport), lamport FROM {table} "
                            "WHERE topic = ?", (topic,)))


def test_text_claiming_2_63_minus_1_is_refused_and_the_group_keeps_working(group) -> None:
    group_id, nodes, (alice, bob, carol, _) = group
    attack = hostile_text(carol, group_id, 2**63 - 1)
    bob_node = nodes[bob.id]
    bob_node.validate(attack)             # signed by a member: it may be relayed...
    assert bob_node.commit(attack)        # ...and is kept for others, but never shown
    assert bob_node.messages(group_id) == []
    assert history.order_clock(bob.conn, group_id) == 0
    # Everyone goes on talking, the attacker included, and every text lands in order.
    nodes[alice.id].send_text(group_id, "still here")
    nodes[bob.id].send_text(group_id, "me too")
    nodes[carol.id].send_text(group_id, "sorry")
    for user in (alice, bob, carol):
        assert [m["text"] for m in nodes[user.id].messages(group_id)] == [
            "still here", "me too", "sorry"]
        for table in ("conversations", "chat_messages"):
            assert {kind for kind, _ in clock_column(user.conn, table, group_id)} == {"integer"}


def test_far_future_value_within_the_format_is_held_to_now_plus_five_minutes(group) -> None:
    group_id, nodes, (_, bob, carol, _) = group
    bob_node = nodes[bob.id]
    attack = hostile_text(carol, group_id, conversation_clock.MAX_ORDER)
    bob_node.validate(attack)
    assert bob_node.commit(attack)
    bound = NOW_MS + conversation_clock.MAX_AHEAD_MS
    assert [m["lamport"] for m in bob_node.messages(group_id)] == [bound]
    assert history.order_clock(bob.conn, group_id) == bound
    # Bob's answer sorts after it, and the clock moved one step, not to the claim.
    bob_node.send_text(group_id, "answer")
    assert [m["text"] for m in bob_node.messages(group_id)] == ["boom", "answer"]
    assert history.order_clock(bob.conn, group_id) == bound + 1


def test_sent_at_beyond_a_javascript_date_is_refused(group) -> None:
    group_id, nodes, (_, bob, carol, _) = group
    attack = hostile_text(carol, group_id, 1, sent_at=2**53 - 1)
    nodes[bob.id].validate(attack)
    assert nodes[bob.id].commit(attack)
    assert nodes[bob.id].messages(group_id) == []
    assert history.undecrypted(bob.conn, group_id) == [attack]


def test_seq_beyond_the_bound_is_refused_before_anything_is_stored(group) -> None:
    group_id, nodes, (_, bob, carol, _) = group
    attack = hostile_text(carol, group_id, 1, seq=history.MAX_SEQ + 1)
    with pytest.raises(RemoteError) as info:
        nodes[bob.id].validate(attack)
    assert info.value.reason == "bad_seq"
    assert not nodes[bob.id].mailbox.has(attack.msg_id)


@pytest.mark.parametrize(("field", "value"), [("epoch", 2**63), ("epoch", 2**64 - 1),
                                              ("epoch", MAX_OPS + 1), ("at", 2**63),
                                              ("expires", 2**64 - 1)])
def test_op_with_an_out_of_range_integer_is_refused(group, field: str, value: int) -> None:
    group_id, nodes, (alice, bob, _, _) = group
    state = nodes[alice.id].groups.log_of(group_id).state
    fields = {"epoch": state.epoch + 1, "at": int(NOW), "expires": 0} | {field: value}
    op = _sign(alice.identity, Op(group_id, fields["epoch"], state.head, OpKind.INVITE,
                                  alice.id, alice.identity.public, fields["at"],
                                  secret=bytes(32), expires=fields["expires"]))
    message = Message(group_id, alice.id, 9, Envelope(EnvelopeKind.OP, op.encode()).encode())
    with pytest.raises(RemoteError) as info:
        nodes[bob.id].validate(message)
    assert info.value.reason == "bad_op"
    assert not nodes[bob.id].mailbox.has(message.msg_id)


def test_a_send_that_cannot_be_encoded_fails_visibly() -> None:
    with pytest.raises(Unsendable) as info:
        Text(2**63, 0, "x").encode()
    assert info.value.reason == "bad_content"
    with pytest.raises(Unsendable):
        conversation_clock.tick(conversation_clock.MAX_ORDER, NOW)


def test_exhausted_sequence_numbers_refuse_the_send(group) -> None:
    group_id, nodes, (alice, _, _, _) = group
    alice.conn.execute("UPDATE conversations SET own_seq = ? WHERE topic = ?",
                       (history.MAX_SEQ, group_id))
    with pytest.raises(Unsendable) as info:
        nodes[alice.id].send_text(group_id, "one too many")
    assert info.value.reason == "seq_exhausted"
    assert nodes[alice.id].messages(group_id) == []


def test_clock_ticks_by_wall_clock_and_past_what_it_saw() -> None:
    assert conversation_clock.tick(0, NOW) == NOW_MS
    assert conversation_clock.tick(NOW_MS + 10, NOW) == NOW_MS + 11
    assert conversation_clock.observe(5, NOW_MS - 1, NOW) == NOW_MS - 1
    assert conversation_clock.observe(5, 2**62, NOW) == NOW_MS + conversation_clock.MAX_AHEAD_MS


def test_migration_repairs_a_poisoned_database(tmp_path) -> None:
    path = tmp_path / "node.db"
    conn = open_db(path, MIGRATIONS[:3])  # a node from before the fix
    topic, other = bytes(16), bytes([1]) * 16
    for t in (topic, other):
        conn.execute("INSERT INTO conversations (topic, kind, name, joined_at) "
                     "VALUES (?, 'group', 'g', 0)", (t,))
    rows = [(b"a" * 32, topic, 3), (b"b" * 32, topic, 2**63 - 1), (b"c" * 32, topic, 7),
            (b"d" * 32, other, 4)]
    for message_id, t, lamport in rows:
        conn.execute("INSERT INTO chat_messages (message_id, topic, sender, seq, lamport, "
                     "sent_at, text) VALUES (?, ?, 's', 1, ?, 0, 'x')", (message_id, t, lamport))
    # What the overflow left behind: a REAL clock, and a later message stored with it.
    conn.execute("UPDATE conversations SET lamport = 9.223372036854776e18 WHERE topic = ?",
                 (topic,))
    conn.execute("UPDATE chat_messages SET lamport = 9.223372036854776e18 "
                 "WHERE message_id = ?", (b"c" * 32,))
    conn.execute("UPDATE conversations SET lamport = 4 WHERE topic = ?", (other,))
    conn.commit()
    conn.close()

    conn = open_store(path)
    assert clock_column(conn, "chat_messages", topic) == {("integer", 3)}
    assert clock_column(conn, "conversations", topic) == {("integer", 3)}
    assert clock_column(conn, "conversations", other) == {("integer", 4)}
    assert clock_column(conn, "chat_messages", other) == {("integer", 4)}
    assert (path.parent / "node.db.v3.bak").exists()
    conn.close()


@given(lamport=st.integers(min_value=-2**70, max_value=2**70),
       sent_at=st.integers(min_value=-2**70, max_value=2**70))
def test_text_integers_in_bounds_round_trip_and_others_are_refused_both_ways(
        lamport: int, sent_at: int) -> None:
    in_bounds = 0 <= lamport <= MAX_INT and 0 <= sent_at <= MAX_SENT_AT
    text = Text(lamport, sent_at, "x")
    if in_bounds:
        assert decode_content(text.encode(), (Text,)) == text
        return
    with pytest.raises(Unsendable):
        text.encode()
    if -2**63 <= lamport < 2**64 and -2**63 <= sent_at < 2**64:  # what msgpack can carry
        raw = msgpack.packb({"t": "text", "lamport": lamport, "sent_at": sent_at,
                             "text": "x", "file": None}, use_bin_type=True)
        with pytest.raises(BadContent):
            decode_content(raw, (Text,))
