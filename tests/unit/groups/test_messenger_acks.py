"""Issue 13: a peer's ack of our message ('sent') costs no commit of its own: it is
written with the next transaction of received messages, or after ACK_WRITE_DELAY, or
when the node closes its database."""

from __future__ import annotations

import asyncio

import pytest

from groups import history, messenger
from tests.unit.groups.bus import club


def states(node: messenger.Messenger, msg_id: bytes) -> dict[str, str]:
    return {m: s["state"] for m, s in history.deliveries(node.conn, msg_id).items()}


async def test_an_ack_is_written_with_the_next_transaction() -> None:
    group, nodes, (alice, bob, carol, _) = club()
    a = nodes[alice.id]
    ours = a.send_text(group, "hello")
    assert set(states(a, ours).values()) == {"pending"}
    a.acked(group, ours, bob.id)
    a.acked(group, b"\x00" * 32, bob.id)  # not a message of ours: ignored
    assert set(states(a, ours).values()) == {"pending"}  # not written yet
    with a.transaction():  # what mesh.runtime opens for received messages
        pass
    assert states(a, ours) == {bob.id: "sent", carol.id: "sent"}
    assert a._acked_timer is None  # written: nothing left for the timer


async def test_an_ack_is_written_after_the_delay_without_a_transaction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messenger, "ACK_WRITE_DELAY", 0.0)
    group, nodes, (alice, bob, _, _) = club()
    a = nodes[alice.id]
    ours = a.send_text(group, "hello")
    a.acked(group, ours, bob.id)
    for _ in range(3):  # a zero delay runs within the next loop passes
        if set(states(a, ours).values()) == {"sent"}:
            break
        await asyncio.sleep(0)
    assert set(states(a, ours).values()) == {"sent"}


async def test_a_closing_node_writes_what_is_queued() -> None:
    group, nodes, (alice, bob, _, _) = club()
    a = nodes[alice.id]
    ours = a.send_text(group, "hello")
    a.acked(group, ours, bob.id)
    a.write_acked()  # groups.node does this before it closes the database
    assert set(states(a, ours).values()) == {"sent"}
    assert a._acked_timer is None
