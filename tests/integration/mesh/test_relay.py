"""Circuit relays over real Tornado WebSockets on 127.0.0.1: reservations, spliced
circuits carrying end-to-end links, refusals, limits and failover."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import websocket_connect

from mesh import wire
from mesh.errors import DialError, LinkError, RelayRefused
from mesh.link import MAX_MESSAGE
from mesh.relay import RelayLimits, make_reserve, message_type, read_reserved, relay_address
from mesh.relay_client import RelayClient
from mesh.relay_server import RelayService, relay_routes
from mesh.transport import LinkAcceptor
from mesh.websocket import dial
from tests.integration.mesh.conftest import wait_for
from tests.unit.mesh.test_link_helpers import Recorder, make_node

TOPIC = b"r" * 16


class RelayHandle:
    def __init__(self, service: RelayService, server: HTTPServer, port: int) -> None:
        self.service, self.server, self.port = service, server, port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()
        self.service.stop()


@pytest.fixture
async def relay_server() -> AsyncIterator[Callable[..., RelayHandle]]:
    handles: list[RelayHandle] = []

    def start(limits: RelayLimits | None = None) -> RelayHandle:
        service = RelayService(limits, tick=0.05)
        server = HTTPServer(Application(relay_routes(service)))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        handle = RelayHandle(service, server, sockets[0].getsockname()[1])
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        await handle.stop()


class Reserving:
    """A node behind a router: accepts links only through its relay reservations."""

    def __init__(self, relays: list[str], want: int = 1) -> None:
        self.node = make_node()
        self.recorder = Recorder()
        self.acceptor = LinkAcceptor(self.node.identity, self.node.record,
                                     **self.recorder.kwargs())
        self.published: list[tuple[str, ...]] = []
        self.client = RelayClient(self.node.identity, relays, self.acceptor.accept_inbound,
                                  on_change=self.published.append, want=want,
                                  backoff_base=0.05, backoff_cap=0.2)

    async def stop(self) -> None:
        await self.client.close()
        await self.acceptor.close_all()


@pytest.fixture
async def reserving() -> AsyncIterator[Callable[..., Reserving]]:
    made: list[Reserving] = []

    def make(relays: list[str], want: int = 1) -> Reserving:
        r = Reserving(relays, want)
        made.append(r)
        r.client.start()
        return r

    yield make
    for r in made:
        await r.stop()


async def test_a_link_through_the_relay_is_end_to_end(relay_server, reserving):
    relay = relay_server()
    alice = reserving([relay.url])
    await wait_for(lambda: alice.client.addresses)
    address = relay_address(relay.url, alice.node.user_id)
    assert alice.published == [(address,)]
    bob, rec = make_node(), Recorder()
    conn = await dial(address, bob.identity, bob.record, expected_peer=alice.node.user_id,
                      **rec.kwargs())
    assert conn.peer == alice.node.record
    await alice.recorder.until(lambda: alice.recorder.established)
    (inbound,) = alice.recorder.established
    assert inbound.peer == bob.record
    assert inbound.link.handshake_hash == conn.link.handshake_hash  # no one in between
    secret = b"the plaintext the relay must not see"
    conn.send(wire.Publish(TOPIC, bob.user_id, 1, secret))
    conn.send(wire.Chunk(b"f" * 32, 0, b"c" * wire.MAX_CHUNK_DATA))
    inbound.send(wire.IHave(TOPIC, (b"i" * 32,)))
    await alice.recorder.until(lambda: len(alice.recorder.frames) == 2)
    await rec.until(lambda: rec.frames)
    assert alice.recorder.frames[0][1].payload == secret
    assert relay.service.relay.relayed_bytes > wire.MAX_CHUNK_DATA
    conn.close("normal")
    await alice.recorder.until(lambda: alice.recorder.closed)
    await wait_for(lambda: relay.service.relay.circuit_count() == 0)


async def test_dialling_an_id_without_reservation_is_refused_before_upgrade(relay_server):
    relay = relay_server()
    bob, nobody = make_node(), make_node()
    with pytest.raises(DialError, match="404"):
        await dial(relay_address(relay.url, nobody.user_id), bob.identity, bob.record)
    client = AsyncHTTPClient()
    with pytest.raises(HTTPClientError) as err:
        await client.fetch(f"http://127.0.0.1:{relay.port}/relay/{nobody.user_id}")
    assert err.value.code == 404
    assert json.loads(err.value.response.body)["error"] == "no_reservation"
    with pytest.raises(HTTPClientError) as err:
        await client.fetch(f"http://127.0.0.1:{relay.port}/relay/accept/{'ab' * 16}")
    assert err.value.code == 404


async def test_a_stranger_cannot_reserve_or_answer_for_someone_else(relay_server, reserving):
    relay = relay_server()
    alice = make_node()
    # Mallory signs with her own key but claims alice's key: refused.
    ws = await websocket_connect(f"{relay.url}/relay")
    challenge = await ws.read_message()
    mallory = make_node()
    forged = make_reserve(mallory.identity, f"{relay.url}/relay", challenge)
    forged = forged.replace(mallory.identity.public, alice.identity.public)
    ws.write_message(forged, binary=True)
    with pytest.raises(RelayRefused) as err:
        read_reserved(await ws.read_message())
    assert err.value.reason == "bad_signature"
    assert await ws.read_message() is None  # and the relay hung up
    ws.close()
    assert relay.service.relay.reservations == {}
    # Mallory holds her own reservation; a dialer that expects alice there is refused by
    # the end-to-end handshake, whatever the relay does.
    mal = reserving([relay.url])
    await wait_for(lambda: mal.client.addresses)
    bob = make_node()
    with pytest.raises(LinkError) as err:
        await dial(relay_address(relay.url, mal.node.user_id), bob.identity, bob.record,
                   expected_peer=alice.user_id)
    assert err.value.reason == "wrong_peer"


async def test_garbage_on_the_reservation_is_refused(relay_server):
    relay = relay_server()
    for bad in (b"\xc1", "text", b"x" * 5000):
        ws = await websocket_connect(f"{relay.url}/relay")
        await ws.read_message()
        ws.write_message(bad, binary=not isinstance(bad, str))
        with pytest.raises(RelayRefused) as err:
            read_reserved(await ws.read_message())
        assert err.value.reason == "bad_request"
        assert await ws.read_message() is None
        ws.close()
    assert relay.service.relay.reservations == {}


async def test_a_full_relay_refuses_clearly_serves_the_old_and_nodes_fail_over(
        relay_server, reserving):
    full = relay_server(RelayLimits(max_reservations=1))
    spare = relay_server()
    first = reserving([full.url])
    await wait_for(lambda: first.client.addresses)
    second = reserving([full.url, spare.url])
    await wait_for(lambda: second.client.addresses)
    assert second.client.addresses == (relay_address(spare.url, second.node.user_id),)
    status = second.client.status[full.url]
    assert (status.state, status.reason) == ("refused", "relay_full")
    # The old reservation still carries links.
    bob = make_node()
    conn = await dial(first.client.addresses[0], bob.identity, bob.record,
                      expected_peer=first.node.user_id)
    assert conn.established
    conn.close()


async def test_reservation_moves_to_another_relay_when_the_relay_dies(
        relay_server, reserving):
    one, two = relay_server(), relay_server()
    alice = reserving([one.url, two.url])
    await wait_for(lambda: alice.client.addresses)
    assert alice.client.addresses == (relay_address(one.url, alice.node.user_id),)
    await one.stop()
    await wait_for(lambda: alice.client.addresses
                   == (relay_address(two.url, alice.node.user_id),))
    bob = make_node()
    conn = await dial(alice.client.addresses[0], bob.identity, bob.record,
                      expected_peer=alice.node.user_id)
    assert conn.established
    conn.close()


async def test_a_circuit_over_its_byte_budget_is_closed(relay_server, reserving):
    relay = relay_server(RelayLimits(circuit_bytes=600 * 1024))
    alice = reserving([relay.url])
    await wait_for(lambda: alice.client.addresses)
    bob, rec = make_node(), Recorder()
    conn = await dial(alice.client.addresses[0], bob.identity, bob.record,
                      expected_peer=alice.node.user_id, **rec.kwargs())
    for i in range(3):
        conn.send(wire.Chunk(b"f" * 32, i, b"c" * wire.MAX_CHUNK_DATA))
    await rec.until(lambda: rec.closed)
    await alice.recorder.until(lambda: alice.recorder.closed)
    assert len(alice.recorder.frames) < 3


async def test_managers_link_through_a_relay_and_report_the_path(relay_server, managed):
    relay = relay_server()
    a, b = managed(), managed()
    client = RelayClient(b.node.identity, [relay.url], b.manager.accept_relayed)
    client.start()
    try:
        await wait_for(lambda: client.addresses)
        a.manager.set_topic(TOPIC, {b.user_id: list(client.addresses)})
        b.manager.set_topic(TOPIC, {a.user_id: []})
        await wait_for(lambda: a.manager.link_paths() == {b.user_id: "relayed"})
        await wait_for(lambda: b.manager.link_paths() == {a.user_id: "relayed"})
        a.manager.link_for(b.user_id).send(wire.Graft(TOPIC))
        await wait_for(lambda: b.frames == [(a.user_id, wire.Graft(TOPIC))])
    finally:
        await client.close()


async def test_oversized_messages_on_a_circuit_close_it(relay_server, reserving):
    relay = relay_server()
    alice = reserving([relay.url])
    await wait_for(lambda: alice.client.addresses)
    ws = await websocket_connect(alice.client.addresses[0])
    ws.write_message(b"x" * (MAX_MESSAGE + 1), binary=True)
    assert await ws.read_message() is None  # the relay dropped the circuit
    assert ws.close_code == 1009
    ws.close()
    await wait_for(lambda: relay.service.relay.circuit_count() == 0)
    assert relay.service.relay.relayed_bytes == 0


async def test_a_flood_of_reservation_attempts_is_refused(relay_server):
    relay = relay_server(RelayLimits(reserve_rate=0.1, reserve_burst=3))
    answers = []
    for _ in range(5):
        ws = await websocket_connect(f"{relay.url}/relay")
        answers.append(message_type(await ws.read_message()))
        ws.close()
    assert answers == ["challenge"] * 3 + ["refused"] * 2
    assert relay.service.relay.reservations == {}


async def test_reservations_are_renewed_before_they_expire(relay_server, reserving):
    relay = relay_server(RelayLimits(reservation_ttl=2.0))  # renewed after 1.5 s
    alice = reserving([relay.url])
    await wait_for(lambda: alice.client.addresses)
    first = relay.service.relay.reservations[alice.node.user_id].expires
    await wait_for(lambda: relay.service.relay.reservations.get(alice.node.user_id)
                   is not None and relay.service.relay.reservations[
                       alice.node.user_id].expires > first + 1.0, within=5.0)
    assert alice.client.status[relay.url].state == "reserved"
    assert alice.published == [(relay_address(relay.url, alice.node.user_id),)]
