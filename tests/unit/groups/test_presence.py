"""Typing and presence signals (groups/presence.py): what is sent, to whom, how often,
and what is believed from whom. Time is a parameter; nothing sleeps."""

from __future__ import annotations

import pytest

from groups.presence import BURST, TYPING_EVERY, TYPING_TTL, Online, Presence, Typing
from mesh import wire
from mesh.errors import FrameError

TOPIC = bytes(range(16))


def member() -> bool:
    return True


def stranger() -> bool:
    return False

ALICE, BOB = "111111111111111", "222222222222222"


def typing(on: bool, topic: bytes = TOPIC) -> wire.Signal:
    return wire.Signal(topic, "typing", on)


def online(on: bool) -> wire.Signal:
    return wire.Signal(b"", "online", on)


def test_typing_is_sent_at_most_every_few_seconds_and_stopped_once() -> None:
    p = Presence()
    sent = p.typing(TOPIC, [ALICE, BOB], True, 100.0)
    assert [(s.peer, s.frame) for s in sent] == [(ALICE, typing(True)), (BOB, typing(True))]
    assert p.typing(TOPIC, [ALICE], True, 100.0 + TYPING_EVERY - 0.1) == []
    assert len(p.typing(TOPIC, [ALICE], True, 100.0 + TYPING_EVERY)) == 1
    assert [s.frame for s in p.typing(TOPIC, [ALICE], False, 104.0)] == [typing(False)]
    assert p.typing(TOPIC, [ALICE], False, 105.0) == []  # nothing to stop


def test_received_typing_shows_until_it_expires_or_stops() -> None:
    p = Presence()
    assert p.receive(ALICE, typing(True), member, 10.0) == Typing(TOPIC, ALICE, True)
    assert p.receive(ALICE, typing(True), member, 11.0) is None  # a repeat: no new event
    assert p.typing_in(TOPIC, 11.0 + TYPING_TTL - 0.1) == [ALICE]
    assert p.typing_in(TOPIC, 11.0 + TYPING_TTL) == []
    p.receive(BOB, typing(True), member, 20.0)
    assert p.receive(BOB, typing(False), member, 21.0) == Typing(TOPIC, BOB, False)
    assert p.typing_in(TOPIC, 21.0) == []


def test_presence_online_last_seen_and_closed_links() -> None:
    p = Presence()
    assert [s.frame for s in p.linked(ALICE)] == [online(True)]
    assert p.status(ALICE, linked=False) == {"online": False, "last_seen": None}
    assert p.receive(ALICE, online(True), member, 50.0) == Online(ALICE, True, 50.0)
    assert p.status(ALICE, linked=True) == {"online": True, "last_seen": 50_000}
    p.receive(ALICE, typing(True), member, 51.0)
    assert p.unlinked(ALICE, 60.0) == Online(ALICE, False, 60.0)
    assert p.unlinked(ALICE, 61.0) is None
    assert p.typing_in(TOPIC, 52.0) == []  # no link, no typing
    assert p.status(ALICE, linked=False) == {"online": False, "last_seen": 51_000}


def test_coming_online_is_answered_once() -> None:
    """Bob's node dropped Alice's first "online" (it did not know her as a member yet);
    when Bob's reaches her, she answers, and the answer is not answered again."""
    alice, bob = Presence(), Presence()
    dropped = bob.receive(ALICE, online(True), stranger, 1.0)
    assert dropped is None and bob.answer(dropped) == []
    event = alice.receive(BOB, online(True), member, 2.0)
    reply = alice.answer(event)
    assert [(s.peer, s.frame) for s in reply] == [(BOB, online(True))]
    back = bob.receive(ALICE, reply[0].frame, member, 2.1)
    assert back == Online(ALICE, True, 2.1)
    assert [s.peer for s in bob.answer(back)] == [ALICE]
    assert alice.answer(alice.receive(BOB, online(True), member, 2.2)) == []  # no change
    assert alice.answer(alice.receive(BOB, typing(True), member, 2.3)) == []


def test_signals_from_whom_they_are_not_for_or_malformed_are_dropped() -> None:
    p = Presence()
    assert p.receive(ALICE, typing(True), stranger, 1.0) is None  # not a member there
    assert p.receive(ALICE, online(True), stranger, 1.0) is None  # not a contact
    assert p.receive(ALICE, wire.Signal(TOPIC, "shout", True), member, 1.0) is None
    assert p.receive(ALICE, typing(True, b""), member, 1.0) is None   # typing where?
    assert p.receive(ALICE, wire.Signal(TOPIC, "online", True), member, 1.0) is None
    assert p.dropped == 5
    assert p.typing_in(TOPIC, 1.0) == [] and p.status(ALICE, True)["last_seen"] is None


def test_a_flood_is_cut_to_the_rate_before_anything_is_looked_up() -> None:
    p = Presence()
    lookups = []

    def allowed() -> bool:
        lookups.append(1)
        return True

    for i in range(100):
        p.receive(ALICE, typing(i % 2 == 0), allowed, 5.0)
    assert p.dropped == 100 - BURST and len(lookups) == BURST
    p.receive(ALICE, typing(True), allowed, 6.0)  # a second later: some budget again
    assert p.dropped == 100 - BURST
    p.forget([BOB])  # Alice's link went: her rate state goes too
    for _ in range(int(BURST)):
        p.receive(ALICE, typing(True), allowed, 6.0)
    assert p.dropped == 100 - BURST


def test_opting_out_sends_nothing_and_shows_nothing() -> None:
    p = Presence()
    p.receive(ALICE, online(True), member, 1.0)
    assert [(s.peer, s.frame) for s in p.set_share(False, [ALICE])] == [(ALICE, online(False))]
    assert p.typing(TOPIC, [ALICE], True, 2.0) == [] and p.linked(ALICE) == []
    assert p.receive(ALICE, typing(True), member, 3.0) is None
    assert p.status(ALICE, linked=True) == {"online": None, "last_seen": None}
    assert p.set_share(False, [ALICE]) == []
    assert [s.frame for s in p.set_share(True, [ALICE, BOB])] == [online(True)] * 2


def test_the_signal_frame_is_strict() -> None:
    frame = wire.Signal(TOPIC, "typing", True)
    assert wire.decode(wire.encode(frame)) == frame
    for bad in (wire.Signal(bytes(33), "typing", True), wire.Signal(TOPIC, "t" * 17, True)):
        with pytest.raises(FrameError):
            wire.decode(wire.encode(bad))
