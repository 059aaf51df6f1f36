"""Per-topic, per-edge and per-message state of the gossip engine (mesh/gossip.py).

An Edge is our push state towards one mesh peer in one topic. It is *directional* and
*per origin*: a peer PRUNEs the origins whose messages it already gets from someone
else, and GRAFTs one back when a message of that origin reached it only through a
digest. So every origin (author) grows its own spanning tree out of the mesh, which
concurrent authors cannot disturb, unlike Plumtree's single shared tree, where each
author's duplicates prune edges of the others' trees (measured: at 200 msg/s over
20 ms links a shared tree never settled; per-origin trees settle after one message).

The first message of an origin we have not seen yet goes eagerly to ``fanout_new``
random mesh peers (digests to the rest), which reaches almost everyone at about that
many copies per node instead of a flood's ``d``; the duplicates and digests of that
first message shape the origin's tree. Our own messages go to every mesh peer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from mesh import wire
from mesh.gossip_state import EdgeState, Message

__all__ = ["Cached", "Edge", "Missing", "Pending", "TopicState", "chunks"]


class Edge:
    """The origins whose messages we push eagerly to one mesh peer (others: IHave)."""

    __slots__ = ("eager",)

    def __init__(self, eager: Iterable[str] = ()) -> None:
        self.eager: set[str] = set(eager)

    def pushes(self, origin: str) -> bool:
        return origin in self.eager

    def state(self, origin: str) -> EdgeState:
        return EdgeState.EAGER if origin in self.eager else EdgeState.LAZY


class TopicState:
    """Our view of one joined topic: who may share it and the mesh over it.

    Mesh membership is a Subscribe handshake per link: we sent Subscribe (``we_sub``)
    and they did (``they_sub``) = a mesh edge. A side that already has ``d_hi`` edges
    answers Unsubscribe, and both back off from each other for ``sub_backoff``.
    """

    __slots__ = ("backoff", "full_mesh", "ihave", "members", "mesh", "origins", "they_sub",
                 "we_sub")

    def __init__(self, members: frozenset[str], full_mesh: bool) -> None:
        self.members = members
        self.full_mesh = full_mesh
        self.mesh: dict[str, Edge] = {}
        self.origins: set[str] = set()             # origins whose trees we take part in
        self.we_sub: set[str] = set()
        self.they_sub: set[str] = set()
        self.backoff: dict[str, float] = {}
        self.ihave: dict[str, list[bytes]] = {}    # queued lazy digests per peer

    def drop(self, peer: str) -> bool:
        """Forget ``peer`` in this topic; True if it was a mesh edge. The trees it fed
        us repair on their next message: a digest proves who has it (GRAFT+IWANT)."""
        self.we_sub.discard(peer)
        self.they_sub.discard(peer)
        self.ihave.pop(peer, None)
        return self.mesh.pop(peer, None) is not None

    def reset_edges(self, local_id: str) -> None:
        self.origins.clear()
        for peer in self.mesh:
            self.mesh[peer] = Edge((local_id,))

    def first_sight(self, origin: str, holders: set[str], fanout: int,
                    rng: random.Random, *, own: bool) -> None:
        """Seed ``origin``'s tree at this node: eager to ``fanout`` random mesh peers
        that do not have the message yet (all of them for our own messages)."""
        self.origins.add(origin)
        cands = [p for p in self.mesh if p not in holders and p != origin]
        if not own and len(cands) > fanout:
            cands = rng.sample(cands, fanout)
        for peer in cands:
            self.mesh[peer].eager.add(origin)

    def origins_or_all(self, origins: tuple[str, ...]) -> Iterable[str]:
        """A GRAFT/PRUNE naming no origins applies to every origin we know here."""
        return origins if origins else tuple(self.origins)


# Per-message bookkeeping of the engine


class Pending:
    """Validated, waiting for the layer above to commit it."""

    __slots__ = ("asked", "graft_to", "holders", "message", "peers")

    def __init__(self, message: Message, peer: str, holders: set[str], asked: set[str],
                 graft_to: str | None) -> None:
        self.message = message
        self.peers = [peer]          # sent it to us; each gets an ack after the commit
        self.holders = holders       # known to have it: no push or digest to them
        self.asked = asked           # we IWANTed it from them: their copy is no duplicate
        self.graft_to = graft_to     # reached us only by digest via them: GRAFT its origin


class Cached:
    """A committed message kept in memory to answer IWANT and filter digests."""

    __slots__ = ("asked", "first", "holders", "message")

    def __init__(self, message: Message, holders: set[str], asked: set[str],
                 first: str | None) -> None:
        self.message = message
        self.holders = holders
        self.asked = asked
        self.first = first  # who sent us the first copy (None: our own)


class Missing:
    """An id we saw digested but do not hold."""

    __slots__ = ("announcers", "asked", "created", "current", "deadline", "graft", "topic")

    def __init__(self, topic: bytes, created: float, deadline: float) -> None:
        self.topic = topic
        self.created = created
        self.announcers: list[str] = []
        self.asked: set[str] = set()
        self.current: str | None = None
        self.deadline = deadline
        self.graft = False  # asked after graft_timeout (gossip), not as an offer (sync)


def chunks(ids: list[bytes]) -> Iterable[tuple[bytes, ...]]:
    for i in range(0, len(ids), wire.MAX_IDS):
        yield tuple(ids[i:i + wire.MAX_IDS])
