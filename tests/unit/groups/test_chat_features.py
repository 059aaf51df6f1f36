"""Chat features between real messengers (real SQLite, real crypto) on the in-memory
bus: reactions, replies, edits, deletes, forged ones refused with nothing stored,
search, disappearing messages, paging and read marks."""

from __future__ import annotations

import pytest

from groups import history
from groups.errors import NotFound, PermissionDenied, Unsendable
from groups.messages import Delete, Edit, Reaction
from groups.messenger import Messenger
from groups.store import atomic
from tests.unit.groups.bus import club
from tests.unit.groups.helpers import NOW


@pytest.fixture
def group():
    return club()


class Recorder:
    """The UI's event sink, as a list."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def publish(self, event_type: str, data: dict) -> None:
        self.events.append((event_type, data))


def forge(node: Messenger, topic: bytes, content: Reaction | Edit | Delete) -> None:
    """Send a content the node's own checks would refuse (a modified client)."""
    with atomic(node.conn):
        node._publish(history.conversation(node.conn, topic), content.encode())
    node.io.flush()


def rows(node: Messenger, table: str) -> int:
    return node.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def shown(node: Messenger, topic: bytes, message_id: bytes) -> dict:
    return next(m for m in node.messages(topic) if m["message_id"] == message_id.hex())


def set_clock(node: Messenger, now: float) -> None:
    node.clock = node.io.clock = lambda: now


def test_reactions_one_per_member_changeable_and_removable(group) -> None:
    topic, nodes, (alice, bob, carol, _) = group
    a, b, c = nodes[alice.id], nodes[bob.id], nodes[carol.id]
    mid = a.send_text(topic, "lunch?")
    b.react(topic, mid, "👍")
    c.react(topic, mid, "👍")
    for node in (a, b, c):
        assert shown(node, topic, mid)["reactions"] == {"👍": sorted([bob.id, carol.id])}
    b.react(topic, mid, "🎉")
    c.react(topic, mid, "")
    for node in (a, b, c):
        assert shown(node, topic, mid)["reactions"] == {"🎉": [bob.id]}


def test_reactions_edits_and_deletes_our_user_may_not_send_are_refused(group) -> None:
    topic, nodes, (alice, bob, _, _) = group
    a, b = nodes[alice.id], nodes[bob.id]
    mid = a.send_text(topic, "mine")
    sent = history.conversation(b.conn, topic)
    seq_before = b.conn.execute("SELECT own_seq FROM conversations WHERE topic = ?",
                                (topic,)).fetchone()[0]
    with pytest.raises(NotFound):
        b.react(topic, b"x" * 32, "👍")
    with pytest.raises(Unsendable):
        b.react(topic, mid, "x" * 33)
    with pytest.raises(PermissionDenied) as denied:
        b.edit(topic, mid, "not yours")
    assert denied.value.reason == "not_yours"
    with pytest.raises(PermissionDenied):
        b.delete(topic, mid)
    with pytest.raises(NotFound):
        b.send_text(topic, "re: nothing", reply_to=b"x" * 32)
    # Nothing was sent or stored.
    assert history.conversation(b.conn, topic) == sent
    assert b.conn.execute("SELECT own_seq FROM conversations WHERE topic = ?",
                          (topic,)).fetchone()[0] == seq_before
    assert rows(b, "reactions") == 0 and shown(b, topic, mid)["text"] == "mine"


def test_forged_edits_deletes_and_reactions_to_unknown_messages_change_nothing(group) -> None:
    topic, nodes, (alice, bob, carol, _) = group
    a, b, c = nodes[alice.id], nodes[bob.id], nodes[carol.id]
    mid = a.send_text(topic, "the plan")
    forge(b, topic, Edit(mid, int(NOW * 1000), "forged plan"))
    forge(b, topic, Delete(mid, int(NOW * 1000)))
    forge(b, topic, Reaction(b"x" * 32, "👍"))
    forge(b, topic, Reaction(mid, "not an emoji"))
    for node in (a, c):
        message = shown(node, topic, mid)
        assert (message["text"], message["deleted"], message["edited_at"]) == (
            "the plan", False, None)
        assert rows(node, "reactions") == 0
        assert [r["message"]["text"] for r in search(node, "plan")] == ["the plan"]


def test_a_reaction_that_comes_before_its_message_is_applied_when_it_arrives(group) -> None:
    topic, nodes, (alice, bob, carol, _) = group
    a, b, c = nodes[alice.id], nodes[bob.id], nodes[carol.id]
    bus = next(iter(nodes.values())).mesh.bus
    away = bus.topics[carol.id].pop(topic)               # carol is offline...
    mid = a.send_text(topic, "cake?")
    bus.topics[carol.id][topic] = away
    b.react(topic, mid, "🎂")                             # ...and hears bob first
    assert rows(c, "reactions") == 0 and len(c.io.held) == 1
    late = a.mailbox.get(mid)
    c.validate(late)
    assert c.commit(late)
    assert shown(c, topic, mid)["reactions"] == {"🎂": [bob.id]}
    assert len(c.io.held) == 0


def search(node: Messenger, query: str) -> list[dict]:
    topics = [c.topic for c in history.conversations(node.conn)]
    return [{"message": node.describe(row), "snippet": snippet}
            for row, snippet in history.search(node.conn, query.split(), topics, 50)]


def test_edit_and_delete_for_everyone_within_the_limits(group) -> None:
    topic, nodes, (alice, bob, carol, _) = group
    a, b, c = nodes[alice.id], nodes[bob.id], nodes[carol.id]
    mid = a.send_text(topic, "meet at noon")
    b.react(topic, mid, "👍")
    a.edit(topic, mid, "meet at one")
    for node in (a, b, c):
        message = shown(node, topic, mid)
        assert message["text"] == "meet at one" and message["edited_at"] == int(NOW * 1000)
        assert [r["message"]["message_id"] for r in search(node, "one")] == [mid.hex()]
        assert search(node, "noon") == []
    a.delete(topic, mid)
    for node in (a, b, c):
        message = shown(node, topic, mid)
        assert (message["text"], message["deleted"], message["reactions"]) == ("", True, {})
        assert search(node, "meet") == []
    with pytest.raises(PermissionDenied):
        a.edit(topic, mid, "back")
    # 24 hours later, a message can no longer be edited or deleted for everyone.
    old = a.send_text(topic, "old news")
    set_clock(a, NOW + 24 * 3600 + 1)
    with pytest.raises(PermissionDenied) as late:
        a.edit(topic, old, "new news")
    assert late.value.reason == "too_late"
    with pytest.raises(PermissionDenied):
        a.delete(topic, old)


def test_replies_quote_their_original_or_say_it_is_not_available(group) -> None:
    topic, nodes, (alice, bob, carol, _) = group
    a, b, c = nodes[alice.id], nodes[bob.id], nodes[carol.id]
    original = a.send_text(topic, "who brings the cake?")
    reply = b.send_text(topic, "me!", reply_to=original)
    for node in (a, b, c):
        assert shown(node, topic, reply)["reply_to"] == {
            "message_id": original.hex(), "available": True, "sender": alice.id,
            "text": "who brings the cake?", "file_name": None}
    seen = Recorder()
    c.io.events = seen
    a.delete(topic, original)
    assert shown(c, topic, reply)["reply_to"] == {"message_id": original.hex(),
                                                  "available": False}
    # Carol's app is told of both: the tombstone and the reply whose quote changed.
    changed = [d for t, d in seen.events if t == "message_changed"]
    assert [d["message_id"] for d in changed] == [original.hex(), reply.hex()]
    assert changed[1]["reply_to"]["available"] is False


def test_disappearing_messages_go_on_every_node_with_their_index(group) -> None:
    topic, nodes, (alice, bob, carol, _) = group
    a, b, c = nodes[alice.id], nodes[bob.id], nodes[carol.id]
    kept = a.send_text(topic, "before the timer")
    b.set_timer(topic, 60)
    for node in (a, b, c):
        assert history.conversation(node.conn, topic).timer == 60
    gone = c.send_text(topic, "secret")
    a.react(topic, gone, "🤫")
    for node in (a, b, c):
        assert shown(node, topic, gone)["expires_at"] == int(NOW * 1000) + 60_000
        assert node.sweep_expired() == 0
        set_clock(node, NOW + 60)
        assert node.sweep_expired() == 1
        ids = [m["message_id"] for m in node.messages(topic)]
        assert ids == [kept.hex()]
        assert search(node, "secret") == [] and rows(node, "reactions") == 0
    # Off again: later messages stay. Every change is kept for the chat's lines.
    a.set_timer(topic, 0)
    assert history.conversation(c.conn, topic).timer == 0
    assert [(t["by"], t["seconds"]) for t in history.timer_changes(c.conn, topic)] == [
        (bob.id, 60), (alice.id, 0)]
    with pytest.raises(Unsendable):
        a.set_timer(topic, 3)


def test_pages_by_cursor_lose_nothing_and_read_marks_stop_at_their_message(group) -> None:
    topic, nodes, (alice, bob, _, _) = group
    a, b = nodes[alice.id], nodes[bob.id]
    sent = [a.send_text(topic, f"m{i}") for i in range(12)]
    seen, before = [], None
    while True:
        page, before = b.page(topic, 5, before and history.parse_cursor(before))
        seen = [m["text"] for m in page] + seen
        if before is None:
            break
    assert seen == [f"m{i}" for i in range(12)]
    assert b.mark_read(topic, sent[4]) == 5
    assert history.unread_count(b.conn, topic, bob.id) == 7
    b.set_muted(topic, True)
    assert history.conversation(b.conn, topic).muted


def test_search_takes_any_words_as_words(group) -> None:
    topic, nodes, (alice, _, _, _) = group
    a = nodes[alice.id]
    a.send_text(topic, "Crème brûlée OR pie? \"quoted\" NEAR(x) -minus *star*")
    for query in ('"', "*", "NEAR(", "OR", "-minus", "creme brulee", "quot", "star*", "^"):
        found = search(a, query)
        assert len(found) <= 1, query
    assert len(search(a, "creme BRULEE")) == 1   # case and accents do not matter
    assert search(a, "creme cake") == []          # every word must match
