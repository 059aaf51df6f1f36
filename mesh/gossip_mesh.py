"""Mesh membership and GRAFT/PRUNE handling for the gossip engine (mesh/gossip.py).

A mesh edge for a topic is a Subscribe handshake on a link: both ends subscribed. We
ask up to ``d`` members (``d_hi`` in a full mesh), accept up to ``d_hi``, and answer
Unsubscribe otherwise, after which both sides leave each other alone for
``sub_backoff``. A Subscribe for a topic we do not share with the peer gets the same
Unsubscribe as a full one, so a stranger learns nothing of our topics. Kept apart from
the engine's message path to keep each module small; GossipEngine mixes it in.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from mesh import wire
from mesh.gossip_state import Params
from mesh.gossip_topic import Edge, TopicState

if TYPE_CHECKING:
    from mesh.sync import SyncEngine

__all__ = ["MeshMembership"]


class MeshMembership:
    """The Subscribe handshake and per-origin GRAFT/PRUNE bookkeeping (a mixin)."""

    local_id: str
    params: Params
    rng: random.Random
    stats: Counter[str]
    sync: SyncEngine
    _peers: set[str]
    _topics: dict[bytes, TopicState]
    send: Callable[[str, wire.Frame], None]  # provided by GossipEngine

    def _target(self, t: TopicState) -> int:
        return self.params.d_hi if t.full_mesh else self.params.d

    def _fill_mesh(self, topic: bytes, t: TopicState, now: float) -> None:
        need = self._target(t) - len(t.we_sub)
        if need <= 0:
            return
        cands = [p for p in sorted(self._peers & t.members)
                 if p not in t.we_sub and t.backoff.get(p, 0.0) <= now]
        # Peers who already asked us come first: that edge forms at once.
        keen = [p for p in cands if p in t.they_sub]
        rest = [p for p in cands if p not in t.they_sub]
        self.rng.shuffle(rest)
        for peer in (keen + rest)[:need]:
            t.we_sub.add(peer)
            self.send(peer, wire.Subscribe((topic,)))
            if peer in t.they_sub:
                self._mesh_up(peer, topic, t, now)

    def _mesh_up(self, peer: str, topic: bytes, t: TopicState, now: float) -> None:
        t.mesh[peer] = Edge((self.local_id,))  # our own messages: direct push
        self.stats["mesh_up"] += 1
        self.sync.mesh_up(peer, topic, now)

    def _drop(self, peer: str, topic: bytes, t: TopicState, *, unsubscribe: bool) -> None:
        if unsubscribe and peer in self._peers and peer in t.we_sub | t.they_sub:
            self.send(peer, wire.Unsubscribe((topic,)))
        if t.drop(peer):
            self.sync.mesh_down(peer, topic)

    def _on_subscribe(self, peer: str, frame: wire.Subscribe, now: float) -> None:
        accept: list[bytes] = []
        refuse: list[bytes] = []
        formed: list[bytes] = []
        for topic in frame.topics:
            t = self._topics.get(topic)
            if t is None or peer not in t.members:
                # Same answer whether we do not know the topic or do not share it
                # with this peer: a stranger learns nothing of our topics.
                refuse.append(topic)
                self.stats["ignored_frames"] += 1
                continue
            if peer in t.they_sub:
                continue
            if peer in t.we_sub:
                t.they_sub.add(peer)
                formed.append(topic)
            elif len(t.we_sub) < self.params.d_hi:
                t.they_sub.add(peer)
                t.we_sub.add(peer)
                accept.append(topic)
                formed.append(topic)
            else:
                t.backoff[peer] = now + self.params.sub_backoff
                refuse.append(topic)
        if accept:
            self.send(peer, wire.Subscribe(tuple(accept)))
        if refuse:
            self.send(peer, wire.Unsubscribe(tuple(refuse)))
        for topic in formed:  # after our Subscribe, so the peer knows the edge first
            self._mesh_up(peer, topic, self._topics[topic], now)

    def _on_unsubscribe(self, peer: str, frame: wire.Unsubscribe, now: float) -> None:
        for topic in frame.topics:
            t = self._topics.get(topic)
            if t is None:
                continue
            if peer in t.we_sub or peer in t.they_sub:
                self._drop(peer, topic, t, unsubscribe=False)
                t.backoff[peer] = now + self.params.sub_backoff

    def _on_graft(self, peer: str, frame: wire.Graft, now: float) -> None:
        t = self._topics.get(frame.topic)
        if t is not None and peer in t.mesh:
            t.mesh[peer].eager.update(t.origins_or_all(frame.origins))
            self.stats["grafts_received"] += 1
        else:
            self.stats["ignored_frames"] += 1

    def _on_prune(self, peer: str, frame: wire.Prune, now: float) -> None:
        t = self._topics.get(frame.topic)
        if t is not None and peer in t.mesh:
            t.mesh[peer].eager.difference_update(t.origins_or_all(frame.origins))
            self.stats["prunes_received"] += 1
        else:
            self.stats["ignored_frames"] += 1
