"""LinkConnection over mesh.transport's in-memory pipe: real links (handshake, sealed
frames, close) on the running loop, with no socket and no sleep."""

from __future__ import annotations

import pytest

from mesh import wire
from mesh.errors import LinkError
from mesh.transport import LinkConnection, memory_pipe
from tests.unit.mesh.test_link_helpers import Node, Recorder, make_node


def pair(a: Node, b: Node, **options: object) -> tuple[LinkConnection, LinkConnection,
                                                      Recorder, Recorder]:
    rec_a, rec_b = Recorder(), Recorder()
    ca = LinkConnection(a.identity, a.record, initiator=True, expected_peer=b.user_id,
                        **rec_a.kwargs(), **options)  # type: ignore[arg-type]
    cb = LinkConnection(b.identity, b.record, initiator=False,
                        **rec_b.kwargs(), **options)  # type: ignore[arg-type]
    return ca, cb, rec_a, rec_b


async def test_a_link_over_the_memory_pipe_carries_frames_in_order_and_closes() -> None:
    alice, bob = make_node(), make_node()
    ca, cb, rec_a, rec_b = pair(alice, bob)
    ta, _ = memory_pipe(ca, cb)
    assert await ca.wait_established() == bob.record
    assert await cb.wait_established() == alice.record
    frames = [wire.Prune(bytes([i]) * 16) for i in range(20)]
    for frame in frames:
        ca.send(frame)
    await rec_b.until(lambda: len(rec_b.frames) == 20)
    assert [f for _, f in rec_b.frames] == frames
    ca.close("normal")
    await rec_b.until(lambda: bool(rec_b.closed))
    assert rec_b.closed[0][1].by_peer and rec_b.closed[0][1].reason == "normal"
    await ca.wait_closed()
    await cb.wait_closed()
    assert not ta.open and rec_a.closed[0][1].reason == "normal"


async def test_an_aborted_pipe_ends_both_links_as_lost() -> None:
    alice, bob = make_node(), make_node()
    ca, cb, _, rec_b = pair(alice, bob)
    ta, tb = memory_pipe(ca, cb)
    await ca.wait_established()
    tb.abort()
    await rec_b.until(lambda: bool(rec_b.closed))
    assert rec_b.closed[0][1].reason == "connection_lost"
    await ca.wait_closed()
    assert ca.closed and ca.close_reason == "connection_lost"
    with pytest.raises(ConnectionError):
        ta.write(b"late")


async def test_the_wrong_peer_is_refused_during_the_handshake() -> None:
    alice, bob, mallory = make_node(), make_node(), make_node()
    ca, _, _, _ = pair(alice, bob)
    cm = LinkConnection(mallory.identity, mallory.record, initiator=False)
    memory_pipe(ca, cm)
    with pytest.raises(LinkError) as info:
        await ca.wait_established()
    assert info.value.reason == "wrong_peer"
    await cm.wait_closed()
