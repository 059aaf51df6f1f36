"""Real messengers (real SQLite stores, real crypto) joined by an in-memory bus that
runs the same validate-then-commit sequence the mesh runtime does."""

from __future__ import annotations

from dataclasses import dataclass, field

from groups.directory import Directory
from groups.group import OpKind
from groups.messages import Welcome
from groups.messenger import Messenger
from groups.store import atomic
from mesh.gossip_state import Message
from tests.unit.groups.helpers import NOW, User, make_user, share_sender_keys


@dataclass
class Bus:
    """Delivers every published message to the other messengers sharing its topic."""

    nodes: dict[str, Messenger] = field(default_factory=dict)
    topics: dict[str, dict[bytes, set[str]]] = field(default_factory=dict)

    def deliver(self, message: Message, sender: str) -> None:
        for user_id, node in self.nodes.items():
            if user_id != sender and message.topic in self.topics.get(user_id, {}):
                node.validate(message)
                assert node.commit(message)


@dataclass
class BusPort:
    bus: Bus
    me: str

    def publish(self, message: Message) -> None:
        self.bus.deliver(message, self.me)

    def set_topic(self, topic: bytes, members: dict[str, list[str]]) -> None:
        self.bus.topics.setdefault(self.me, {})[topic] = set(members)

    def leave_topic(self, topic: bytes) -> None:
        self.bus.topics.get(self.me, {}).pop(topic, None)

    def resync(self, topic: bytes) -> None:
        """Everything is delivered at once on the bus: nothing to catch up."""


class NoEvents:
    def publish(self, event_type: str, data: dict) -> None:
        """The tests read state from the stores, not events."""


class NoLookup:
    """Every record is known in advance here; a lookup would be a test bug."""

    async def lookup(self, user_id: str, **_):
        raise AssertionError(f"unexpected lookup of {user_id}")

    async def bundle(self, user_id: str, **_):
        raise AssertionError(f"unexpected bundle claim for {user_id}")


def messenger(user: User, bus: Bus, everyone: list[User]) -> Messenger:
    directory = Directory(user.conn, user.crypto, NoLookup())
    for other in everyone:
        directory.remember(other.record(), NOW)
    node = Messenger(user.identity, user.conn, user.crypto, directory, BusPort(bus, user.id),
                     NoEvents(), clock=lambda: NOW)
    bus.nodes[user.id] = node
    return node


def club():
    """alice (admin), bob and carol in one group with everyone's sender keys shared;
    mallory is known to all but not a member."""
    alice, bob, carol, mallory = (make_user() for _ in range(4))
    everyone = [alice, bob, carol, mallory]
    bus = Bus()
    nodes = {u.id: messenger(u, bus, everyone) for u in everyone}
    a = nodes[alice.id]
    group_id = a.groups.create("Club")
    # bob and carol get the log the way a welcome would give it to them.
    for user in (bob, carol):
        op = a.groups.log_of(group_id).make_op(alice.identity, OpKind.ADD, NOW,
                                               target=user.id, target_key=user.identity.public)
        a.groups.publish_op(group_id, op)
    chain = tuple(op.encode() for op in a.groups.log_of(group_id).chain())
    for user in (bob, carol):
        with atomic(user.conn):
            node = nodes[user.id]
            node.io.apply(node.core.receive_welcome(alice.id, Welcome(group_id, chain)))
    share_sender_keys(group_id, [alice, bob, carol])
    mallory.crypto.sender_key_distribution(group_id, now=NOW)
    share_sender_keys(group_id, [mallory, bob])  # bob even holds mallory's key
    return group_id, nodes, (alice, bob, carol, mallory)
