"""20 real DHT nodes on 127.0.0.1: publish, look up, newer seq, churn, junk, big records."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
import umsgpack
from kademlia.node import Node

from mesh.dht import DhtConfig, DhtNode, dht_digest
from mesh.dht_records import MAX_VALUE_BYTES
from mesh.errors import DhtUnavailable, LocalError, RecordError, RecordNotFound
from tests.integration.mesh.dht_net import DhtNet, no_errors_logged, poll  # noqa: F401
from tests.unit.mesh.dht_helpers import largest_record, make_record, next_record

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_errors_logged")]


@pytest.fixture
async def net() -> AsyncIterator[DhtNet]:
    net = DhtNet()
    try:
        yield net
    finally:
        await net.stop_all()


@pytest.fixture
async def twenty(net: DhtNet) -> list[DhtNode]:
    nodes = await net.add(20)
    assert all(n.routing_table_size() >= 10 for n in nodes)
    return nodes


async def test_a_record_published_at_one_node_is_found_from_every_other(
        twenty: list[DhtNode]) -> None:
    _, record = make_record()
    held = await twenty[3].publish(record)
    assert held == 20  # k = 20: every node is among the closest
    for node in twenty:
        assert await node.lookup(record.user_id) == record


async def test_updated_endpoints_win_by_seq_everywhere(twenty: list[DhtNode]) -> None:
    identity, old = make_record(endpoints=("ws://127.0.0.1:1001/mesh",))
    new = next_record(identity, old, endpoints=("ws://127.0.0.1:1002/mesh",))
    await twenty[0].publish(old)
    await twenty[11].publish(new)
    assert await twenty[5].publish(old) == 20  # a replayed old one: all keep the newer
    key = dht_digest(old.user_id)
    assert all(n.storage.record(key) == new for n in twenty)
    for node in twenty:
        assert (await node.lookup(old.user_id)).endpoints == ("ws://127.0.0.1:1002/mesh",)


async def test_a_stale_minority_is_outvoted_and_repaired(twenty: list[DhtNode]) -> None:
    identity, old = make_record()
    new = next_record(identity, old)
    await twenty[0].publish(new)
    key = dht_digest(old.user_id)
    stale = twenty[15:]
    for node in stale:  # as if these had been offline when `new` was published
        node.storage._data.pop(key)
        assert node.storage.offer(key, old.encode()).holds_offer
    # the package's Server.get would answer from the local (stale) copy; ours asks around
    for node in stale:
        assert await node.lookup(old.user_id) == new
    await poll(lambda: all(n.storage.record(key) == new for n in stale))
    for node in twenty[:15]:
        assert await node.lookup(old.user_id) == new


async def test_identity_key_filter_ignores_records_of_another_key(
        twenty: list[DhtNode]) -> None:
    _, record = make_record()
    await twenty[0].publish(record)
    assert await twenty[1].lookup(record.user_id, identity_key=record.identity_key) == record
    with pytest.raises(RecordNotFound):
        await twenty[1].lookup(record.user_id, identity_key=b"\x05" + b"\x01" * 32)


async def test_unknown_ids_and_lonely_nodes_get_typed_errors(net: DhtNet) -> None:
    nodes = await net.add(3)
    with pytest.raises(RecordNotFound):
        await nodes[1].lookup("123456789012345")
    lonely = (await net.add(1, join=False))[0]
    with pytest.raises(DhtUnavailable):
        await lonely.lookup("123456789012345")
    dead = (await net.add(1, join=False))[0]
    address = dead.address
    await dead.stop()
    with pytest.raises(DhtUnavailable):
        await lonely.join([address])
    with pytest.raises(DhtUnavailable):
        await dead.lookup("123456789012345")
    # Nothing new starts on a stopped node (a lookup resuming after stop() would repair
    # replicas): the work is refused and its coroutine closed, not left unawaited.
    late = asyncio.sleep(0)
    with pytest.raises(DhtUnavailable):
        dead.spawn(late)
    assert late.cr_frame is None
    _, expired = make_record(now=1_000_000_000)
    with pytest.raises(RecordError):
        await nodes[0].publish(expired)


async def test_lookups_survive_30_percent_of_nodes_dying_silently(twenty: list[DhtNode]) -> None:
    records = [make_record()[1] for _ in range(5)]
    for i, record in enumerate(records):
        await twenty[i].publish(record)
    for node in random.Random(8).sample(twenty, 6):
        await node.stop()
    alive = [n for n in twenty if n.running]
    for node in alive:
        for record in records:
            assert await node.lookup(record.user_id) == record


async def test_the_largest_record_travels_well_under_the_rpc_limit(
        twenty: list[DhtNode]) -> None:
    record = largest_record()
    value = record.encode()
    request = umsgpack.packb(["store", (b"n" * 20, dht_digest(record.user_id), value)])
    assert len(value) <= MAX_VALUE_BYTES and 21 + len(request) < 8192 // 2
    assert await twenty[2].publish(record) == 20
    assert await twenty[17].lookup(record.user_id) == record


async def test_replies_waiting_in_the_socket_when_the_loop_wakes_late_count(
        net: DhtNet) -> None:
    """asyncio reads one datagram per loop pass and runs the timers that fell due in the
    pass that reads the first: a node busy past the reply timeout (verifying twenty
    STOREs of the largest record on a loaded machine did it) used to count one reply
    and call the others silent. Three peers answer at once; the loop then blocks."""
    node = (await net.add(1, join=False))[0]
    protocol = node._kad.protocol
    peers = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        peers.append(sock)
    try:
        calls = [asyncio.ensure_future(protocol.call_ping(Node(os.urandom(20),
                                                                *s.getsockname())))
                 for s in peers]
        await asyncio.sleep(0)  # the pings go out
        for sock in peers:
            request, addr = sock.recvfrom(9000)
            sock.sendto(b"\x01" + request[1:21] + msgpack.packb(os.urandom(20)), addr)
        time.sleep(net.config.rpc_timeout + 0.1)  # noqa: ASYNC251 - the busy loop itself
        results = await asyncio.gather(*calls)
    finally:
        for sock in peers:
            sock.close()
    assert [ok for ok, _ in results] == [True, True, True]
    assert node.routing_table_size() == 3


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


async def test_malformed_datagrams_do_not_crash_a_node(twenty: list[DhtNode], caplog) -> None:
    target = twenty[4]
    _, record = make_record()
    await twenty[0].publish(record)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client,
                                                           remote_addr=target.address)
    rng = random.Random(4)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))) for _ in range(200)]
    junk += [b"\x00" + b"m" * 20 + b"\x91" * 8000, b"\x01" + b"m" * 20 + b"\xc0",
             b"\x00" + b"m" * 20 + umsgpack.packb(["store", [b"i" * 20, b"k" * 20, 5]]),
             b"\x00" + b"m" * 20 + umsgpack.packb(["find_node", [b"i" * 20]]),
             b"\x00" * 65000]
    try:
        with caplog.at_level(logging.WARNING):
            for data in junk:
                transport.sendto(data)
            # a well-formed ping after the junk: its answer means the junk was processed
            transport.sendto(b"\x00" + b"p" * 20 + umsgpack.packb(["ping", [b"c" * 20]]))
            async with asyncio.timeout(5):
                reply = await client.replies.get()
        assert reply[:21] == b"\x01" + b"p" * 20
        assert client.replies.empty()  # nothing of the junk was answered
    finally:
        transport.close()
    problems = [r for r in caplog.records if r.name.startswith(("mesh", "kademlia", "rpcudp",
                                                                "asyncio"))]
    assert len(problems) == 1 and problems[0].levelno == logging.WARNING
    assert target.running
    assert await target.lookup(record.user_id) == record


async def test_publish_own_republishes_and_asks_for_a_fresh_signature(net: DhtNet) -> None:
    nodes = await net.add(6)
    owner = (await net.add(1, config=DhtConfig.loopback(republish_interval=0.2,
                                                        resign_after=3600)))[0]
    identity, first = make_record()
    owner.publish_own(first)
    key = dht_digest(first.user_id)
    await poll(lambda: all(n.storage.record(key) == first for n in nodes))
    # a node that lost the record gets it back at the next republish
    nodes[0].storage._data.clear()
    await poll(lambda: nodes[0].storage.record(key) == first)
    second = next_record(identity, first, endpoints=("ws://127.0.0.1:2/mesh",))
    owner.publish_own(second)
    await poll(lambda: all(n.storage.record(key) == second for n in nodes))

    resigned: list[int] = []

    async def resign(record):
        fresh = next_record(identity, record)
        resigned.append(fresh.seq)
        return fresh

    old = next_record(identity, second, now=second.updated_at - 7200)  # 2 h old: re-sign
    owner.publish_own(old, resign=resign)
    await poll(lambda: all(n.storage.record(key) is not None
                           and n.storage.record(key).seq == old.seq + 1 for n in nodes))
    assert resigned[0] == old.seq + 1


async def test_hourly_upkeep_republishes_held_records_to_nodes_that_lost_them(
        net: DhtNet) -> None:
    nodes = await net.add(8, config=DhtConfig.loopback(republish_interval=0))
    _, record = make_record()
    await nodes[0].publish(record)
    key = dht_digest(record.user_id)
    nodes[5].storage._data.clear()  # lost it (say, restarted)
    await nodes[2].refresh()
    assert nodes[5].storage.record(key) == record


async def test_contacts_for_invites_and_no_pickle(twenty: list[DhtNode], tmp_path) -> None:
    contacts = twenty[0].contacts(4)
    assert len(contacts) == 4
    live = {n.address for n in twenty}
    assert all(c in live for c in contacts)
    kad = twenty[0]._kad
    with pytest.raises(LocalError):
        kad.save_state(tmp_path / "state")
    with pytest.raises(LocalError):
        await kad.load_state(tmp_path / "state", 0)
    with pytest.raises(LocalError):
        await kad.get(b"key")
    assert not (tmp_path / "state").exists()
