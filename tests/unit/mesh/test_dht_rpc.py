"""ParleyProtocol's receive path and reply checks, fed datagrams directly (no sockets).

The transport is a recorder standing in for asyncio's UDP transport; the protocol,
its routing table and the record storage are the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import msgpack
import pytest
import umsgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from mesh.dht_guard import GuardConfig, ReplyGuard
from mesh.dht_records import RecordStorage, dht_digest
from mesh.dht_rpc import ParleyProtocol
from tests.unit.mesh.dht_helpers import forged_key, largest_record, make_record

PEER = ("127.0.0.1", 40001)
NOW = 1_800_000_000.0


class Recorder:
    """Stands in for asyncio's DatagramTransport: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def make_protocol(*, proven: bool = True, guard: GuardConfig | None = None,
                  spawned: list[Any] | None = None) -> tuple[ParleyProtocol, Recorder]:
    """A protocol over a recorder; PEER has answered one of its requests before
    (``proven``), unless asked otherwise. Spawned calls are closed, or kept in
    ``spawned``."""
    storage = RecordStorage(lambda: NOW)

    def spawn(coro: Any) -> None:
        if spawned is None:
            coro.close()
        else:
            spawned.append(coro)

    guard = guard or GuardConfig(exempt_loopback=False)
    protocol = ParleyProtocol(Node(os.urandom(20)), storage, 20, rpc_timeout=0.3,
                              spawn=spawn, guard=ReplyGuard(guard))
    if proven:
        protocol.guard.answered(PEER, time.monotonic())
    transport = Recorder()
    protocol.connection_made(transport)
    return protocol, transport


def request(name: str, *args: Any, msg_id: bytes = b"m" * 20) -> bytes:
    return b"\x00" + msg_id + umsgpack.packb([name, args])  # as a stock rpcudp peer sends


def replies(transport: Recorder) -> list[Any]:
    return [msgpack.unpackb(data[21:], raw=False) for data, _ in transport.sent]


@pytest.fixture
def alice():
    return make_record(now=NOW)


def test_ping_answers_with_our_id_and_learns_the_peer() -> None:
    protocol, transport = make_protocol()
    peer = os.urandom(20)
    protocol.datagram_received(request("ping", peer), PEER)
    assert transport.sent[0][0][:21] == b"\x01" + b"m" * 20
    assert replies(transport) == [protocol.source_node.id]
    assert not protocol.router.is_new_node(Node(peer))


def test_store_keeps_valid_records_and_refuses_forgeries(alice) -> None:
    _, record = alice
    protocol, transport = make_protocol()
    key = dht_digest(record.user_id)
    protocol.datagram_received(request("store", os.urandom(20), key, record.encode()), PEER)
    protocol.datagram_received(request("store", os.urandom(20), key,
                                       forged_key(record).encode()), PEER)
    assert replies(transport) == [True, False]
    assert protocol.storage.get(key) == record.encode()
    protocol.datagram_received(request("find_value", os.urandom(20), key), PEER)
    assert replies(transport)[-1] == {"value": record.encode()}
    protocol.datagram_received(request("find_value", os.urandom(20), b"x" * 20), PEER)
    assert isinstance(replies(transport)[-1], list)  # no value: the closest nodes instead


JUNK = [
    b"", b"\x00", b"\x00" * 21, b"\x02" + b"m" * 20 + b"\x90",            # sizes, unknown kind
    b"\x00" + b"m" * 20 + b"\xc1",                                       # invalid msgpack
    b"\x00" + b"m" * 20 + b"\x91" * 5000,                                # deep nesting
    b"\x00" + b"m" * 20 + b"\x92\xa4ping",                               # truncated
    b"\x00" + b"m" * 20 + b"\x92\xa4ping\x90\x00",                       # trailing bytes
    b"\x00" + b"m" * 20 + b"\x00" * 9000,                                # over 8 KiB
    request("ping"), request("ping", b"short"), request("ping", "text"),  # wrong arguments
    request("ping", b"i" * 20, b"extra"), request("shutdown", b"i" * 20),
    request("store", b"i" * 20, b"k" * 20, 5), request("store", b"i" * 20, b"k", b"v"),
    request("find_node", b"i" * 20, ["k"]), request("find_value", b"i" * 20, {"k": 1}),
    b"\x00" + b"m" * 20 + umsgpack.packb({"ping": [b"i" * 20]}),
    b"\x00" + b"m" * 20 + umsgpack.packb([1, [b"i" * 20]]),
    b"\x00" + b"m" * 20 + umsgpack.packb(["ping", [umsgpack.Ext(5, b"x")]]),
    b"\x00" + b"m" * 20 + b"\x81\x91\x00\x00",                           # map with a list key
]


def test_junk_is_dropped_unanswered_with_one_warning(caplog) -> None:
    protocol, transport = make_protocol()
    with caplog.at_level(logging.DEBUG, logger="mesh.dht"):
        for data in JUNK:
            protocol.datagram_received(data, PEER)
        protocol.datagram_received(request("ping", protocol.source_node.id), PEER)  # our id
    assert transport.sent == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "malformed DHT datagram" in warnings[0].getMessage()
    protocol.datagram_received(request("ping", os.urandom(20)), PEER)
    assert len(transport.sent) == 1  # still serving


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=100).map(lambda b: b"\x00" + b"m" * 20 + b),
    st.lists(st.one_of(st.binary(max_size=25), st.text(max_size=5),
                       st.integers(-(2**63), 2**64 - 1),
                       st.none()), max_size=4).map(
        lambda args: request("store" if len(args) == 3 else "find_value", *args)),
))
def test_arbitrary_datagrams_never_raise_or_log_errors(data: bytes) -> None:
    protocol, transport = make_protocol()
    logger = logging.getLogger("mesh.dht")
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        protocol.datagram_received(data, PEER)
    finally:
        logger.removeHandler(handler)
    assert errors == []
    for sent, _ in transport.sent:  # anything answered was a well-formed call
        assert sent[:1] == b"\x01"


async def _call_and_answer(protocol: ParleyProtocol, transport: Recorder, call: Any,
                           answer: Any) -> tuple[bool, Any]:
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0)
    sent, _ = transport.sent[-1]
    protocol.datagram_received(b"\x01" + sent[1:21] + msgpack.packb(answer, use_bin_type=True),
                               PEER)
    return await task


async def test_replies_are_checked_and_a_nonsense_answer_counts_as_silence() -> None:
    protocol, transport = make_protocol()
    peer = Node(os.urandom(20), *PEER)
    target = Node(os.urandom(20))
    good = [[os.urandom(20), "127.0.0.1", 4000], [os.urandom(20), "::1", 4001]]
    ok, nodes = await _call_and_answer(protocol, transport,
                                       protocol.call_find_node(peer, target), good)
    assert ok and [n[1] for n in nodes] == ["127.0.0.1", "::1"]
    assert not protocol.router.is_new_node(peer)
    for bad in ([[b"short", "127.0.0.1", 1]], [[os.urandom(20), "host.example", 1]],
                [[os.urandom(20), "127.0.0.1", 0]], "text", [[1, 2]] * 3,
                [[os.urandom(20), "127.0.0.1", 1]] * 41):
        ok, data = await _call_and_answer(protocol, transport,
                                          protocol.call_find_node(peer, target), bad)
        assert (ok, data) == (False, None)
        assert protocol.router.is_new_node(peer)  # dropped from the routing table
    for bad in ({"value": "text"}, {"value": b"x" * 5000}, {"value": b"x", "more": 1}):
        ok, _ = await _call_and_answer(protocol, transport,
                                       protocol.call_find_value(peer, target), bad)
        assert not ok
    ok, data = await _call_and_answer(protocol, transport,
                                      protocol.call_find_value(peer, target), {"value": b"x"})
    assert ok and data == {"value": b"x"}
    ok, _ = await _call_and_answer(protocol, transport,
                                   protocol.call_store(peer, target.id, b"v"), "yes")
    assert not ok


async def test_a_reply_after_the_timeout_or_for_nobody_is_ignored() -> None:
    protocol, transport = make_protocol()
    peer = Node(os.urandom(20), *PEER)
    task = asyncio.ensure_future(protocol.call_ping(peer))
    await asyncio.sleep(0)
    msg_id = transport.sent[-1][0][1:21]
    protocol._timeout(msg_id)  # what the rpc timer does
    assert await task == (False, None)
    protocol.datagram_received(b"\x01" + msg_id + msgpack.packb(os.urandom(20)), PEER)
    protocol.datagram_received(b"\x01" + b"z" * 20 + msgpack.packb(os.urandom(20)), PEER)
    task = asyncio.ensure_future(protocol.call_ping(peer))
    await asyncio.sleep(0)
    protocol.fail_outstanding()
    assert await task == (False, None)


# Reply amplification (issue 15, finding 5): 78 bytes used to draw a 2.3 KB record.


def test_an_unproven_address_gets_no_more_than_three_times_its_request() -> None:
    spawned: list[Any] = []
    protocol, transport = make_protocol(proven=False, spawned=spawned)
    record = largest_record(now=NOW)
    key = dht_digest(record.user_id)
    assert protocol.storage.offer(key, record.encode()).holds_offer
    for _ in range(20):  # as many other nodes as a reply can name
        protocol.router.add_contact(Node(os.urandom(20), "127.0.0.9", 4000))
    ask = request("find_value", os.urandom(20), key)
    assert len(ask) == 78
    protocol.datagram_received(ask, PEER)
    protocol.datagram_received(request("find_node", os.urandom(20), key), PEER)
    (value_reply, _), (nodes_reply, _) = transport.sent
    assert replies(transport)[0] == []          # "answer my ping, then ask again"
    assert len(value_reply) <= 3 * 78 and len(nodes_reply) <= 3 * 78
    assert 1 <= len(replies(transport)[1]) < 20  # a node list cut to fit
    # One proving ping went out (the second request did not send another).
    assert [c.__qualname__ for c in spawned] == ["ParleyProtocol.call_ping"]
    spawned[0].close()
    # Once the address answered a request of ours, it gets the value.
    protocol.guard.answered(PEER, time.monotonic())
    protocol.datagram_received(ask, PEER)
    assert replies(transport)[-1] == {"value": record.encode()}
    assert len(transport.sent[-1][0]) > 2300


def test_each_source_ip_has_a_reply_byte_budget() -> None:
    budget = GuardConfig(reply_rate=1.0, reply_burst=5000, exempt_loopback=False)
    protocol, transport = make_protocol(guard=budget)
    record = largest_record(now=NOW)
    key = dht_digest(record.user_id)
    protocol.storage.offer(key, record.encode())
    for port in range(40001, 40006):  # other ports of the same IP share its budget
        protocol.guard.answered(("127.0.0.1", port), time.monotonic())
        protocol.datagram_received(request("find_value", os.urandom(20), key),
                                   ("127.0.0.1", port))
    assert len(transport.sent) == 2 and protocol.guard.withheld == 3
    other = ("127.0.0.2", 40001)
    protocol.guard.answered(other, time.monotonic())
    protocol.datagram_received(request("find_value", os.urandom(20), key), other)
    assert transport.sent[-1][1] == other


def test_guard_tables_are_bounded_and_proofs_expire() -> None:
    guard = ReplyGuard(GuardConfig(proof_ttl=10.0, challenge_interval=5.0, max_addresses=3))
    assert guard.proven(("127.0.0.1", 1), 0.0) and guard.proven(("::1", 1), 0.0)
    guard.answered(("10.0.0.1", 1), 0.0)
    assert guard.proven(("10.0.0.1", 1), 9.9) and not guard.proven(("10.0.0.1", 1), 10.0)
    assert not guard.proven(("10.0.0.1", 2), 1.0)           # proofs are per port
    assert guard.reply_limit(("10.0.0.1", 2), 78, 1.0) == 234
    assert guard.reply_limit(("10.0.0.1", 1), 78, 1.0) is None
    assert guard.challenge(("10.0.0.2", 1), 0.0) and not guard.challenge(("10.0.0.2", 1), 4.0)
    assert guard.challenge(("10.0.0.2", 1), 5.0)
    for i in range(10):
        guard.answered((f"10.0.1.{i}", 1), 0.0)
    assert len(guard._proven) == 3
