"""DHT reply amplification (issue 15, finding 5) against real Kademlia nodes on loopback:
a 78-byte find_value used to draw a 2.3 KB record (~30x) at any address named as the
source. A raw UDP socket on 127.0.0.2 plays that address."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
import umsgpack

from mesh.dht import DhtConfig, DhtNode, dht_digest
from mesh.dht_guard import GuardConfig, ReplyGuard
from tests.integration.mesh.dht_net import DhtNet, no_errors_logged  # noqa: F401
from tests.unit.mesh.dht_helpers import largest_record


@pytest.fixture
async def net() -> AsyncIterator[DhtNet]:
    # Loopback is exempt by default (it cannot be spoofed from afar): not here. The
    # per-IP budget is a small one, to see it act.
    guard = GuardConfig(reply_rate=2000, reply_burst=10_000, exempt_loopback=False)
    net = DhtNet(DhtConfig.loopback(guard=guard))
    try:
        yield net
    finally:
        await net.stop_all()


@pytest.fixture
def victim() -> AsyncIterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(0.3)
    yield sock
    sock.close()


def find_value(key: bytes) -> bytes:
    return b"\x00" + os.urandom(20) + umsgpack.packb(["find_value", [os.urandom(20), key]])


def received(sock: socket.socket) -> list[bytes]:
    out = []
    try:
        while True:
            out.append(sock.recv(9000))
    except TimeoutError:
        return out


@pytest.mark.usefixtures("no_errors_logged")
async def test_an_address_that_never_answered_gets_small_replies(net, victim) -> None:
    holder, _ = await net.add(2)
    record = largest_record(now=time.time())
    assert await holder.publish(record) >= 1
    ask = find_value(dht_digest(record.user_id))
    assert len(ask) == 78
    for _ in range(50):
        await asyncio.to_thread(victim.sendto, ask, holder.address)
    got = await asyncio.to_thread(received, victim)
    replies = [d for d in got if d[:1] == b"\x01"]
    pings = [d for d in got if d[:1] == b"\x00"]
    assert len(replies) == 50 and all(len(d) <= 3 * 78 for d in replies)
    assert all(msgpack.unpackb(d[21:]) == [] for d in replies)
    assert len(pings) == 1  # one proving ping (46 bytes): no STOREs, not one per request
    assert sum(map(len, got)) <= 3 * 78 * 50


@pytest.mark.usefixtures("no_errors_logged")
async def test_a_proven_address_has_a_byte_budget(net, victim) -> None:
    holder, _ = await net.add(2)
    record = largest_record(now=time.time())
    await holder.publish(record)
    holder._kad.protocol.guard.answered(victim.getsockname(), time.monotonic())
    ask = find_value(dht_digest(record.user_id))
    start = time.monotonic()
    for _ in range(40):
        await asyncio.to_thread(victim.sendto, ask, holder.address)
    got = await asyncio.to_thread(received, victim)
    elapsed = time.monotonic() - start
    assert any(len(d) > 2300 for d in got)  # the record itself, to a proven address
    assert sum(map(len, got)) <= 10_000 + 2000 * elapsed + 2400
    assert holder._kad.protocol.guard.withheld >= 30


@pytest.mark.usefixtures("no_errors_logged")
async def test_an_honest_node_new_to_the_holder_still_finds_the_record(net) -> None:
    holder, other = await net.add(2)
    record = largest_record(now=time.time())
    await holder.publish(record)
    # A reader whose id is as far from the key as can be, so joining does not hand it
    # a copy of the record (Kademlia gives new nodes the keys they are closest to).
    key = dht_digest(record.user_id)
    reader = DhtNode(net.config, node_id=bytes(b ^ 0xFF for b in key))
    await reader.listen(0, "127.0.0.1")
    net.nodes.append(reader)
    await reader.join([holder.address])
    assert reader.storage.get(key) is None
    # Forget every proof: the holders answer the reader's lookup with an empty list and
    # a ping, the reader answers it and asks again (DhtNode._ask_again).
    for node in (holder, other):
        node._kad.protocol.guard = ReplyGuard(net.config.guard)
    assert await reader.lookup(record.user_id) == record
