"""The hole-punching exchange (mesh.holepunch.PunchCore), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.holepunch import MAX_ATTEMPTS, Dial, Failed, PunchCore, Send, parse_address

A, B = ("203.0.113.1:8472",), ("203.0.113.2:8472",)


def test_connect_connect_sync_then_both_dial_with_the_initiator_half_an_rtt_later():
    init, resp = PunchCore(initiator=True, ours=A), PunchCore(initiator=False, ours=B)
    (send,) = init.start(10.0)
    assert send == Send(wire.Punch("connect", A))
    (answer,) = resp.receive(send.frame, 10.05)
    assert answer == Send(wire.Punch("connect", B))
    sync, dial = init.receive(answer.frame, 10.2)
    assert sync == Send(wire.Punch("sync", ()))
    assert dial == Dial((("203.0.113.2", 8472),), pytest.approx(10.3))
    assert init.rtt == pytest.approx(0.2)
    assert resp.receive(sync.frame, 10.3) == [Dial((("203.0.113.1", 8472),), 10.3)]
    init.connected()
    assert init.receive(answer.frame, 11.0) == []  # done: nothing more


def test_failed_rounds_retry_then_give_up():
    init, resp = PunchCore(initiator=True, ours=A), PunchCore(initiator=False, ours=B)
    now = 0.0
    actions = init.start(now)
    for _ in range(MAX_ATTEMPTS):
        (answer,) = resp.receive(actions[0].frame, now)
        sync, _dial = init.receive(answer.frame, now)
        resp.receive(sync.frame, now)
        assert resp.dial_failed(now) == []
        actions = init.dial_failed(now)
    assert actions == [Failed("attempts_exhausted")]


@pytest.mark.parametrize("addrs", [(), ("nonsense",), ("127.0.0.1:80",), ("1.2.3.4:0",),
                                   ("224.0.0.1:5",), ("[::]:5",), ("1.2.3.4:99999",)])
def test_a_connect_with_bad_addresses_fails_without_dialling(addrs):
    resp = PunchCore(initiator=False, ours=B)
    (failed,) = resp.receive(wire.Punch("connect", addrs), 0.0)
    assert isinstance(failed, Failed)
    assert resp.receive(wire.Punch("sync", ()), 0.0) == []


def test_unexpected_frames_fail():
    resp = PunchCore(initiator=False, ours=B)
    assert isinstance(resp.receive(wire.Punch("sync", ()), 0.0)[0], Failed)
    init = PunchCore(initiator=True, ours=A)
    assert isinstance(init.receive(wire.Punch("bogus", ()), 0.0)[0], Failed)


def test_addresses():
    assert parse_address("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert parse_address("198.51.100.3:1") == ("198.51.100.3", 1)


@given(st.lists(st.tuples(st.sampled_from(["connect", "sync", "x", ""]),
                          st.lists(st.text(max_size=30), max_size=4)), max_size=8),
       st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_sequence_of_punch_frames_ends_in_actions_not_exceptions(frames, initiator):
    core = PunchCore(initiator=initiator, ours=A)
    core.start(0.0)
    for i, (kind, addrs) in enumerate(frames):
        for action in core.receive(wire.Punch(kind, tuple(addrs)), float(i)):
            assert isinstance(action, Send | Dial | Failed)
            if isinstance(action, Dial):
                assert all(parse_address(f"{h}:{p}") for h, p in action.addrs)
