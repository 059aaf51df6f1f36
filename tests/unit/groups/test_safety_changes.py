"""Stored "safety number changed" lines (groups/safety_changes.py): one per conversation
and changed key, placed by the conversation's clock, at most MAX_PER_CONVERSATION each;
and the messenger writing them when a peer's prekey message shows another key."""

from __future__ import annotations

import asyncio

from groups import history, safety_changes
from groups import store as key_store
from groups.directory import NoDiscovery
from groups.safety_changes import MAX_PER_CONVERSATION
from groups.store import atomic, open_store
from mesh.identity import KeyPair
from tests.unit.groups.bus import club
from tests.unit.groups.helpers import NOW

BOB = "123456789012345"
GROUP, CHAT, OTHER = b"g" * 32, b"d" * 32, b"o" * 32


def store_with_conversations():
    conn = open_store(":memory:")
    with atomic(conn):
        history.add_conversation(conn, GROUP, "group", "Crew", NOW)
        history.add_conversation(conn, CHAT, "direct", "", NOW, peer=BOB)
        history.add_conversation(conn, OTHER, "group", "Other", NOW)
        history.set_order_clock(conn, GROUP, int(NOW * 1000) + 5_000)  # a message from ahead
    return conn


def test_a_changed_key_is_one_line_per_conversation_after_what_was_there() -> None:
    conn = store_with_conversations()
    with atomic(conn):
        written = safety_changes.record(conn, [GROUP, CHAT], BOB, b"key-2", NOW)
    assert [(w.conversation, w.user, w.at) for w in written] == [
        (GROUP.hex(), BOB, int(NOW * 1000)), (CHAT.hex(), BOB, int(NOW * 1000))]
    # After the newest message held (the clock), which moves on as for a message we send.
    assert written[0].order == int(NOW * 1000) + 5_001 == history.order_clock(conn, GROUP)
    assert written[1].order == int(NOW * 1000) == history.order_clock(conn, CHAT)
    assert safety_changes.changes(conn, GROUP) == [written[0]]
    assert safety_changes.changes(conn, OTHER) == []
    # The same key seen again (every later message of that peer) adds nothing.
    with atomic(conn):
        assert safety_changes.record(conn, [GROUP, CHAT], BOB, b"key-2", NOW + 1) == []
    assert len(safety_changes.changes(conn, CHAT)) == 1
    conn.close()


def test_a_flapping_key_keeps_only_the_newest_lines(tmp_path) -> None:
    path = tmp_path / "node.db"
    conn = open_store(path)
    with atomic(conn):
        history.add_conversation(conn, GROUP, "group", "Crew", NOW)
        history.add_conversation(conn, OTHER, "group", "Other", NOW)
        safety_changes.record(conn, [OTHER], BOB, b"key-0", NOW)
    for i in range(MAX_PER_CONVERSATION + 20):
        with atomic(conn):
            safety_changes.record(conn, [GROUP], BOB, b"key-%d" % (i % 2), NOW + i)
    conn.close()
    conn = open_store(path)  # kept across a restart
    kept = safety_changes.changes(conn, GROUP)
    assert len(kept) == MAX_PER_CONVERSATION
    assert [k.at for k in kept] == [int((NOW + i) * 1000) for i in range(20, 70)]
    assert [k.order for k in kept] == sorted(k.order for k in kept)
    assert len(safety_changes.changes(conn, OTHER)) == 1  # the cap is per conversation
    conn.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def publish(self, event_type: str, data: dict) -> None:
        self.events.append((event_type, data))


def test_messenger_stores_a_line_where_the_changed_member_is() -> None:
    group_id, nodes, (alice, bob, _carol, mallory) = club()
    a, b = nodes[alice.id], nodes[bob.id]
    a.send_text(group_id, "before the change")
    before = a.messages(group_id)[-1]["lamport"]
    # As if alice had trusted another key under bob's ID (docs/protocol.md §7): bob's
    # next prekey message to her shows his real key, which she must not take silently.
    with atomic(alice.conn):
        key_store.save_identity(alice.conn, bob.id, KeyPair.generate().public, NOW)
    bob.crypto.start_session(alice.record(), alice.prekey(), now=NOW)
    a.events = Recorder()
    direct = a.open_direct(bob.id, visible=False)  # as for any peer linked to her node
    b.send_text(b.open_direct(alice.id, visible=True), "hi alice")
    b.send_text(direct, "again")
    lines = safety_changes.changes(alice.conn, group_id)
    assert [(line.user, line.order > before) for line in lines] == [(bob.id, True)]
    in_chat = safety_changes.changes(alice.conn, direct)
    assert [line.user for line in in_chat] == [bob.id]
    changed = [data for kind, data in a.events.events if kind == "identity_changed"]
    assert changed[0]["user_id"] == bob.id
    assert sorted(changed[0]["changes"], key=lambda c: c["conversation"]) == sorted(
        (line.to_json() for line in lines + in_chat), key=lambda c: c["conversation"])
    assert changed[1:] == [{"user_id": bob.id, "changes": []}]  # noted once
    assert safety_changes.changes(mallory.conn, group_id) == []


def test_a_new_session_under_another_key_is_noted_once_by_the_outbox() -> None:
    group_id, nodes, (alice, bob, _carol, _mallory) = club()
    a = nodes[alice.id]
    a.directory.lookup = NoDiscovery()  # the session starts from bob's record we hold
    with atomic(alice.conn):
        key_store.save_identity(alice.conn, bob.id, KeyPair.generate().public, NOW)
        key_store.delete_session(alice.conn, bob.id, 1)
    owed = [row for row in history.owed_pairwise(alice.conn) if row[1] == bob.id]
    assert owed  # her sender key, for bob
    a.events = Recorder()
    assert asyncio.run(a._send_outbox()) is True  # it waits: bob's key must be compared
    assert asyncio.run(a._send_outbox()) is True
    lines = safety_changes.changes(alice.conn, group_id)
    assert [line.user for line in lines] == [bob.id]
    assert a.events.events == [("identity_changed", {"user_id": bob.id,
                                                     "changes": [lines[0].to_json()]})]
    assert [row for row in history.owed_pairwise(alice.conn) if row[1] == bob.id] == owed
