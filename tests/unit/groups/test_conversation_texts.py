"""The conversation core's texts, receipts, sender-key policy and outbox pacing: no
sockets, no SQLite, no sleeps (time is a parameter)."""

from __future__ import annotations

import pytest

from groups import conversation_clock
from groups.conversation import Conversations
from groups.conversation_events import (
    Conversation,
    DeliveryState,
    OweReceipt,
    PairwiseKind,
    ReceiptKind,
    RevealDirect,
    RotateSenderKey,
    SetClock,
    SetDelivery,
    StoreText,
)
from groups.conversation_policy import (
    OUTBOX_RETRY,
    RECEIPT_BATCH,
    RECEIPT_STEP,
    OutboxBackoff,
    ReceiptPacer,
    receipt_batches,
)
from groups.errors import NotFound, PermissionDenied, Unsendable
from groups.messages import MAX_TEXT_BYTES, Receipts, SenderKey, Text
from mesh.identity import KeyPair

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
TOPIC = b"t" * 16


def node() -> Conversations:
    return Conversations(KeyPair.generate())


def direct(peer: str, visible: bool = True) -> Conversation:
    return Conversation(TOPIC, "direct", peer, peer, 0, None, visible)


def test_received_text_is_stored_at_its_bounded_value_and_owes_a_receipt() -> None:
    alice, bob = node(), node()
    effects = alice.receive_text(direct(bob.me), bob.me, b"m" * 32, 3,
                                 Text(NOW_MS - 5, NOW_MS, "hi"), 7, NOW)
    store = next(e for e in effects if isinstance(e, StoreText))
    assert (store.row.lamport, store.row.seq, store.row.text) == (NOW_MS - 5, 3, "hi")
    assert SetClock(TOPIC, NOW_MS - 5) in effects
    assert effects[-1] == OweReceipt(b"m" * 32, TOPIC, ReceiptKind.DELIVERED)
    far = alice.receive_text(direct(bob.me), bob.me, b"n" * 32, 4,
                             Text(conversation_clock.MAX_ORDER, NOW_MS, "from the future"),
                             NOW_MS, NOW)
    bound = NOW_MS + conversation_clock.MAX_AHEAD_MS
    assert next(e for e in far if isinstance(e, StoreText)).row.lamport == bound
    assert SetClock(TOPIC, bound) in far


def test_first_text_on_a_hidden_direct_topic_reveals_the_chat() -> None:
    alice, bob = node(), node()
    hidden = alice.receive_text(direct(bob.me, visible=False), bob.me, b"m" * 32, 1,
                                Text(1, 0, "hello"), 0, NOW)
    assert hidden[0] == RevealDirect(bob.me)
    shown = alice.receive_text(direct(bob.me), bob.me, b"m" * 32, 1, Text(1, 0, "x"), 0, NOW)
    assert not any(isinstance(e, RevealDirect) for e in shown)


def test_send_text_ticks_the_clock_and_names_the_recipients() -> None:
    alice, bob = node(), node()
    out = alice.send_text(direct(bob.me), "hi", None, NOW_MS + 10, NOW)
    assert out.content.lamport == NOW_MS + 11 and out.content.sent_at == NOW_MS
    assert out.recipients == (bob.me,)
    assert out.effects == (SetClock(TOPIC, NOW_MS + 11), RevealDirect(bob.me))
    topic, _ = alice.create("Club", NOW)
    group = Conversation(topic, "group", None, "Club", 0, None, True)
    assert alice.send_text(group, "to nobody yet", None, 0, NOW).recipients == ()


@pytest.mark.parametrize(("text", "conv", "error", "reason"), [
    ("x" * (MAX_TEXT_BYTES + 1), True, Unsendable, "text_too_long"),
    ("   ", True, Unsendable, "empty_message"),
    ("hi", False, NotFound, None),
])
def test_send_text_refuses_before_anything_happens(text, conv, error, reason) -> None:
    alice = node()
    with pytest.raises(error) as info:
        alice.send_text(direct("123456789012345") if conv else None, text, None, 0, NOW)
    if reason is not None:
        assert info.value.reason == reason


def test_sending_to_a_group_we_left_is_refused() -> None:
    alice = node()
    left = Conversation(TOPIC, "group", None, "Club", 0, 5, True)
    with pytest.raises(PermissionDenied) as info:
        alice.send_text(left, "hi", None, 0, NOW)
    assert info.value.reason == "not_member"


def test_receipts_confirm_only_our_messages_and_acks_move_pending_only() -> None:
    alice, bob = node(), node()
    ours, theirs = b"o" * 32, b"x" * 32
    effects = alice.receive_receipts(TOPIC, bob.me, Receipts((ours, theirs), (ours,)),
                                     frozenset({ours}))
    assert effects == [SetDelivery(ours, bob.me, DeliveryState.DELIVERED),
                       SetDelivery(ours, bob.me, DeliveryState.READ)]
    acked = Conversations.hop_acked(ours, {"a": DeliveryState.PENDING,
                                           "b": DeliveryState.DELIVERED})
    assert acked == [SetDelivery(ours, "a", DeliveryState.SENT)]
    assert DeliveryState.READ.rank > DeliveryState.SENT.rank > DeliveryState.FAILED.rank


def test_a_key_due_by_age_or_use_is_rotated_and_shared_first() -> None:
    alice = node()
    topic, _ = alice.create("Club", NOW)
    assert alice.seal(topic, key_due=False) == []
    assert alice.seal(topic, key_due=True) == [RotateSenderKey(topic)]  # nobody to share with


def test_a_sender_key_queued_for_a_member_removed_since_does_not_go_out() -> None:
    alice = node()
    topic, _ = alice.create("Club", NOW)
    assert not alice.pairwise_due(PairwiseKind.SENDER_KEY, topic, "123456789012345")
    assert alice.pairwise_due(PairwiseKind.SENDER_KEY, topic, alice.me)
    assert alice.pairwise_due(PairwiseKind.OPS, topic, "123456789012345")


def test_a_sender_key_is_kept_before_its_group_is_known_and_resyncs_after() -> None:
    alice, bob = node(), node()
    early = alice.receive_sender_key(bob.me, SenderKey(TOPIC, b"k"))
    assert [type(e).__name__ for e in early] == ["AcceptSenderKey"]
    topic, _ = alice.create("Club", NOW)
    later = alice.receive_sender_key(bob.me, SenderKey(topic, b"k"))
    assert [type(e).__name__ for e in later] == ["AcceptSenderKey", "Resync"]


def test_receipts_go_at_once_after_a_quiet_spell_and_in_batches_under_load() -> None:
    pacer = ReceiptPacer()
    assert pacer.wait(100.0) == 0.0
    pacer.started(100.0)
    pacer.finished(1)
    assert pacer.wait(100.0) == pytest.approx(RECEIPT_STEP)
    pacer.started(100.0)
    pacer.finished(10_000)
    assert pacer.wait(100.0) == pytest.approx(RECEIPT_BATCH)
    assert pacer.wait(100.0 + 2 * RECEIPT_BATCH) == 0.0


def test_outbox_backs_off_while_something_waits_and_resets_when_all_went() -> None:
    backoff = OutboxBackoff()
    waits = [backoff.after_pass(pending=True) for _ in range(8)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff.after_pass(pending=False) is None
    assert backoff.after_pass(pending=True) == OUTBOX_RETRY[0]


def test_receipts_are_split_into_contents_a_receiver_accepts() -> None:
    ids = [bytes([i % 256]) * 32 for i in range(600)]
    batches = receipt_batches(ids, ids[:10])
    assert [len(b.delivered) for b in batches] == [256, 256, 88]
    assert [len(b.read) for b in batches] == [10, 0, 0]
    for batch in batches:  # each encodes (Content.encode checks it as a receiver would)
        batch.encode()
