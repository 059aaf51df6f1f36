"""A message the layer above cannot check yet is refused but not blacklisted: the
same message offered again later (anti-entropy) is validated afresh."""

from __future__ import annotations

from mesh import wire
from mesh.errors import InvalidMessage, NotYetValid
from mesh.gossip import GossipEngine
from mesh.gossip_state import Commit, Message, Rejected
from mesh.memstore import MemoryStore

TOPIC = b"t" * 16
ME, PEER = "100000000000001", "100000000000002"


def engine(validate) -> GossipEngine:
    gossip = GossipEngine(ME, MemoryStore(), validate)
    gossip.join(TOPIC, [ME, PEER], 0.0)
    gossip.peer_up(PEER, 0.0)
    gossip.take_frames()
    return gossip


def offer(gossip: GossipEngine, message: Message, now: float) -> list:
    gossip.receive(PEER, message.to_frame(), now)
    return gossip.take_events()


def test_not_yet_valid_is_retried_but_invalid_is_remembered() -> None:
    key_arrived = False

    def validate(message: Message) -> None:
        if message.payload == b"forged":
            raise InvalidMessage("bad signature", "bad_signature")
        if not key_arrived:
            raise NotYetValid("no key yet", "unknown_key")

    gossip = engine(validate)
    early = Message(TOPIC, PEER, 1, b"signed later-known key")
    forged = Message(TOPIC, PEER, 2, b"forged")
    assert [type(e) for e in offer(gossip, early, 1.0)] == [Rejected]
    assert [type(e) for e in offer(gossip, forged, 1.0)] == [Rejected]
    key_arrived = True
    events = offer(gossip, early, 2.0)
    assert [type(e) for e in events] == [Commit] and events[0].message == early
    assert offer(gossip, forged, 2.0) == []  # refused for good: not even validated again


def test_frames_for_unknown_topics_are_ignored() -> None:
    gossip = engine(lambda m: None)
    other = Message(b"o" * 16, PEER, 1, b"x")
    gossip.receive(PEER, wire.Publish(other.topic, other.origin, other.seq, other.payload), 0)
    assert gossip.take_events() == []
