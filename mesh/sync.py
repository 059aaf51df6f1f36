"""Anti-entropy and hop-by-hop acknowledgement, sans-IO.

Gossip alone loses messages to churn: a node that was offline, or whose links broke
while a message passed, never hears of it again. Anti-entropy closes that gap. On every
new mesh edge and every ``sync_interval`` both ends swap SyncSummary frames: per origin,
the highest seq below which they hold everything (a version vector). The side that holds
more answers with an IHave *offer* of what the other lacks (at most ``sync_batch`` ids);
the other side fetches those with IWant at once (no GRAFT: old messages will never come
eagerly) and, once they are committed, sends a fresh summary to get the next batch.
Offers are ids, not payloads, so a node catching up from six peers at once downloads
each message once.

Acks: every Publish is acked once the receiver committed it (duplicates at once,
since they are committed already). A sender keeps what it pushed and was not yet acked
per peer; a summary from that peer acks implicitly whatever its heads cover, and offers
the rest again, which is the re-offer after a reconnect. Nothing leaves the unacked set
silently except by the per-peer cap, and anti-entropy covers those.

This module is driven by mesh.gossip.GossipEngine, which owns the peers, the topics and
the outbox; docs/protocol.md §6, "Anti-entropy" and "Acks", is the spec.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from mesh import wire
from mesh.gossip_state import Acked, Message

if TYPE_CHECKING:
    from mesh.gossip import GossipEngine

__all__ = ["SyncEngine"]


class _Edge:
    """Anti-entropy state of one (peer, topic) mesh edge."""

    __slots__ = ("fetched_any", "fetching", "grace_due", "grace_step", "lag", "lag_real_at",
                 "next_periodic", "summaries", "their_heads")

    def __init__(self, next_periodic: float) -> None:
        self.their_heads: dict[str, int] = {}
        self.lag: dict[str, int] = {}       # origins where the peer announced more than we hold
        self.lag_real_at = 0.0              # from then on the lag is a gap, not gossip in flight
        self.summaries = 0                  # received on this edge
        self.next_periodic = next_periodic
        self.grace_due: float | None = None
        self.grace_step = 0.0               # doubles while a lag persists (lost offers)
        self.fetching: set[bytes] = set()   # ids requested from this peer while catching up
        self.fetched_any = False


class SyncEngine:
    """Version vectors, offers, catch-up, acks and the unacked set of one node."""

    def __init__(self, host: GossipEngine) -> None:
        self._host = host
        self._params = host.params
        self._edges: dict[tuple[str, bytes], _Edge] = {}
        self._by_topic: dict[bytes, set[str]] = {}
        self._fetch_index: dict[bytes, set[tuple[str, bytes]]] = {}
        self._unacked: dict[str, dict[bytes, tuple[bytes, str, int]]] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._ack_due: float | None = None
        self._timers: list[tuple[float, str, bytes]] = []

    # -- edges -----------------------------------------------------------------

    def mesh_up(self, peer: str, topic: bytes, now: float) -> None:
        """A mesh edge formed (or re-formed after a reconnect): swap summaries now."""
        edge = _Edge(now + self._jitter())
        self._edges[(peer, topic)] = edge
        self._by_topic.setdefault(topic, set()).add(peer)
        heapq.heappush(self._timers, (edge.next_periodic, peer, topic))
        self.send_summary(peer, topic)

    def mesh_down(self, peer: str, topic: bytes) -> None:
        edge = self._edges.pop((peer, topic), None)
        if edge is None:
            return
        self._by_topic.get(topic, set()).discard(peer)
        for msg_id in edge.fetching:
            keys = self._fetch_index.get(msg_id)
            if keys is not None:
                keys.discard((peer, topic))
                if not keys:
                    del self._fetch_index[msg_id]

    def peer_down(self, peer: str) -> None:
        """The link closed: edges go, pending acks are moot (the peer's next summary
        from us will imply them); the unacked set stays for the re-offer."""
        for key in [k for k in self._edges if k[0] == peer]:
            self.mesh_down(*key)
        self._acks.pop(peer, None)

    def catching_up(self, peer: str, topic: bytes, now: float) -> bool:
        """True while ``peer``'s summaries show messages we lack and that lag is real:
        its IHaves are then treated as offers (fetched at once, no GRAFT). A lag is
        real at once in the first summary of an edge (a reconnect), otherwise only
        once it outlived ``sync_grace``: until then it is gossip still in flight, and
        fetching that early would turn eager copies into duplicates and PRUNE the tree."""
        edge = self._edges.get((peer, topic))
        return edge is not None and bool(edge.lag) and now >= edge.lag_real_at

    def summary_head(self, peer: str, topic: bytes, origin: str) -> int:
        """The head ``peer`` last announced for ``origin``; a Publish at or below it
        that we already hold is anti-entropy or IWANT traffic, not an eager duplicate."""
        edge = self._edges.get((peer, topic))
        return edge.their_heads.get(origin, 0) if edge is not None else 0

    # -- summaries and offers ----------------------------------------------------

    def send_summary(self, peer: str, topic: bytes) -> None:
        heads = self._host.store.heads(topic)
        if len(heads) > wire.MAX_HEADS:
            # Documented limit: a topic with more origins than one frame holds is
            # summarised by its most advanced origins; the rest fall to gossip.
            top = sorted(heads.items(), key=lambda kv: (-kv[1], kv[0]))[:wire.MAX_HEADS]
            heads = dict(top)
        self._host.send(peer, wire.SyncSummary(topic, dict(sorted(heads.items()))))
        self._host.stats["sync_summaries_sent"] += 1

    def on_summary(self, peer: str, frame: wire.SyncSummary, now: float) -> None:
        host, topic, theirs = self._host, frame.topic, frame.heads
        if not host.topic_shared(peer, topic):
            host.stats["ignored_frames"] += 1
            return
        offer = self._implied_acks_and_reoffer(peer, topic, theirs)
        budget = self._params.sync_batch - len(offer)
        ours = host.store.heads(topic)
        for origin in sorted(ours):
            if budget <= 0:
                break
            if ours[origin] > theirs.get(origin, 0):
                for msg in host.store.get_range(topic, origin, theirs.get(origin, 0) + 1,
                                                budget):
                    # Messages younger than sync_grace are still being gossiped; if
                    # the peer really lacks them its next request gets them.
                    if msg.msg_id not in offer and not host.is_fresh(msg.msg_id, now):
                        offer[msg.msg_id] = None
                        budget -= 1
        if offer:
            host.send(peer, wire.IHave(topic, tuple(offer)))
            host.stats["sync_offered"] += len(offer)
        edge = self._edges.get((peer, topic))
        if edge is None:  # a topic peer outside our mesh: answer, keep no state
            return
        edge.their_heads = dict(theirs)
        had_lag = bool(edge.lag)
        edge.lag = {o: h for o, h in theirs.items() if h > host.store.head(topic, o)}
        edge.summaries += 1
        if edge.summaries == 1:
            edge.lag_real_at = now
        elif not had_lag:
            edge.lag_real_at = now + self._params.sync_grace
        if edge.lag and edge.grace_due is None:
            edge.grace_step = self._params.sync_grace
            edge.grace_due = now + edge.grace_step
            heapq.heappush(self._timers, (edge.grace_due, peer, topic))

    def _implied_acks_and_reoffer(self, peer: str, topic: bytes,
                                  theirs: dict[str, int]) -> dict[bytes, None]:
        unacked = self._unacked.get(peer)
        offer: dict[bytes, None] = {}
        if not unacked:
            return offer
        for msg_id, (t, origin, seq) in list(unacked.items()):
            if t != topic:
                continue
            if seq <= theirs.get(origin, 0):
                del unacked[msg_id]
                self._acked(peer, topic, origin, msg_id)
            elif len(offer) < self._params.sync_batch:
                offer[msg_id] = None
        return offer

    def gap(self, peer: str, topic: bytes, origin: str, upto: int, now: float) -> None:
        """``peer`` sent us seq upto+1 of ``origin`` while we miss an earlier one, which
        holds back delivery: treat it as a lag on that edge, so that it is asked for by
        summary after ``sync_grace`` unless gossip fills the gap first."""
        edge = self._edges.get((peer, topic))
        if edge is None or edge.lag.get(origin, 0) >= upto:
            return
        if not edge.lag:
            edge.lag_real_at = now + self._params.sync_grace
        edge.lag[origin] = upto
        if edge.grace_due is None:
            edge.grace_step = self._params.sync_grace
            edge.grace_due = now + edge.grace_step
            heapq.heappush(self._timers, (edge.grace_due, peer, topic))

    # -- catch-up bookkeeping ------------------------------------------------------

    def note_fetch(self, peer: str, topic: bytes, msg_id: bytes) -> None:
        """The gossip engine asked ``peer`` for ``msg_id`` because of a sync offer."""
        edge = self._edges.get((peer, topic))
        if edge is not None:
            edge.fetching.add(msg_id)
            self._fetch_index.setdefault(msg_id, set()).add((peer, topic))

    def committed(self, msg: Message, now: float) -> None:
        peers = self._by_topic.get(msg.topic)
        if peers:
            head: int | None = None
            for peer in peers:
                edge = self._edges[(peer, msg.topic)]
                want = edge.lag.get(msg.origin)
                if want is None:
                    continue
                if head is None:
                    head = self._host.store.head(msg.topic, msg.origin)
                if head >= want:
                    del edge.lag[msg.origin]
        self.resolved(msg.msg_id, committed=True)

    def resolved(self, msg_id: bytes, *, committed: bool) -> None:
        """A fetched id was committed or given up; when a peer's batch is done and it
        still has more, ask for the next batch with a fresh summary."""
        for peer, topic in self._fetch_index.pop(msg_id, ()):
            edge = self._edges.get((peer, topic))
            if edge is None:
                continue
            edge.fetching.discard(msg_id)
            edge.fetched_any |= committed
            if not edge.fetching and edge.fetched_any:
                edge.fetched_any = False
                if edge.lag:
                    self.send_summary(peer, topic)
                    self._host.stats["sync_continuations"] += 1

    # -- acks --------------------------------------------------------------------

    def sent(self, peer: str, msg: Message) -> None:
        """We pushed ``msg`` to ``peer``: it stays unacked until an Ack or a summary."""
        unacked = self._unacked.setdefault(peer, {})
        unacked[msg.msg_id] = (msg.topic, msg.origin, msg.seq)
        if len(unacked) > self._params.unacked_max:
            del unacked[next(iter(unacked))]
            self._host.stats["unacked_evicted"] += 1

    def unacked(self, peer: str) -> set[bytes]:
        return set(self._unacked.get(peer, ()))

    def ack(self, peer: str, msg_id: bytes, now: float, *, urgent: bool = True) -> None:
        """Queue a hop-by-hop ack (the message is committed); sent in batches, within
        ``ack_delay`` if ``urgent`` (the author's "sent" tick waits on it), else within
        ``ack_delay_relay``."""
        self._acks.setdefault(peer, []).append(msg_id)
        delay = self._params.ack_delay if urgent else self._params.ack_delay_relay
        if self._ack_due is None or now + delay < self._ack_due:
            self._ack_due = now + delay

    def on_ack(self, peer: str, frame: wire.Ack) -> None:
        unacked = self._unacked.get(peer)
        if not unacked:
            return
        for msg_id in frame.ids:
            entry = unacked.pop(msg_id, None)
            if entry is not None:
                self._acked(peer, entry[0], entry[1], msg_id)

    def _acked(self, peer: str, topic: bytes, origin: str, msg_id: bytes) -> None:
        if origin == self._host.local_id:
            self._host.emit(Acked(topic, msg_id, peer))

    def _flush_acks(self) -> None:
        for peer, ids in self._acks.items():
            for i in range(0, len(ids), wire.MAX_IDS):
                self._host.send(peer, wire.Ack(tuple(ids[i:i + wire.MAX_IDS])))
        self._acks.clear()
        self._ack_due = None

    # -- timers --------------------------------------------------------------------

    def _jitter(self) -> float:
        return self._params.sync_interval * self._host.rng.uniform(0.8, 1.2)

    def next_timer(self) -> float | None:
        due = self._timers[0][0] if self._timers else None
        if self._ack_due is not None and (due is None or self._ack_due < due):
            due = self._ack_due
        return due

    def handle_timer(self, now: float) -> None:
        if self._ack_due is not None and self._ack_due <= now:
            self._flush_acks()
        while self._timers and self._timers[0][0] <= now:
            due, peer, topic = heapq.heappop(self._timers)
            edge = self._edges.get((peer, topic))
            if edge is None:
                continue
            if due == edge.grace_due:
                # Still behind this peer and nothing in flight: ask (again), backing
                # off, so that a lost summary or offer costs seconds, not a period.
                edge.grace_due = None
                if edge.lag:
                    if not edge.fetching:
                        self.send_summary(peer, topic)
                    edge.grace_step = min(2 * edge.grace_step, self._params.sync_interval)
                    edge.grace_due = now + edge.grace_step
                    heapq.heappush(self._timers, (edge.grace_due, peer, topic))
            if due == edge.next_periodic:
                self.send_summary(peer, topic)
                edge.next_periodic = now + self._jitter()
                heapq.heappush(self._timers, (edge.next_periodic, peer, topic))
