"""The rules of reactions, replies, edits, deletes, disappearing messages and their
contents: no sockets, no SQLite, no sleeps (time is a parameter)."""

from __future__ import annotations

import msgpack
import pytest

from groups import chat_actions, conversation_clock
from groups.conversation import Conversations
from groups.conversation_events import (
    Changed,
    ChatRow,
    Conversation,
    DeleteText,
    EditText,
    HoldAction,
    RemoveMessage,
    SetReaction,
    SetTimer,
    StoreText,
)
from groups.errors import BadContent, NotFound, PermissionDenied, Unsendable
from groups.messages import (
    MAX_EDITS,
    MAX_TEXT_BYTES,
    Delete,
    Edit,
    Reaction,
    Text,
    Timer,
    decode_content,
)
from mesh.identity import KeyPair

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
TOPIC = b"t" * 16
ALICE, BOB = "111111111111111", "222222222222222"
CONV = Conversation(TOPIC, "group", None, "Club", 0, None, True)
HOUR_MS = 3600 * 1000


def row(sender: str = ALICE, *, topic: bytes = TOPIC, sent_at: int = NOW_MS, edits: int = 0,
        deleted: bool = False, file: bytes | None = None) -> ChatRow:
    return ChatRow(b"m" * 32, topic, sender, 1, NOW_MS, sent_at, "hi", file, False,
                   edits=edits, deleted=deleted)


@pytest.mark.parametrize("emoji", ["👍", "❤️", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "#️⃣", ""])
def test_one_emoji_is_a_reaction(emoji: str) -> None:
    assert chat_actions.check_emoji(emoji)


@pytest.mark.parametrize("emoji", ["a", "ok", " ", "👍 ", "\n", "1", "👍\x00", "é",
                                   "👍" * 9, "\u200d"])
def test_anything_else_is_not(emoji: str) -> None:
    assert not chat_actions.check_emoji(emoji)


def test_who_may_do_what_to_which_message() -> None:
    react, edit = Reaction(b"m" * 32, "👍"), Edit(b"m" * 32, NOW_MS + 1000, "fixed")
    delete = Delete(b"m" * 32, NOW_MS + 1000)
    assert chat_actions.problem(CONV, BOB, None, react) == "unknown_target"
    assert chat_actions.problem(CONV, BOB, row(topic=b"o" * 16), react) == "unknown_target"
    assert chat_actions.problem(CONV, BOB, row(deleted=True), react) == "deleted"
    assert chat_actions.problem(CONV, BOB, row(), react) is None   # anyone reacts
    assert chat_actions.problem(CONV, BOB, row(), Reaction(b"m" * 32, "yes")) == "bad_emoji"
    # Only the author edits or deletes, within 24 hours, at most MAX_EDITS times.
    assert chat_actions.problem(CONV, BOB, row(), edit) == "not_yours"
    assert chat_actions.problem(CONV, BOB, row(), delete) == "not_yours"
    assert chat_actions.problem(CONV, ALICE, row(), edit) is None
    assert chat_actions.problem(CONV, ALICE, row(), delete) is None
    late = row(sent_at=NOW_MS - 24 * HOUR_MS)
    assert chat_actions.problem(CONV, ALICE, late, edit) == "too_late"
    assert chat_actions.problem(CONV, ALICE, late, delete) == "too_late"
    backdated = Edit(b"m" * 32, NOW_MS - 1, "before the message itself")
    assert chat_actions.problem(CONV, ALICE, row(), backdated) == "too_late"
    assert chat_actions.problem(CONV, ALICE, row(edits=MAX_EDITS), edit) == "too_many_edits"
    big = Edit(b"m" * 32, NOW_MS, "x" * (MAX_TEXT_BYTES + 1))
    assert chat_actions.problem(CONV, ALICE, row(), big) == "text_too_long"
    blank = Edit(b"m" * 32, NOW_MS, "  ")
    assert chat_actions.problem(CONV, ALICE, row(), blank) == "empty_message"
    assert chat_actions.problem(CONV, ALICE, row(file=b"f"), blank) is None   # a caption
    assert chat_actions.problem(CONV, ALICE, row(deleted=True), edit) == "deleted"


def test_our_users_requests_get_the_errors_the_api_shows() -> None:
    with pytest.raises(NotFound):
        chat_actions.raise_problem("unknown_target")
    with pytest.raises(PermissionDenied) as denied:
        chat_actions.raise_problem("not_yours")
    assert denied.value.reason == "not_yours"
    with pytest.raises(Unsendable) as bad:
        chat_actions.raise_problem("bad_emoji")
    assert bad.value.reason == "bad_emoji"
    chat_actions.raise_problem(None)


def test_received_actions_become_effects_and_refused_ones_change_nothing() -> None:
    target = row()
    assert chat_actions.receive_action(CONV, BOB, 7, target, Reaction(b"m" * 32, "🎉")) == [
        SetReaction(b"m" * 32, BOB, "🎉", 7), Changed(b"m" * 32)]
    assert chat_actions.receive_action(CONV, ALICE, 8, target,
                                       Edit(b"m" * 32, NOW_MS + 5, "new")) == [
        EditText(b"m" * 32, "new", NOW_MS + 5, 8), Changed(b"m" * 32)]
    assert chat_actions.receive_action(CONV, ALICE, 9, target, Delete(b"m" * 32, NOW_MS)) == [
        DeleteText(b"m" * 32, 9), Changed(b"m" * 32)]
    # Forged: Bob edits or deletes Alice's message; a reaction to a message not here.
    assert chat_actions.receive_action(CONV, BOB, 10, target,
                                       Edit(b"m" * 32, NOW_MS, "forged")) == []
    assert chat_actions.receive_action(CONV, BOB, 11, target, Delete(b"m" * 32, NOW_MS)) == []
    # A target not here (yet) is held in memory, never stored (HeldActions below).
    early = Reaction(b"x" * 32, "👍")
    assert chat_actions.receive_action(CONV, BOB, 12, None, early) == [
        HoldAction(TOPIC, BOB, 12, early)]


def test_held_actions_are_bounded_and_expire() -> None:
    held = chat_actions.HeldActions()
    first = HoldAction(TOPIC, BOB, 1, Reaction(b"x" * 32, "👍"))
    assert held.hold(b"x" * 32, first, NOW)
    assert held.release(b"y" * 32, NOW) == []
    assert held.release(b"x" * 32, NOW) == [first]
    assert held.release(b"x" * 32, NOW) == []            # released once
    held.hold(b"x" * 32, first, NOW)
    assert held.release(b"x" * 32, NOW + chat_actions.HOLD_SECONDS) == []   # expired
    # One member fills its share, the others still have theirs.
    for i in range(chat_actions.HOLD_PER_MEMBER):
        assert held.hold(i.to_bytes(32, "big"), HoldAction(TOPIC, BOB, i, first.action), NOW)
    assert not held.hold(b"z" * 32, first, NOW)
    assert held.hold(b"z" * 32, HoldAction(TOPIC, ALICE, 1, first.action), NOW)
    assert len(held) == chat_actions.HOLD_PER_MEMBER + 1
    held.hold(b"w" * 32, HoldAction(TOPIC, ALICE, 2, first.action),
              NOW + chat_actions.HOLD_SECONDS + 1)       # the others expired meanwhile
    assert len(held) == 1


def test_the_newest_timer_wins_on_every_node() -> None:
    newer = Timer(NOW_MS + 10, NOW_MS, 60)
    effects = chat_actions.receive_timer(CONV, BOB, newer, NOW_MS, NOW_MS, NOW)
    assert SetTimer(TOPIC, 60, NOW_MS + 10, BOB, NOW_MS, True) in effects
    older = chat_actions.receive_timer(CONV, BOB, Timer(NOW_MS - 10, NOW_MS, 5), NOW_MS,
                                       NOW_MS, NOW)
    assert SetTimer(TOPIC, 5, NOW_MS - 10, BOB, NOW_MS, False) in older   # a line only
    # A timer from the far future is bounded like a text's value.
    far = chat_actions.receive_timer(CONV, BOB, Timer(conversation_clock.MAX_ORDER, 0, 5),
                                     0, 0, NOW)
    assert SetTimer(TOPIC, 5, NOW_MS + conversation_clock.MAX_AHEAD_MS, BOB, 0, True) in far
    assert chat_actions.check_timer(0) and chat_actions.check_timer(5)
    assert not chat_actions.check_timer(4) and not chat_actions.check_timer(29 * 86400)


def test_disappearing_messages_count_from_when_they_were_sent() -> None:
    assert chat_actions.expires_at(NOW_MS - 1000, 0, NOW) is None
    assert chat_actions.expires_at(NOW_MS - 1000, 60, NOW) == NOW_MS + 59_000
    assert chat_actions.expires_at(NOW_MS + 10**9, 60, NOW) == NOW_MS + 60_000  # future claim
    soon = ChatRow(b"a" * 32, TOPIC, ALICE, 1, 1, 0, "", None, False, expires_at=NOW_MS)
    later = ChatRow(b"b" * 32, TOPIC, ALICE, 2, 2, 0, "", None, False, expires_at=NOW_MS + 1)
    assert chat_actions.expired([soon, later], NOW) == [RemoveMessage(b"a" * 32, TOPIC)]
    assert chat_actions.expired([soon, later], NOW + 0.001) == [
        RemoveMessage(b"a" * 32, TOPIC), RemoveMessage(b"b" * 32, TOPIC)]
    # A text that arrives after its time is never stored (its receipt is still owed).
    alice = Conversations(KeyPair.generate())
    stale = Text(NOW_MS - 120_000, NOW_MS - 120_000, "gone", None, b"", 60)
    effects = alice.receive_text(CONV, BOB, b"s" * 32, 1, stale, 0, NOW)
    assert not any(isinstance(e, StoreText) for e in effects)
    fresh = Text(NOW_MS, NOW_MS, "here", None, b"r" * 32, 60)
    store = next(e for e in alice.receive_text(CONV, BOB, b"f" * 32, 2, fresh, 0, NOW)
                 if isinstance(e, StoreText))
    assert (store.row.expires_at, store.row.reply_to) == (NOW_MS + 60_000, b"r" * 32)


def test_optional_fields_keep_a_plain_text_as_it_was_and_are_checked() -> None:
    plain = msgpack.unpackb(Text(1, 2, "hi").encode())
    assert set(plain) == {"t", "lamport", "sent_at", "text", "file"}
    reply = Text(1, 2, "hi", None, b"r" * 32, 30)
    assert decode_content(reply.encode(), (Text,)) == reply
    for bad in ({**plain, "reply_to": b""}, {**plain, "reply_to": b"r" * 31},
                {**plain, "expires": 0}, {**plain, "expires": 29 * 86400},
                {**plain, "other": 1}):
        with pytest.raises(BadContent):
            decode_content(msgpack.packb(bad), (Text,))
    with pytest.raises(BadContent):
        decode_content(msgpack.packb({"t": "react", "target": b"m" * 31, "emoji": "👍"}),
                       (Reaction,))
    with pytest.raises(Unsendable):
        Reaction(b"m" * 32, "👍" * 9).encode()   # 36 bytes of emoji
    with pytest.raises(Unsendable):
        Edit(b"m" * 32, 0, "x" * (MAX_TEXT_BYTES + 1)).encode()


def test_a_reply_sorts_after_its_target_and_a_new_member_after_the_history() -> None:
    # Alice's clock runs 4 minutes fast: her message's value is ahead of Bob's wall clock.
    bob = Conversations(KeyPair.generate())
    chat = Conversation(TOPIC, "direct", ALICE, ALICE, 0, None, True)
    ahead = NOW_MS + 4 * 60 * 1000
    received = bob.receive_text(chat, ALICE, b"a" * 32, 1, Text(ahead, ahead, "hi"), 0, NOW)
    clock = next(e.value for e in received if hasattr(e, "value"))
    target = next(e.row for e in received if isinstance(e, StoreText))
    reply = bob.send_text(chat, "re", None, clock, NOW, b"a" * 32, target)
    assert reply.content.lamport > ahead and reply.content.reply_to == b"a" * 32
    # Carol just joined: her clock is 0, yet her first message sorts after everything
    # sent before it by the wall clock.
    carol = Conversations(KeyPair.generate())
    first = carol.send_text(chat, "hello all", None, 0, NOW + 1)
    assert first.content.lamport > NOW_MS
    with pytest.raises(NotFound):
        bob.send_text(chat, "re", None, clock, NOW, b"z" * 32, None)
