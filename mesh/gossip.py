"""Per-topic dissemination, sans-IO: a bounded mesh with eager and lazy push.

A topic is an opaque id (a group id); the layer above says which peers may share it
(its members) and supplies a validate hook. For each topic the engine keeps a mesh of
at most ``d_hi`` connected members, formed by a Subscribe handshake on each link (both
ends subscribed = a mesh edge; a full end answers Unsubscribe). Along mesh edges, as in
Plumtree but with one tree per origin (mesh/gossip_topic.py explains why):

* a new message is pushed whole along edges that push its origin eagerly (an unseen
  origin's first message to ``fanout_new`` random peers); a duplicate push makes us
  PRUNE that origin on that edge, so each origin's eager edges settle into a spanning
  tree and each node gets one copy;
* everyone else in the mesh gets batched IHave digests; a digested id that has not
  arrived within ``graft_timeout`` is fetched with IWant, and when it arrives that way
  we GRAFT its origin on the edge that had it;
* topics with at most ``full_mesh_max`` members are a full mesh: the author pushes to
  everyone directly and relays only send digests.

Nothing is stored or forwarded before the validate hook passed and the layer above
committed the message (Commit event -> ``committed()``); only then is it acked, relayed
and released for delivery in per-origin order. Anti-entropy and acks live in
mesh/sync.py. The engine does no I/O: feed it ``receive(peer, frame, now)`` and timers,
collect ``take_frames()`` and ``take_events()``. docs/protocol.md §6 is the spec.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable

from mesh import wire
from mesh.errors import LocalError, NotYetValid, RemoteError
from mesh.gossip_mesh import MeshMembership
from mesh.gossip_state import (
    Commit,
    Deliver,
    EdgeState,
    Event,
    Message,
    MessageStore,
    Params,
    Rejected,
    Send,
    TTLCache,
    Validator,
)
from mesh.gossip_topic import Cached, Missing, Pending, TopicState, chunks
from mesh.sync import SyncEngine

__all__ = ["FRAME_TYPES", "GossipEngine", "drive"]

FRAME_TYPES: tuple[type[wire.Frame], ...] = (
    wire.Subscribe, wire.Unsubscribe, wire.Publish, wire.IHave, wire.IWant, wire.Graft,
    wire.Prune, wire.Ack, wire.SyncSummary)


class GossipEngine(MeshMembership):
    """Gossip for one identity over any number of topics and peers.

    ``store`` answers what is committed; ``validate`` raises a RemoteError for a
    message that must not be stored or forwarded. ``rng`` makes choices reproducible.
    """

    def __init__(self, local_id: str, store: MessageStore, validate: Validator,
                 params: Params | None = None, rng: random.Random | None = None) -> None:
        self.local_id = local_id
        self.store = store
        self.validate = validate
        self.params = params or Params()
        self.rng = rng or random.Random()
        self.stats: Counter[str] = Counter()
        self._frames: list[Send] = []
        self._events: list[Event] = []
        self._peers: set[str] = set()
        self._topics: dict[bytes, TopicState] = {}
        self._seen: TTLCache[bytes, None] = TTLCache(self.params.seen_ttl)
        self._rejected: TTLCache[bytes, str] = TTLCache(self.params.seen_ttl)
        self._mcache: TTLCache[bytes, Cached] = TTLCache(self.params.mcache_ttl,
                                                          self.params.mcache_max)
        self._pending: dict[bytes, Pending] = {}
        self._missing: dict[bytes, Missing] = {}
        self._missing_heap: list[tuple[float, bytes]] = []
        self._released: dict[tuple[bytes, str], int] = {}
        self._arrived_from: dict[bytes, str] = {}
        self._ihave_due: float | None = None
        self._heartbeat_due: float | None = None
        # Multiplies graft_timeout and iwant_timeout. A message fetched
        # by IWANT that then also came eagerly means the timers fired early (a loaded
        # node, slow links): back off, and drift back while no such false alarm occurs,
        # so that an overloaded mesh does not add IWANT and GRAFT storms to its load.
        self.stretch = 1.0
        # How long eager copies trail their digests, when they do (mean, deviation; an
        # EWMA as TCP's RTO): the GRAFT timer waits at least mean + 4 deviations.
        self._lag_mean = 0.0
        self._lag_dev = 0.0
        self.sync = SyncEngine(self)
        self._handlers: dict[type[wire.Frame], Callable[[str, wire.Frame, float], None]] = {
            wire.Subscribe: self._on_subscribe, wire.Unsubscribe: self._on_unsubscribe,
            wire.Publish: self._on_publish, wire.IHave: self._on_ihave,
            wire.IWant: self._on_iwant, wire.Graft: self._on_graft, wire.Prune: self._on_prune,
            wire.Ack: lambda p, f, now: self.sync.on_ack(p, f),  # type: ignore[arg-type]
            wire.SyncSummary: self.sync.on_summary,  # type: ignore[dict-item]
        }

    # -- outputs -------------------------------------------------------------------

    def send(self, peer: str, frame: wire.Frame) -> None:
        self._frames.append(Send(peer, frame))
        self.stats["sent_" + frame.TYPE] += 1

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def take_frames(self) -> list[Send]:
        frames, self._frames = self._frames, []
        return frames

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- introspection -----------------------------------------------------------

    def mesh(self, topic: bytes) -> set[str]:
        """Our mesh peers in ``topic``."""
        t = self._topics.get(topic)
        return set(t.mesh) if t is not None else set()

    def edge_state(self, topic: bytes, peer: str, origin: str) -> EdgeState:
        """Do we push ``origin``'s messages in ``topic`` to ``peer`` eagerly?"""
        return self._topics[topic].mesh[peer].state(origin)

    def is_full_mesh(self, topic: bytes) -> bool:
        return self._topics[topic].full_mesh

    def seen_count(self) -> int:
        return len(self._seen)

    def is_fresh(self, msg_id: bytes, now: float) -> bool:
        """Committed less than ``sync_grace`` ago (so probably still spreading)."""
        at = self._mcache.inserted_at(msg_id)
        return at is not None and now - at < self.params.sync_grace

    def topic_shared(self, peer: str, topic: bytes) -> bool:
        """May ``peer`` exchange frames about ``topic`` with us right now?"""
        t = self._topics.get(topic)
        return t is not None and peer in t.members and peer in self._peers

    # -- topics ------------------------------------------------------------------------

    def _is_full(self, members: frozenset[str]) -> bool:
        return len(members) + 1 <= self.params.full_mesh_max

    def join(self, topic: bytes, members: Iterable[str], now: float) -> None:
        """Start disseminating ``topic`` among ``members`` (the peers allowed on it)."""
        if topic in self._topics:
            raise LocalError("topic already joined")
        peers = frozenset(members) - {self.local_id}
        t = self._topics[topic] = TopicState(peers, self._is_full(peers))
        for origin, head in self.store.heads(topic).items():
            self._released[(topic, origin)] = head
        self._arm(now)
        self._fill_mesh(topic, t, now)

    def update_members(self, topic: bytes, members: Iterable[str], now: float) -> None:
        t = self._topics.get(topic)
        if t is None:
            raise LocalError("topic not joined")
        peers = frozenset(members) - {self.local_id}
        removed, t.members = t.members - peers, peers
        full = self._is_full(peers)
        if full != t.full_mesh:
            t.full_mesh = full
            t.reset_edges(self.local_id)
        for peer in removed & (t.we_sub | t.they_sub):
            self._drop(peer, topic, t, unsubscribe=True)
        self._fill_mesh(topic, t, now)

    def leave(self, topic: bytes, now: float) -> None:
        t = self._topics.get(topic)
        if t is None:
            return
        for peer in list(t.we_sub | t.they_sub):
            self._drop(peer, topic, t, unsubscribe=True)
        del self._topics[topic]
        self._released = {k: v for k, v in self._released.items() if k[0] != topic}

    # -- peers ---------------------------------------------------------------------------

    def peer_up(self, peer: str, now: float) -> None:
        """An authenticated link to ``peer`` is open (one link per peer)."""
        if peer in self._peers or peer == self.local_id:
            raise LocalError("peer is already up (one link per peer)")
        self._peers.add(peer)
        self._arm(now)
        for topic, t in self._topics.items():
            if peer in t.members:
                self._fill_mesh(topic, t, now)

    def peer_down(self, peer: str, now: float) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        for t in self._topics.values():
            t.drop(peer)
        self.sync.peer_down(peer)
        for msg_id, m in self._missing.items():
            if m.current == peer:  # ask the next announcer now rather than time out
                m.current = None
                m.deadline = now
                heapq.heappush(self._missing_heap, (now, msg_id))

    # -- messages in -------------------------------------------------------------------

    def receive(self, peer: str, frame: wire.Frame, now: float) -> None:
        """Process one frame from an up peer (gossip and sync frames only)."""
        if peer not in self._peers:
            raise LocalError("frame from a peer that is not up")
        handler = self._handlers.get(type(frame))
        if handler is None:
            raise LocalError(f"{frame.TYPE} is not a gossip frame")
        self.stats["recv_" + frame.TYPE] += 1
        handler(peer, frame, now)

    def _on_publish(self, peer: str, frame: wire.Publish, now: float) -> None:
        t = self._topics.get(frame.topic)
        if t is None or peer not in t.members:
            self.stats["ignored_frames"] += 1
            return
        msg = Message.from_frame(frame)
        mid = msg.msg_id
        if mid in self._rejected:
            return
        pend = self._pending.get(mid)
        if pend is not None:
            if peer not in pend.peers:
                pend.peers.append(peer)
            pend.holders.add(peer)
            self._false_alarm(peer, pend.asked, pend.peers[0])
            self._duplicate(peer, msg, t, pend.asked, pend.peers[0])
            return
        cached = self._mcache.get(mid)
        if cached is not None or mid in self._seen or self.store.has(mid):
            self.sync.ack(peer, mid, now, urgent=peer == msg.origin)  # committed already
            if cached is not None:
                cached.holders.add(peer)
            if cached is not None:
                self._false_alarm(peer, cached.asked, cached.first)
                self._duplicate(peer, msg, t, cached.asked, cached.first)
            else:
                self._duplicate(peer, msg, t, set(), None)
            return
        try:
            if msg.seq < 1:
                raise RemoteError("sequence numbers start at 1", "bad_seq")
            self.validate(msg)
        except RemoteError as exc:
            if not isinstance(exc, NotYetValid):
                self._rejected.put(mid, exc.reason, now)
            self._drop_missing(mid)
            self.stats["rejected"] += 1
            self.emit(Rejected(msg.topic, msg.origin, msg.seq, mid, peer, exc.reason))
            return
        miss = self._missing.pop(mid, None)
        holders = {peer, *(miss.announcers if miss else ())}
        if miss is not None and peer not in miss.asked:
            if miss.asked:
                self._false_alarm(next(iter(miss.asked)), miss.asked, peer)
            else:  # the eager copy trailed a digest: learn by how much
                sample = now - miss.created
                self._lag_dev += (abs(sample - self._lag_mean) - self._lag_dev) / 4
                self._lag_mean += (sample - self._lag_mean) / 8
        graft_to = peer if miss is not None and miss.graft and peer in miss.asked else None
        self._pending[mid] = Pending(msg, peer, holders, miss.asked if miss else set(),
                                      graft_to)
        self.emit(Commit(msg, peer))

    def _false_alarm(self, peer: str, asked: set[str], first: str | None) -> None:
        """``peer`` answered an IWANT of ours, but the first copy came unasked."""
        if peer in asked and first is not None and first not in asked:
            self.stretch = min(4.0, self.stretch * 1.5)
            self.stats["false_alarms"] += 1

    def _duplicate(self, peer: str, msg: Message, t: TopicState, asked: set[str],
                   first: str | None) -> None:
        """A copy we already hold: an eager push that closes a cycle in its origin's
        tree, so ask the peer to PRUNE that origin towards us. The author's own push is
        never pruned (it is the shortest path); the relay whose copy beat it is. Copies
        we asked for (IWANT) or that a summary said the peer held before (anti-entropy)
        are not eager pushes."""
        self.stats["duplicates"] += 1
        if peer not in t.mesh or msg.seq <= self.sync.summary_head(peer, msg.topic,
                                                                   msg.origin):
            return
        if first in asked:
            # The first copy was fetched (IWANT), so this push is our branch of the
            # tree, only slower: keep it until a GRAFTed branch proves faster.
            return
        culprit = first if peer == msg.origin else peer
        if culprit is None or culprit == msg.origin or culprit in asked or culprit not in t.mesh:
            return
        self.send(culprit, wire.Prune(msg.topic, (msg.origin,)))

    def _on_ihave(self, peer: str, frame: wire.IHave, now: float) -> None:
        topic = frame.topic
        if not self.topic_shared(peer, topic):
            self.stats["ignored_frames"] += 1
            return
        offer = self.sync.catching_up(peer, topic, now)
        ask: list[bytes] = []
        for mid in frame.ids:
            pend = self._pending.get(mid)
            if pend is not None:
                pend.holders.add(peer)
                continue
            cached = self._mcache.get(mid)
            if cached is not None:
                cached.holders.add(peer)
                continue
            if mid in self._seen or mid in self._rejected:
                continue
            m = self._missing.get(mid)
            if m is None:
                if self.store.has(mid):
                    continue
                wait = max(self.params.graft_timeout, self._lag_mean + 4 * self._lag_dev)
                m = self._missing[mid] = Missing(topic, now, now + wait * self.stretch)
                heapq.heappush(self._missing_heap, (m.deadline, mid))
            if peer in m.announcers:
                continue
            m.announcers.append(peer)
            if offer and m.current is None:
                # An anti-entropy offer: fetch now, no GRAFT (it will not come eagerly).
                m.asked.add(peer)
                m.current = peer
                m.deadline = now + self.params.iwant_timeout * self.stretch
                heapq.heappush(self._missing_heap, (m.deadline, mid))
                self.sync.note_fetch(peer, topic, mid)
                ask.append(mid)
        for ids in chunks(ask):
            self.send(peer, wire.IWant(ids))

    def _on_iwant(self, peer: str, frame: wire.IWant, now: float) -> None:
        for mid in frame.ids:
            cached = self._mcache.get(mid)
            msg = cached.message if cached is not None else self.store.get(mid)
            # Only for a topic we share with this peer: an id alone buys nothing.
            if msg is None or not self.topic_shared(peer, msg.topic):
                self.stats["iwant_unserved"] += 1
                continue
            if cached is not None:
                cached.holders.add(peer)
            self._push(peer, msg, msg.to_frame())

    # -- commit, publish, forward ------------------------------------------------------

    def committed(self, msg_id: bytes, now: float) -> None:
        """The layer above durably committed a message we emitted Commit for: ack it to
        everyone who sent it, relay it, and release it for delivery."""
        pend = self._pending.pop(msg_id, None)
        if pend is None:
            raise LocalError("committed() for a message that is not pending")
        msg = pend.message
        self._seen.put(msg_id, None, now)
        cached = Cached(msg, pend.holders, pend.asked, pend.peers[0])
        self._mcache.put(msg_id, cached, now)
        for peer in pend.peers:
            if peer in self._peers:
                self.sync.ack(peer, msg_id, now, urgent=peer == msg.origin)
        t = self._topics.get(msg.topic)
        if (pend.graft_to is not None and t is not None and pend.graft_to in t.mesh
                and self.stretch <= 2.0):
            # Its tree missed us: take the branch that had it (Plumtree's GRAFT). Not
            # while false alarms say copies are merely late: more eager edges would
            # only add load to an overloaded mesh.
            self.send(pend.graft_to, wire.Graft(msg.topic, (msg.origin,)))
            self.stats["grafts_sent"] += 1
        self._forward(msg, cached, now, own=False)
        self._release(msg, pend.peers[0], now)
        self.sync.committed(msg, now)

    def abandon(self, msg_id: bytes) -> None:
        """The commit failed: forget the message (no ack); a later copy may retry."""
        if self._pending.pop(msg_id, None) is None:
            raise LocalError("abandon() for a message that is not pending")
        self.stats["abandoned"] += 1
        self.sync.resolved(msg_id, committed=False)

    def publish(self, message: Message, now: float) -> None:
        """Disseminate our own message, which the layer above has already committed."""
        if message.origin != self.local_id:
            raise LocalError("publish() is for messages of our own identity")
        if message.topic not in self._topics:
            raise LocalError("topic not joined")
        if not self.store.has(message.msg_id):
            raise LocalError("commit a message before publishing it")
        if message.msg_id in self._seen:
            return
        self._seen.put(message.msg_id, None, now)
        cached = Cached(message, set(), set(), None)
        self._mcache.put(message.msg_id, cached, now)
        self._forward(message, cached, now, own=True)
        self._release(message, None, now)
        self.sync.committed(message, now)

    def _push(self, peer: str, msg: Message, frame: wire.Publish) -> None:
        self.send(peer, frame)
        self.stats["payload_bytes_sent"] += len(msg.payload)
        self.sync.sent(peer, msg)

    def _forward(self, msg: Message, cached: Cached, now: float, *, own: bool) -> None:
        t = self._topics.get(msg.topic)
        if t is None:
            return
        frame = msg.to_frame()
        skip = cached.holders
        if msg.origin not in t.origins:
            if t.full_mesh:  # everyone hears the author directly: relays push nothing
                t.origins.add(msg.origin)
            else:
                t.first_sight(msg.origin, skip, self.params.fanout_new, self.rng, own=own)
        lazy = []
        for peer, edge in t.mesh.items():
            if peer in skip or peer == msg.origin:
                continue
            if edge.pushes(msg.origin):
                self._push(peer, msg, frame)
            else:
                lazy.append(peer)
        if len(lazy) > self.params.lazy_fanout:
            # Digests are the safety net (trees repair themselves when a link drops);
            # a few per message suffice, as GossipSub's D_lazy.
            lazy = self.rng.sample(lazy, self.params.lazy_fanout)
        for peer in lazy:
            t.ihave.setdefault(peer, []).append(msg.msg_id)
        if lazy and self._ihave_due is None:
            self._ihave_due = now + self.params.ihave_interval

    def _release(self, msg: Message, from_peer: str | None, now: float) -> None:
        """Emit Deliver for every message that is now contiguous for its origin."""
        key = (msg.topic, msg.origin)
        done = self._released.get(key, 0)
        if msg.seq != done + 1:
            if msg.seq > done + 1 and from_peer is not None:
                self._arrived_from[msg.msg_id] = from_peer  # until the gap fills
                # Later messages wait for the gap: if it is still open after
                # sync_grace, ask the peer that had this one (it likely has the rest).
                self.sync.gap(from_peer, msg.topic, msg.origin, msg.seq - 1, now)
            return
        if from_peer is not None:
            self._arrived_from[msg.msg_id] = from_peer
        head = self.store.head(msg.topic, msg.origin)
        seq = done + 1
        while seq <= head:
            batch = self.store.get_range(msg.topic, msg.origin, seq, min(head - seq + 1, 512))
            if not batch:
                break
            for m in batch:
                self.emit(Deliver(m, self._arrived_from.pop(m.msg_id, None)))
            seq = batch[-1].seq + 1
        self._released[key] = max(head, done)

    def _drop_missing(self, mid: bytes) -> None:
        if self._missing.pop(mid, None) is not None:
            self.sync.resolved(mid, committed=False)

    # -- timers --------------------------------------------------------------------------

    def _arm(self, now: float) -> None:
        if self._heartbeat_due is None:
            self._heartbeat_due = now + self.params.heartbeat

    def next_timer(self) -> float | None:
        """The earliest time ``handle_timer`` has work (it may also find none)."""
        cands = [self._heartbeat_due, self._ihave_due, self.sync.next_timer(),
                 self._missing_heap[0][0] if self._missing_heap else None]
        due = [c for c in cands if c is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        self._missing_timers(now)
        if self._ihave_due is not None and self._ihave_due <= now:
            self._flush_ihave()
        if self._heartbeat_due is not None and self._heartbeat_due <= now:
            self._heartbeat(now)
        self.sync.handle_timer(now)

    def _missing_timers(self, now: float) -> None:
        iwants: dict[str, list[bytes]] = {}
        while self._missing_heap and self._missing_heap[0][0] <= now:
            due, mid = heapq.heappop(self._missing_heap)
            m = self._missing.get(mid)
            if m is None or m.deadline != due:
                continue
            cands = [a for a in m.announcers
                     if a not in m.asked and self.topic_shared(a, m.topic)]
            if not cands:
                self._drop_missing(mid)
                self.stats["missing_given_up"] += 1
                continue
            peer = cands[0]
            m.asked.add(peer)
            m.current = peer
            m.deadline = now + self.params.iwant_timeout * self.stretch
            heapq.heappush(self._missing_heap, (m.deadline, mid))
            iwants.setdefault(peer, []).append(mid)
            m.graft = True
        for peer, ids in iwants.items():
            for chunk in chunks(ids):
                self.send(peer, wire.IWant(chunk))

    def _flush_ihave(self) -> None:
        self._ihave_due = None
        for topic, t in self._topics.items():
            for peer, ids in t.ihave.items():
                fresh = []
                for mid in ids:
                    cached = self._mcache.get(mid)
                    if cached is None or peer not in cached.holders:
                        fresh.append(mid)
                for chunk in chunks(fresh):
                    self.send(peer, wire.IHave(topic, chunk))
            t.ihave.clear()

    def _heartbeat(self, now: float) -> None:
        self._heartbeat_due = now + self.params.heartbeat
        self.stretch = max(1.0, self.stretch * 0.9)
        self._seen.expire(now)
        self._rejected.expire(now)
        self._mcache.expire(now)
        for topic, t in self._topics.items():
            t.backoff = {p: until for p, until in t.backoff.items() if until > now}
            if len(t.we_sub) < (self._target(t) if t.full_mesh else self.params.d_lo):
                self._fill_mesh(topic, t, now)


def drive(engine: GossipEngine, commit: Callable[[Message], bool],
          now: float) -> list[Event]:
    """Run Commit events through ``commit`` (True = durably stored) until none are
    left, and return the remaining events. For adapters that commit synchronously."""
    out: list[Event] = []
    while True:
        events = engine.take_events()
        if not events:
            return out
        for event in events:
            if isinstance(event, Commit):
                if commit(event.message):
                    engine.committed(event.message.msg_id, now)
                else:
                    engine.abandon(event.message.msg_id)
            else:
                out.append(event)
