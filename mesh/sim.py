"""A deterministic discrete-event simulator for the real gossip and sync engines.

Thousands of nodes run the unmodified GossipEngine (with its SyncEngine) over simulated
links on a virtual clock: per-link latency (FIFO, like a TCP stream), random frame loss,
churn (nodes stop and restart with their durable store intact), and a small connection
policy standing in for mesh.connections (each node keeps about ``degree`` links to live
members). Everything is driven by one seeded random.Random, so a run is reproducible.

Unit tests use the same Network with zero latency to join engines "by an in-memory
pipe": ``wire_check`` round-trips every frame through wire.encode/decode, and
``drop`` lets a test lose chosen frames.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh import wire
from mesh.gossip import GossipEngine
from mesh.gossip_state import Acked, Commit, Deliver, Message, Params, Rejected, Validator
from mesh.memstore import MemoryStore

__all__ = ["Network", "SimNode", "SimReport", "run_scenario", "sim_params"]

# Frames exempt from random loss: the mesh handshake rides a reliable stream in
# reality, and losing it would only model a link reset, which churn already covers.
_LOSSLESS = (wire.Subscribe, wire.Unsubscribe)


def sim_params(**overrides: float) -> Params:
    """Engine parameters scaled for simulated WAN latency and a short virtual run."""
    base: dict[str, float] = {"graft_timeout": 1.0, "iwant_timeout": 1.5,
                              "sync_interval": 20.0, "sync_grace": 2.0}
    base.update(overrides)
    return Params(**base)  # type: ignore[arg-type]


def _accept(message: Message) -> None:
    return None


class SimNode:
    """One simulated node: identity, durable store, and (while up) an engine."""

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.store = MemoryStore()
        self.engine: GossipEngine | None = None
        self.timer_due: float | None = None
        self.lives = 0                                # starts so far (restarts + 1)
        self.seq: dict[bytes, int] = {}
        self.delivered: Counter[bytes] = Counter()   # Deliver events per msg id
        self.order_ok = True                          # per-origin delivery order held
        self._last_seq: dict[tuple[bytes, str], int] = {}
        self.copies: Counter[bytes] = Counter()       # full payloads received per msg id
        self.hops: dict[bytes, int] = {}
        self.deliveries: list[Message] = []
        self.acked: list[Acked] = []
        self.rejected: list[Rejected] = []

    @property
    def up(self) -> bool:
        return self.engine is not None

    def record_deliver(self, event: Deliver) -> None:
        m = event.message
        self.delivered[m.msg_id] += 1
        self.deliveries.append(m)
        key = (m.topic, m.origin)
        if m.seq <= self._last_seq.get(key, 0):
            self.order_ok = False
        self._last_seq[key] = m.seq


@dataclass
class _Link:
    gen: int
    latency: float
    up: bool = False
    arrival: dict[str, float] = field(default_factory=dict)  # by destination


class Network:
    """Nodes, links and a virtual clock. Time advances only in ``run``."""

    def __init__(self, *, seed: int = 1, latency: tuple[float, float] = (0.0, 0.0),
                 loss: float = 0.0, params: Params | None = None,
                 validate: Validator = _accept, wire_check: bool = False,
                 degree: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.loss = loss
        self.params = params or Params()
        self.validate = validate
        self.wire_check = wire_check
        self.degree = degree          # None: links only where the caller connects them
        self.nodes: dict[str, SimNode] = {}
        self.topics: dict[bytes, frozenset[str]] = {}
        self.drop: Callable[[str, str, wire.Frame], bool] | None = None
        self.log: list[tuple[float, str, str, wire.Frame, bool]] | None = None
        self.frames: Counter[str] = Counter()
        self.frame_bytes: Counter[str] = Counter()
        self.payload_bytes = 0
        self.measure_bytes = False
        self._links: dict[frozenset[str], _Link] = {}
        self._adj: dict[str, set[str]] = {}
        self._order: list[str] = []
        self._gen = 0
        self._queue: list[tuple[float, int, str, tuple]] = []
        self._tick = 0

    # -- building --------------------------------------------------------------------

    def add_nodes(self, count: int) -> list[SimNode]:
        start = len(self.nodes)
        added = [SimNode(f"{100000000000000 + start + i:015d}") for i in range(count)]
        for node in added:
            self.nodes[node.id] = node
            self._adj[node.id] = set()
            self._order.append(node.id)
        return added

    def add_topic(self, topic: bytes, members: list[str]) -> None:
        self.topics[topic] = frozenset(members)

    def start(self, node_id: str) -> None:
        """Bring a node up (again): a fresh engine over its surviving store."""
        node = self.nodes[node_id]
        if node.engine is not None:
            return
        rng = random.Random(self.rng.random())
        node.engine = GossipEngine(node.id, node.store, self.validate, self.params, rng)
        for topic, members in self.topics.items():
            if node.id in members:
                node.engine.join(topic, members, self.now)
        node.lives += 1
        self._settle(node)
        if self.degree:
            self._schedule(self.now, "dial", (node.id, node.lives))

    def stop(self, node_id: str) -> None:
        """Crash a node: its links drop at once; its store survives."""
        node = self.nodes[node_id]
        if node.engine is None:
            return
        for other in list(self._adj[node_id]):
            self.disconnect(node_id, other)
        node.engine = None
        node.timer_due = None

    def connect(self, a: str, b: str) -> None:
        key = frozenset((a, b))
        if a == b or key in self._links:
            return
        self._gen += 1
        link = self._links[key] = _Link(self._gen, self.rng.uniform(*self.latency))
        self._adj[a].add(b)
        self._adj[b].add(a)
        self._schedule(self.now + link.latency, "up", (key, link.gen))

    def disconnect(self, a: str, b: str) -> None:
        link = self._links.pop(frozenset((a, b)), None)
        self._adj[a].discard(b)
        self._adj[b].discard(a)
        if link is None or not link.up:
            return
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            if node.engine is not None:
                node.engine.peer_down(y, self.now)
                self._settle(node)

    def links_of(self, node_id: str) -> list[str]:
        return sorted(p for p in self._adj[node_id]
                      if self._links[frozenset((node_id, p))].up)

    def deliver(self, src: str, dst: str, frame: wire.Frame) -> None:
        """Hand ``frame`` to ``dst``'s engine now as if ``src`` had sent it (tests)."""
        node = self.nodes[dst]
        assert node.engine is not None
        node.engine.receive(src, frame, self.now)
        self._settle(node)

    def schedule_stop(self, node_id: str, when: float) -> None:
        self._schedule(when, "stop", (node_id,))

    def schedule_start(self, node_id: str, when: float) -> None:
        self._schedule(when, "start", (node_id,))

    def _ev_stop(self, node_id: str) -> None:
        self.stop(node_id)

    def _ev_start(self, node_id: str) -> None:
        self.start(node_id)

    def publish(self, node_id: str, topic: bytes, payload: bytes) -> Message:
        node = self.nodes[node_id]
        if node.engine is None:
            raise RuntimeError("publish from a stopped node")
        seq = node.seq[topic] = max(node.seq.get(topic, 0),
                                    node.store.head(topic, node.id)) + 1
        msg = Message(topic, node.id, seq, payload)
        node.store.add(msg)
        node.hops[msg.msg_id] = 0
        node.engine.publish(msg, self.now)
        self._settle(node)
        return msg

    # -- running ---------------------------------------------------------------------

    def _schedule(self, when: float, kind: str, data: tuple) -> None:
        self._tick += 1
        heapq.heappush(self._queue, (when, self._tick, kind, data))

    def run(self, until: float) -> None:
        """Process every event up to virtual time ``until`` (inclusive)."""
        while self._queue and self._queue[0][0] <= until:
            when, _, kind, data = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            getattr(self, "_ev_" + kind)(*data)
        self.now = max(self.now, until)

    def run_until(self, done: Callable[[], bool], step: float = 1.0,
                  limit: float = 600.0) -> bool:
        """Run in ``step`` slices until ``done()`` holds (True) or ``limit`` passes."""
        end = self.now + limit
        while not done():
            if self.now >= end:
                return False
            self.run(self.now + step)
        return True

    def _ev_up(self, key: frozenset[str], gen: int) -> None:
        link = self._links.get(key)
        if link is None or link.gen != gen:
            return
        a, b = sorted(key)
        if not (self.nodes[a].up and self.nodes[b].up):
            self.disconnect(a, b)
            return
        link.up = True
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            node.engine.peer_up(y, self.now)  # type: ignore[union-attr]
            self._settle(node)

    def _ev_frame(self, key: frozenset[str], gen: int, src: str, dst: str,
                  frame: wire.Frame) -> None:
        link = self._links.get(key)
        node = self.nodes[dst]
        if link is None or link.gen != gen or not link.up or node.engine is None:
            return
        if isinstance(frame, wire.Publish):
            node.copies[Message.from_frame(frame).msg_id] += 1
        node.engine.receive(src, frame, self.now)
        self._settle(node)

    def _ev_timer(self, node_id: str, due: float) -> None:
        node = self.nodes[node_id]
        if node.engine is None or node.timer_due != due:
            return
        node.timer_due = None
        node.engine.handle_timer(self.now)
        self._settle(node)

    def _ev_dial(self, node_id: str, life: int) -> None:
        """The stand-in connection manager: keep ``degree`` links to live members."""
        node = self.nodes[node_id]
        if node.engine is None or not self.degree or life != node.lives:
            return
        mine = self._adj[node_id]
        want = self.degree - len(mine)
        tries = 8 * max(want, 0)
        while want > 0 and tries > 0:
            tries -= 1
            other = self.rng.choice(self._order)
            if (other != node_id and other not in mine and self.nodes[other].up
                    and len(self._adj[other]) < self.params.d_hi):
                self.connect(node_id, other)
                want -= 1
        self._schedule(self.now + self.rng.uniform(2.0, 4.0), "dial", (node_id, life))

    def _settle(self, node: SimNode) -> None:
        """Carry an engine's outputs onto links and into its store, re-arm its timer."""
        engine = node.engine
        if engine is None:
            return
        while True:
            frames = engine.take_frames()
            for send in frames:
                self._transmit(node.id, send.peer, send.frame)
            events = engine.take_events()
            if not events and not frames:
                break
            for event in events:  # what mesh.gossip.drive does, plus bookkeeping
                if isinstance(event, Commit):
                    self._commit(node, event)
                elif isinstance(event, Deliver):
                    node.record_deliver(event)
                elif isinstance(event, Acked):
                    node.acked.append(event)
                elif isinstance(event, Rejected):
                    node.rejected.append(event)
        due = engine.next_timer()
        if due is not None and (node.timer_due is None or due < node.timer_due):
            node.timer_due = max(due, self.now)
            self._schedule(node.timer_due, "timer", (node.id, node.timer_due))

    def _commit(self, node: SimNode, event: Commit) -> None:
        msg = event.message
        sender = self.nodes.get(event.from_peer)
        hop = sender.hops.get(msg.msg_id) if sender is not None else None
        node.hops[msg.msg_id] = (hop + 1) if hop is not None else -1
        assert node.engine is not None
        if node.store.add(msg):
            node.engine.committed(msg.msg_id, self.now)
        else:
            node.engine.abandon(msg.msg_id)

    def _transmit(self, src: str, dst: str, frame: wire.Frame) -> None:
        key = frozenset((src, dst))
        link = self._links.get(key)
        if link is None or not link.up:
            return
        self.frames[frame.TYPE] += 1
        if self.wire_check:
            assert wire.decode(wire.encode(frame)) == frame
        if self.measure_bytes:
            size = len(wire.encode(frame))
            self.frame_bytes[frame.TYPE] += size
            if isinstance(frame, wire.Publish):
                self.payload_bytes += len(frame.payload)
        lost = self.drop is not None and self.drop(src, dst, frame)
        if (not lost and self.loss and not isinstance(frame, _LOSSLESS)
                and self.rng.random() < self.loss):
            self.frames["lost"] += 1
            lost = True
        if self.log is not None:
            self.log.append((self.now, src, dst, frame, lost))
        if lost:
            return
        when = max(self.now + link.latency, link.arrival.get(dst, 0.0))
        link.arrival[dst] = when
        self._schedule(when, "frame", (key, link.gen, src, dst, frame))


# -- scenario -----------------------------------------------------------------------------


@dataclass
class SimReport:
    """Outcome of ``run_scenario``. Copies are full payloads a node received for one
    message (duplicates = copies - 1), over (node, message) pairs other than the author;
    "first" = an author's first message (its tree does not exist yet), "repeat" = later
    ones. Hops are the length of the path the first copy took."""

    nodes: int
    messages: int
    senders: int
    alive: int
    missing: int                 # (node, message) pairs alive at the end without it
    exactly_once: bool           # no message delivered twice by any engine
    order_ok: bool               # per-origin seq order held at every node
    copies_first: float          # mean
    copies_repeat: float         # mean
    dup_median: float
    dup_p99: int
    dup_max: int
    dup_repeat_median: float
    dup_repeat_max: int
    hops_median: float
    hops_max: int
    frames: dict[str, int]
    virtual_seconds: float

    HEADER = ("| nodes | msgs | senders | alive | missing | copies first | copies repeat | "
              "dup median | dup p99 | dup max | hops median | hops max | virtual s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def row(self) -> str:
        return (f"| {self.nodes} | {self.messages} | {self.senders} | {self.alive} | "
                f"{self.missing} | {self.copies_first:.2f} | {self.copies_repeat:.3f} | "
                f"{self.dup_median:g} | {self.dup_p99} | {self.dup_max} | "
                f"{self.hops_median:g} | {self.hops_max} | {self.virtual_seconds:.0f} |")


def run_scenario(*, nodes: int = 1000, messages: int = 60, senders: int = 20,
                 loss: float = 0.01, churn: float = 0.2, seed: int = 7,
                 latency: tuple[float, float] = (0.01, 0.08), publish_window: float = 30.0,
                 payload_size: int = 64, params: Params | None = None) -> SimReport:
    """One topic with ``nodes`` members; ``senders`` of them (a group's active talkers)
    publish ``messages`` while a fraction ``churn`` of all nodes crash and restart with
    their stores; then run until every node that is up holds every message (or three
    sync intervals pass) and report."""
    params = params or sim_params()
    net = Network(seed=seed, latency=latency, loss=loss, params=params, degree=params.d)
    topic = b"sim-topic-000001"
    members = net.add_nodes(nodes)
    net.add_topic(topic, [n.id for n in members])
    for node in members:
        net.start(node.id)
    net.run(10.0)  # mesh forms
    talkers = net.rng.sample(members, min(senders, nodes))
    churners = net.rng.sample([n.id for n in members], int(nodes * churn))
    t0 = net.now
    for node_id in churners:  # each crashes once, stays down 2-15 s, restarts
        down = t0 + net.rng.uniform(0.0, publish_window)
        net.schedule_stop(node_id, down)
        net.schedule_start(node_id, down + net.rng.uniform(2.0, 15.0))
    published: list[Message] = []
    for i in range(messages):
        net.run(t0 + publish_window * i / messages)
        live = [n for n in talkers if n.up] or [n for n in members if n.up]
        payload = i.to_bytes(4, "big") * (payload_size // 4)
        published.append(net.publish(net.rng.choice(live).id, topic, payload))
    net.run(t0 + publish_window + 16.0)   # all churners back
    ids = [m.msg_id for m in published]
    net.run_until(lambda: all(n.store.has(i) for n in members if n.up for i in ids),
                  step=1.0, limit=3 * params.sync_interval)
    return _report(net, members, published)


def _percentile(values: list[int], q: float) -> int:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else 0


def _report(net: Network, members: list[SimNode], published: list[Message]) -> SimReport:
    alive = [n for n in members if n.up]
    first_ids = {m.msg_id for m in published if m.seq == 1}
    missing = sum(1 for n in alive for m in published if not n.store.has(m.msg_id))
    first: list[int] = []
    repeat: list[int] = []
    hops: list[int] = []
    for n in alive:
        for m in published:
            if n.id == m.origin:
                continue
            c = n.copies.get(m.msg_id, 0)
            (first if m.msg_id in first_ids else repeat).append(c)
            if n.hops.get(m.msg_id, -1) > 0:
                hops.append(n.hops[m.msg_id])
    dups = [max(c - 1, 0) for c in first + repeat]
    rdups = [max(c - 1, 0) for c in repeat]
    return SimReport(
        nodes=len(members), messages=len(published),
        senders=len({m.origin for m in published}), alive=len(alive), missing=missing,
        exactly_once=all(c == 1 for n in alive for c in n.delivered.values()),
        order_ok=all(n.order_ok for n in alive),
        copies_first=statistics.fmean(first) if first else 0.0,
        copies_repeat=statistics.fmean(repeat) if repeat else 0.0,
        dup_median=statistics.median(dups) if dups else 0.0,
        dup_p99=_percentile(dups, 0.99), dup_max=max(dups, default=0),
        dup_repeat_median=statistics.median(rdups) if rdups else 0.0,
        dup_repeat_max=max(rdups, default=0),
        hops_median=statistics.median(hops) if hops else 0.0, hops_max=max(hops, default=0),
        frames=dict(net.frames), virtual_seconds=net.now)
