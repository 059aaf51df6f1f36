"""Two nodes that dial each other at once keep one link (mesh/connections.py), and
anti-entropy runs on the one they keep: a message one of them holds reaches the other
without waiting for a periodic sync. Two real MeshRuntimes over the in-memory pipe."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from mesh.gossip_state import Message, Params
from mesh.identity import KeyPair, Record
from mesh.memstore import MemoryStore
from mesh.runtime import MeshHooks, MeshRuntime
from mesh.transport import LinkConnection, MemoryTransport
from tests.unit.mesh.test_link_helpers import make_node

TOPIC = b"d" * 16
# No periodic or grace summaries within the test: only the summaries sent when a mesh
# edge forms can carry the message across.
PARAMS = Params(sync_interval=3600.0, sync_grace=3600.0)


class Side:
    def __init__(self, seed: int, endpoint: str, nodes: dict[str, Side],
                 turns: int = 0) -> None:
        node = make_node((endpoint,))
        self.turns = turns  # loop turns our dial waits: shifts which handshake ends first
        self.user_id, self.store = node.user_id, MemoryStore()
        self.nodes, self.arrived = nodes, asyncio.Event()
        self.runtime = MeshRuntime(node.identity, node.record, self.store, params=PARAMS,
                                   rng=random.Random(seed),
                                   manager_options={"dialer": self.dial})
        nodes[endpoint] = self

    async def dial(self, url: str, identity: KeyPair, record: Record, *,
                   expected_peer: str | None = None, **callbacks: Any) -> LinkConnection:
        for _ in range(self.turns):
            await asyncio.sleep(0)
        conn = LinkConnection(identity, record, initiator=True, expected_peer=expected_peer,
                              endpoint=url, **callbacks)
        ours, theirs = MemoryTransport(), MemoryTransport()
        ours.other, theirs.other = theirs, ours
        ours.conn, theirs.conn = conn, self.nodes[url].runtime.manager.accept_inbound(theirs)
        conn.attach(ours)
        await conn.wait_established()
        return conn

    def commit(self, message: Message) -> bool:
        self.store.add(message)
        self.arrived.set()
        return True

    def start(self) -> None:
        self.runtime.start(MeshHooks(commit=self.commit, validate=lambda m: None), port=None)


async def test_both_dial_at_once_and_the_kept_link_carries_the_catch_up() -> None:
    """Whichever link survives (the lower id's dial) and whichever end's handshake
    finishes first (one end's dial waits 0-13 loop turns), the holder's message reaches
    the other end through the summaries swapped when the kept link came up: a summary
    sent on the link closed as a duplicate is not the last one sent."""
    nodes: dict[str, Side] = {}
    raced = 0
    for case in range(28):
        turns, holder_is_lower = divmod(case, 2)
        x = Side(case, f"ws://x{case}.test/mesh", nodes, turns)
        y = Side(case, f"ws://y{case}.test/mesh", nodes)
        low, high = sorted((x, y), key=lambda side: side.user_id)
        a, b = (low, high) if holder_is_lower else (high, low)
        a.runtime.join(TOPIC, {b.user_id: list(b.runtime.manager.record.endpoints)})
        b.runtime.join(TOPIC, {a.user_id: list(a.runtime.manager.record.endpoints)})
        sent = Message(TOPIC, a.user_id, 1, b"removal notice")
        a.store.add(sent)  # published before b came back (not fresh: offered in sync)
        a.start()  # no loop turn until the await below: both dial at once
        b.start()
        try:
            async with asyncio.timeout(10):  # a hang guard: it takes a few loop turns
                await b.arrived.wait()
            assert b.store.has(sent.msg_id)
            assert set(a.runtime.manager.links()) == {b.user_id}
            assert set(b.runtime.manager.links()) == {a.user_id}
            raced += any(r == "duplicate" for side in (a, b) for _, r in side.runtime.closures)
        finally:
            await a.runtime.close()
            await b.runtime.close()
    assert raced >= 4  # cases where both links came up and one was closed as a duplicate
