"""Poisoning: malicious DHT nodes serving and STOREing forged records change nothing.

Each attacker is the unmodified `kademlia` package's Server (it stores and serves
whatever it is given), with its node id set to the victim's key so that it is the
closest node to it and every lookup asks it first (the last bit is flipped: the
package's routing table never returns a node whose id equals the target itself).
It holds a forgery (its storage never lets it go), and STOREs it at every honest node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from kademlia.network import Server
from kademlia.node import Node
from kademlia.storage import ForgetfulStorage

from mesh.dht import DhtNode, dht_digest
from mesh.errors import RecordNotFound
from tests.integration.mesh.dht_net import DhtNet, no_errors_logged  # noqa: F401
from tests.unit.mesh.dht_helpers import bad_signature, forged_key, make_record, next_record

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_errors_logged")]


class Stubborn(ForgetfulStorage):
    """Keeps the first value stored under a key (an attacker ignoring corrections)."""

    def __setitem__(self, key: bytes, value: object) -> None:
        if key not in self.data:
            super().__setitem__(key, value)


class Attackers:
    def __init__(self) -> None:
        self.servers: list[Server] = []

    async def start(self, key: bytes, value: object, honest: list[DhtNode]) -> Server:
        evil = Server(node_id=key[:-1] + bytes([key[-1] ^ 1]), storage=Stubborn())
        evil.storage[key] = value
        await evil.listen(0, "127.0.0.1")
        self.servers.append(evil)
        await evil.bootstrap([honest[0].address])
        results = await asyncio.gather(*(
            evil.protocol.call_store(Node(n.node_id, *n.address), key, value) for n in honest))
        assert all(answered for answered, _ in results)  # honest nodes answer (False)
        return evil

    async def stop(self) -> None:
        for evil in self.servers:
            evil.stop()
            for future, timer in evil.protocol._outstanding.values():
                timer.cancel()
                if not future.done():
                    future.set_result((False, None))
            evil.protocol._outstanding.clear()
        await asyncio.sleep(0)


@pytest.fixture
async def network() -> AsyncIterator[tuple[list[DhtNode], Attackers]]:
    net, attackers = DhtNet(), Attackers()
    try:
        yield await net.add(20), attackers
    finally:
        await attackers.stop()
        await net.stop_all()


async def test_forged_records_under_a_victims_key_change_no_lookup(network, caplog) -> None:
    honest, attackers = network
    victims = []
    for i in range(4):
        identity, old = make_record()
        new = next_record(identity, old, endpoints=(f"ws://127.0.0.1:{2000 + i}/mesh",))
        await honest[i].publish(new)
        victims.append((old, new))
    forgeries = [
        victims[0][0].encode(),                      # replayed old seq (genuine, stale)
        make_record()[1].encode(),                   # another user's valid record
        forged_key(victims[2][1]).encode(),          # the victim's id, the attacker's key
        bad_signature(victims[3][1]),                # higher seq, signature not redone
    ]
    for (_, new), value in zip(victims, forgeries, strict=True):
        await attackers.start(dht_digest(new.user_id), value, honest)

    with caplog.at_level(logging.DEBUG, logger="mesh.dht"):
        for node in honest:
            for _, new in victims:
                assert await node.lookup(new.user_id) == new
    for _, new in victims:
        key = dht_digest(new.user_id)
        assert all(n.storage.record(key) == new for n in honest)
    ignored = {r.getMessage().split()[2] for r in caplog.records
               if r.getMessage().startswith("ignored a ")}
    assert {"wrong_key", "id_mismatch", "bad_signature"} <= ignored  # the attackers were asked


async def test_a_forgery_alone_is_not_found_and_never_cached(network) -> None:
    honest, attackers = network
    _, victim = make_record()
    key = dht_digest(victim.user_id)
    await attackers.start(key, forged_key(victim).encode(), honest)
    for node in honest[:5]:
        with pytest.raises(RecordNotFound):
            await node.lookup(victim.user_id)
    assert all(n.storage.get(key) is None for n in honest)
