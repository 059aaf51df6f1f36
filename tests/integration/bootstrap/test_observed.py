"""The bootstrap's observed-address and dial-back endpoints, and its circuit relay."""

from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from bootstrap.server import start_bootstrap
from mesh.addresses import AddressBook, Kind
from mesh.errors import ReachabilityError
from mesh.reachability import ReachabilityService, probe
from mesh.relay import relay_address
from mesh.relay_client import RelayClient
from mesh.transport import LinkAcceptor
from mesh.websocket import dial
from tests.conftest import GENEROUS
from tests.integration.bootstrap.test_api import raw
from tests.integration.mesh.conftest import wait_for
from tests.unit.mesh.test_link_helpers import make_node


async def fetch(url: str, body: object | None = None) -> tuple[int, dict]:
    kwargs = {} if body is None else {"method": "POST", "body": json.dumps(body)}
    try:
        response = await AsyncHTTPClient().fetch(url, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body)


async def test_observed_address_is_the_clients(bootstrap_server):
    status, body = await fetch(f"{bootstrap_server.url}/v1/observed")
    assert status == 200 and body["address"] == "127.0.0.1" and 0 < body["port"] < 65536


async def test_dialback_reaches_a_listening_port_and_not_a_closed_one(bootstrap_server):
    listener = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        port = listener.getsockname()[1]
        status, body = await fetch(f"{bootstrap_server.url}/v1/dialback", {"port": port})
        assert status == 200
        assert body == {"address": "127.0.0.1", "port": port, "reachable": True,
                        "detail": "connected"}
        status, body = await fetch(f"{bootstrap_server.url}/v1/dialback",
                                   {"port": closed_port})
        assert (body["reachable"], body["detail"]) == (False, "refused")
    finally:
        listener.close()


@pytest.mark.parametrize("body", [{"port": 0}, {"port": "80"}, {"port": True}, {},
                                  {"port": 80, "host": "192.0.2.1"}, [80]])
async def test_dialback_refuses_bad_requests(bootstrap_server, body):
    status, answer = await fetch(f"{bootstrap_server.url}/v1/dialback", body)
    assert status == 400 and answer["error"] in {"bad_port", "bad_request"}


async def test_a_loopback_observation_is_not_taken_as_a_public_address(bootstrap_server):
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(ReachabilityError, match="cannot be anyone's address"):
            await probe(bootstrap_server.url, listener.getsockname()[1])
    finally:
        listener.close()


async def test_the_bootstrap_is_a_relay_by_default(bootstrap_server):
    assert bootstrap_server.relay is not None
    alice, bob = make_node(), make_node()
    acceptor = LinkAcceptor(alice.identity, alice.record)
    client = RelayClient(alice.identity, [bootstrap_server.url], acceptor.accept_inbound)
    client.start()
    try:
        await wait_for(lambda: client.addresses)
        assert client.addresses == (relay_address(bootstrap_server.url, alice.user_id),)
        conn = await dial(client.addresses[0], bob.identity, bob.record,
                          expected_peer=alice.user_id)
        assert conn.peer == alice.record
        conn.close()
    finally:
        await client.close()
        await acceptor.close_all()


async def test_reachability_service_keeps_relay_candidates_and_reports(bootstrap_server):
    alice = make_node()
    acceptor = LinkAcceptor(alice.identity, alice.record)
    changes: list[tuple[str, ...]] = []
    book = AddressBook(changes.append)
    book.add("ws://127.0.0.1:9/mesh", Kind.LAN)
    listener = socket.create_server(("127.0.0.1", 0))
    service = ReachabilityService(alice.identity, book, bootstrap=bootstrap_server.url,
                                  mesh_port=listener.getsockname()[1],
                                  relays=[bootstrap_server.url],
                                  accept_relayed=acceptor.accept_inbound, retry=0.05)
    service.start()
    try:
        address = relay_address(bootstrap_server.url, alice.user_id)
        await wait_for(lambda: address in book.endpoints())
        await wait_for(lambda: service.problem.startswith("bad_observed"))
        report = service.to_json()
        assert report["state"] == "relayed" and report["relays"] == [address]
        assert report["relay_status"][0]["state"] == "reserved"
        assert changes[-1] == ("ws://127.0.0.1:9/mesh", address)
    finally:
        await service.close()
        await acceptor.close_all()
        listener.close()


async def test_behind_a_trusted_proxy_the_named_client_is_observed_and_dialed(
        tmp_path) -> None:
    """The proxy (127.0.0.5) names the client 127.0.0.2: that is the observed address
    (port unknown: 0) and the one dialed back; the same header from anyone else is
    ignored."""
    config = replace(GENEROUS, trusted_proxies=("127.0.0.5",))
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "b.db", config)
    listener = socket.create_server(("127.0.0.2", 0))  # nothing on 127.0.0.1 at this port
    port = listener.getsockname()[1]
    named = {"X-Real-IP": "127.0.0.2", "Content-Type": "application/json"}
    try:
        async def ask(path: str, source: str, body: bytes | None = None) -> dict:
            response = await raw(server.url, "POST" if body else "GET", path, body,
                                 headers=named, source=source)
            assert response.code == 200
            return json.loads(response.body)

        assert await ask("/v1/observed", "127.0.0.5") == {"address": "127.0.0.2", "port": 0}
        dial = json.dumps({"port": port}).encode()
        assert await ask("/v1/dialback", "127.0.0.5", dial) == {
            "address": "127.0.0.2", "port": port, "reachable": True, "detail": "connected"}
        seen = await ask("/v1/observed", "127.0.0.1")
        assert seen["address"] == "127.0.0.1" and seen["port"] > 0
        assert await ask("/v1/dialback", "127.0.0.1", dial) == {
            "address": "127.0.0.1", "port": port, "reachable": False, "detail": "refused"}
    finally:
        listener.close()
        await server.stop()
