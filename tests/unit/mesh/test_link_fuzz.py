"""Hypothesis against Link.receive_data: whatever arrives, the link either carries on
or closes with one of its documented reasons; nothing else escapes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.link import PEER_FAULT_REASONS, Closed, Established, Link, State
from tests.unit.mesh.test_link_helpers import make_node, pump

T0 = 50.0
ALICE, BOB = make_node(), make_node()
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def fresh(state: str) -> Link:
    """A link in the named state, ready to receive."""
    init = Link(ALICE.identity, ALICE.record, initiator=True, now=T0)
    resp = Link(BOB.identity, BOB.record, initiator=False, now=T0)
    if state == "responder_hello":
        return resp
    hello_i = init.data_to_send()
    if state == "initiator_hello":
        return init
    resp.receive_data(hello_i[0], T0)
    hello_r, auth_r = resp.data_to_send()
    if state == "responder_auth":
        return resp
    init.receive_data(hello_r, T0)
    if state == "initiator_auth":
        return init
    init.receive_data(auth_r, T0)
    resp.receive_data(init.data_to_send()[0], T0)
    assert resp.state is State.ESTABLISHED
    return resp


STATES = ["responder_hello", "initiator_hello", "responder_auth", "initiator_auth",
          "established"]


def check_outcome(link: Link, events: list | None = None) -> None:
    events = link.events() if events is None else events
    if link.state is State.CLOSED:
        (closed,) = [e for e in events if isinstance(e, Closed)]
        assert closed.reason in PEER_FAULT_REASONS and not closed.by_peer
        assert len(link.data_to_send()) == 1  # the Close frame


frames = st.one_of(
    st.builds(wire.Hello, st.lists(st.integers(0, 5), max_size=3).map(tuple),
              st.binary(min_size=32, max_size=32)),
    st.builds(wire.Auth, st.binary(max_size=200), st.binary(min_size=64, max_size=64)),
    st.builds(wire.Close, st.sampled_from(["normal", "x"]), st.text(max_size=10)),
    st.builds(wire.Ping, st.binary(max_size=8)),
    st.builds(wire.Graft, st.binary(min_size=16, max_size=16)),
)


@pytest.mark.parametrize("state", STATES)
@FUZZ
@given(data=st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_random_bytes_in_every_state(state, data):
    link = fresh(state)
    link.events()
    for message in data:
        link.receive_data(message, T0)
    check_outcome(link)


@pytest.mark.parametrize("state", STATES)
@FUZZ
@given(frame=frames)
def test_well_formed_but_wrong_frames_in_clear(state, frame):
    link = fresh(state)
    link.events()
    link.receive_data(wire.encode(frame), T0)
    events = link.events()
    if isinstance(frame, wire.Close) and state != "established":
        assert events == [Closed(frame.reason, frame.message, True)]  # clear Close: ok
    else:
        check_outcome(link, events)


@FUZZ
@given(direction=st.sampled_from(["a>b", "b>a"]), index=st.integers(0, 1),
       position=st.integers(0, 10**6), flip=st.integers(1, 255),
       cut=st.booleans())
def test_tampered_handshake_never_authenticates_anyone_wrongly(direction, index, position,
                                                               flip, cut):
    def tamper(d: str, i: int, msg: bytes) -> list[bytes]:
        if d != direction or i != index:
            return [msg]
        if cut:
            return [msg[: position % len(msg)]]
        p = position % len(msg)
        return [msg[:p] + bytes([msg[p] ^ flip]) + msg[p + 1:]]

    a = Link(ALICE.identity, ALICE.record, initiator=True, now=T0)
    b = Link(BOB.identity, BOB.record, initiator=False, now=T0)
    ev_a, ev_b = pump(a, b, T0, tamper=tamper)
    for events, other in ((ev_a, BOB), (ev_b, ALICE)):
        for e in events:
            if isinstance(e, Established):
                assert e.peer == other.record
            if isinstance(e, Closed):
                assert e.reason in PEER_FAULT_REASONS
    assert a.state is State.CLOSED or b.state is State.CLOSED  # every change is caught


@FUZZ
@given(ops=st.lists(st.tuples(st.sampled_from(["deliver", "drop", "dup", "swap", "flip"]),
                              st.integers(0, 3)), max_size=12))
def test_established_links_survive_only_exact_delivery(ops):
    a = Link(ALICE.identity, ALICE.record, initiator=True, now=T0)
    b = Link(BOB.identity, BOB.record, initiator=False, now=T0)
    pump(a, b, T0)
    for i in range(4):
        a.send(wire.Graft(bytes([i]) * 16))
    queue = a.data_to_send()
    delivered: list[bytes] = []
    for op, k in ops:
        if not queue:
            break
        k %= len(queue)
        if op == "deliver":
            delivered.append(queue.pop(0))
        elif op == "drop":
            queue.pop(k)
        elif op == "dup":
            delivered.append(queue[k])
        elif op == "swap" and len(queue) > 1:
            queue[0], queue[-1] = queue[-1], queue[0]
        elif op == "flip":
            queue[k] = queue[k][:-1] + bytes([queue[k][-1] ^ 1])
    for msg in delivered:
        b.receive_data(msg, T0)
    events = b.events()
    received = [e.frame for e in events if not isinstance(e, Closed)]
    # Whatever got through is an in-order prefix of what was sent.
    assert received == [wire.Graft(bytes([i]) * 16) for i in range(len(received))]
    if b.state is State.CLOSED:
        assert events[-1].reason in {"replay", "out_of_order", "decrypt_failed"}
