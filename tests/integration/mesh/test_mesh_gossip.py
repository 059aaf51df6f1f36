"""Gossip and anti-entropy over real Tornado WebSockets on 127.0.0.1.

Each node is mesh-level (identity + record + MemoryStore + MeshRuntime with its own
ConnectionManager and MeshServer on port 0); all share one event loop, but every frame
crosses a real socket, sealed by the real link.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from mesh.gossip_state import Deliver, Event, Message, Params
from mesh.link import MAX_MESSAGE
from mesh.memstore import MemoryStore
from mesh.runtime import MeshHooks, MeshRuntime
from tests.integration.mesh.conftest import StallProxy
from tests.unit.mesh.test_link_helpers import Node, make_node

TOPIC = b"integration-topic-01"
FAST = Params(ihave_interval=0.05, graft_timeout=0.25, iwant_timeout=0.4, heartbeat=0.2,
              sync_interval=3.0, sync_grace=0.3, sub_backoff=1.0, ack_delay=0.02)
MANAGER = {"tick": 0.2, "backoff_base": 0.1, "backoff_cap": 1.0}


class MeshNode:
    """One node; its store and delivery log survive restarts, its runtime does not."""

    def __init__(self, node: Node, seed: int, link_options: dict | None = None) -> None:
        self.node = node
        self.id = node.user_id
        self.seed = seed
        self.store = MemoryStore()
        self.deliveries: list[Message] = []
        self.runtime: MeshRuntime | None = None
        self.port: int | None = None
        self.link_options = link_options or {}
        self.advertise = True  # False: never dialled, only dials out

    def _event(self, event: Event) -> None:
        if isinstance(event, Deliver):
            self.deliveries.append(event.message)

    def start(self) -> None:
        self.runtime = MeshRuntime(
            self.node.identity, self.node.record, self.store, params=FAST,
            rng=random.Random(self.seed),
            manager_options={**MANAGER, "link_options": self.link_options})
        self.port = self.runtime.start(
            MeshHooks(commit=self.store.add, validate=lambda m: None, on_event=self._event))

    async def stop(self) -> None:
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            await runtime.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/mesh"

    def has_all(self, ids: list[bytes]) -> bool:
        return all(self.store.has(i) for i in ids)

    def check_exactly_once_in_order(self, ids: list[bytes]) -> None:
        counts = Counter(m.msg_id for m in self.deliveries)
        assert set(counts) == set(ids), f"{self.id}: {len(set(ids) - set(counts))} missing"
        assert max(counts.values()) == 1
        last: dict[str, int] = {}
        for m in self.deliveries:
            assert m.seq == last.get(m.origin, 0) + 1, "per-sender order broken"
            last[m.origin] = m.seq


class Cluster:
    def __init__(self) -> None:
        self.nodes: list[MeshNode] = []
        self.rng = random.Random(42)
        self.urls: Callable[[MeshNode, MeshNode], list[str]] = (
            lambda viewer, member: [member.url] if member.advertise and member.port else [])

    def add(self, count: int, **kwargs: object) -> list[MeshNode]:
        new = [MeshNode(make_node(), len(self.nodes) + i, **kwargs)  # type: ignore[arg-type]
               for i in range(count)]
        self.nodes += new
        return new

    def members_for(self, viewer: MeshNode) -> dict[str, list[str]]:
        return {n.id: self.urls(viewer, n) for n in self.nodes}

    def start(self, node: MeshNode) -> None:
        node.start()
        assert node.runtime is not None
        node.runtime.join(TOPIC, self.members_for(node))
        for other in self.up():  # everyone learns the (new) endpoint
            if other is not node:
                other.runtime.update_members(TOPIC, self.members_for(other))  # type: ignore[union-attr]

    def up(self) -> list[MeshNode]:
        return [n for n in self.nodes if n.runtime is not None]

    def publish(self, node: MeshNode, payload: bytes) -> Message:
        assert node.runtime is not None
        return node.runtime.publish(TOPIC, payload)

    async def close(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


async def until(predicate: Callable[[], bool], within: float, step: float = 0.02) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - state spread over 20 runtimes
            await asyncio.sleep(step)


async def test_twenty_nodes_deliver_once_in_order_and_restarted_nodes_catch_up(cluster):
    nodes = cluster.add(20)
    for n in nodes:
        cluster.start(n)
    await until(lambda: all(len(n.runtime.engine.mesh(TOPIC)) >= FAST.d_lo for n in nodes), 20)
    assert not nodes[0].runtime.engine.is_full_mesh(TOPIC)

    sent: list[Message] = []
    for i in range(200):
        sent.append(cluster.publish(cluster.rng.choice(nodes), b"%04d" % i + bytes(1020)))
        if i % 10 == 9:
            await asyncio.sleep(0.01)
    ids = [m.msg_id for m in sent]
    await until(lambda: all(n.has_all(ids) for n in nodes), 30)
    for n in nodes:
        n.check_exactly_once_in_order(ids)

    # Kill five, keep talking, bring them back: anti-entropy fills them in.
    victims = cluster.rng.sample(nodes, 5)
    await asyncio.gather(*(v.stop() for v in victims))
    alive = [n for n in nodes if n not in victims]
    for i in range(100):
        sent.append(cluster.publish(cluster.rng.choice(alive), b"late %03d" % i + bytes(1000)))
        if i % 10 == 9:
            await asyncio.sleep(0.01)
    ids = [m.msg_id for m in sent]
    await until(lambda: all(n.has_all(ids) for n in alive), 30)
    assert not any(v.has_all(ids) for v in victims)
    for v in victims:
        cluster.start(v)
    await until(lambda: all(n.has_all(ids) for n in nodes), 30)
    for n in nodes:  # across both lives of the victims: still once each, in order
        n.check_exactly_once_in_order(ids)


async def test_stalled_peer_is_dropped_without_stalling_the_others(cluster):
    limit = MAX_MESSAGE + 16 * 1024
    healthy = cluster.add(8, link_options={"max_queue_bytes": limit})
    (slow,) = cluster.add(1, link_options={"max_queue_bytes": limit})
    slow.advertise = False  # nobody dials it; it dials everyone through a proxy
    stalled = asyncio.Event()
    proxies: dict[str, StallProxy] = {}
    try:
        for n in healthy:
            n.start()
        for n in healthy:
            proxies[n.id] = StallProxy(n.port, stalled)
            await proxies[n.id].start()
        base = cluster.urls
        cluster.urls = lambda viewer, member: (
            [f"ws://127.0.0.1:{proxies[member.id].port}/mesh"]
            if viewer is slow and member.id in proxies else base(viewer, member))
        for n in healthy:
            n.runtime.join(TOPIC, cluster.members_for(n))
        cluster.start(slow)
        await until(lambda: len(slow.runtime.engine.mesh(TOPIC)) == len(healthy), 20)
        await until(lambda: all(len(n.runtime.engine.mesh(TOPIC)) == len(healthy)
                                for n in healthy), 20)
        warm = cluster.publish(healthy[0], b"before the stall")
        await until(lambda: slow.store.has(warm.msg_id), 5)

        stalled.set()
        sent = [warm]
        latencies = []
        async with asyncio.timeout(60):
            while any(slow.id in n.runtime.links() for n in healthy):
                m = cluster.publish(cluster.rng.choice(healthy), bytes(24 * 1024))
                sent.append(m)
                t0 = time.monotonic()
                await until(lambda m=m: all(n.store.has(m.msg_id) for n in healthy), 5, 0.002)
                latencies.append(time.monotonic() - t0)
        ids = [m.msg_id for m in sent]
        assert all(n.has_all(ids) for n in healthy)
        assert max(latencies) < 2.0  # no healthy node waited on the stalled one
        assert not slow.has_all(ids)
        reasons = Counter(r for n in healthy for p, r in n.runtime.closures if p == slow.id)
        assert reasons["slow_peer"] >= 1, reasons
        assert all(n.runtime.links().keys() >= {h.id for h in healthy if h is not n}
                   for n in healthy)  # the healthy mesh was never touched
    finally:
        for p in proxies.values():
            await p.close()
