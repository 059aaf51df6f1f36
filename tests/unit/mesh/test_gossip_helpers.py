"""Helpers for the gossip and sync unit tests: engines joined through mesh.sim.Network
with zero latency (an in-memory pipe on a fake clock) and every frame round-tripped
through the real wire codec."""

from __future__ import annotations

from collections.abc import Iterable

from mesh import wire
from mesh.gossip_state import Params, Validator
from mesh.sim import Network, SimNode

TOPIC = b"unit-topic-00001"
OTHER = b"unit-topic-00002"


def phantoms(count: int) -> list[str]:
    """Member ids that never come online: they make a topic "big" (no full mesh)."""
    return [f"9{i:014d}" for i in range(count)]


def build(n: int, *, big: bool = True, links: Iterable[tuple[int, int]] | None = None,
          params: Params | None = None, validate: Validator | None = None,
          topic: bytes = TOPIC, settle: float = 0.5) -> tuple[Network, list[SimNode]]:
    """``n`` started nodes sharing ``topic``; linked as ``links`` (index pairs) or all
    pairs. ``big`` adds 20 phantom members so the topic runs the Plumtree mode."""
    kwargs = {"validate": validate} if validate is not None else {}
    net = Network(seed=3, wire_check=True, params=params or Params(), **kwargs)
    net.log = []
    nodes = net.add_nodes(n)
    members = [x.id for x in nodes] + (phantoms(20) if big else [])
    net.add_topic(topic, members)
    for node in nodes:
        net.start(node.id)
    pairs = links if links is not None else [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in pairs:
        net.connect(nodes[i].id, nodes[j].id)
    net.run(net.now + settle)
    return net, nodes


def sent(net: Network, kind: type[wire.Frame], src: SimNode | None = None,
         dst: SimNode | None = None, *, since: float = -1.0) -> list[wire.Frame]:
    """Frames of ``kind`` put on links (delivered or dropped) at or after ``since``."""
    assert net.log is not None
    return [f for t, s, d, f, _ in net.log
            if isinstance(f, kind) and t >= since
            and (src is None or s == src.id) and (dst is None or d == dst.id)]


def publish_ids(net: Network, src: SimNode | None = None, dst: SimNode | None = None,
                *, since: float = -1.0) -> list[bytes]:
    return [wire.message_id(f.topic, f.origin, f.seq, f.payload)
            for f in sent(net, wire.Publish, src, dst, since=since)]  # type: ignore[attr-defined]
