"""The bootstrap's DHT mirror: health tells the address, accepted records are mirrored,
refused ones are not, and stopping the server stops its DHT node."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from bootstrap.openapi import openapi_document
from bootstrap.server import BootstrapServer, start_bootstrap
from mesh.dht import DhtConfig, DhtNode, dht_digest
from mesh.discovery import DiscoveryClient
from mesh.errors import DiscoveryRefused, RecordNotFound
from mesh.lookup import bootstrap_dht_contact
from tests.conftest import GENEROUS
from tests.integration.mesh.dht_net import DhtNet, no_errors_logged, poll  # noqa: F401
from tests.unit.mesh.dht_helpers import forged_key, make_record, next_record

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_errors_logged")]


@pytest.fixture
async def mirrored(tmp_path: Path) -> AsyncIterator[tuple[BootstrapServer, list[DhtNode]]]:
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "boot.db",
                             GENEROUS,
                             dht_port=0, dht_config=DhtConfig.loopback())
    net = DhtNet()
    try:
        nodes = await net.add(3, join=False)
        for node in nodes:
            await node.join([server.dht.address])
        yield server, nodes
    finally:
        await net.stop_all()
        await server.stop()


async def _health(url: str) -> dict:
    response = await AsyncHTTPClient().fetch(url + "/v1/health")
    return json.loads(response.body)


async def test_health_tells_the_dht_address_as_documented(mirrored) -> None:
    server, _ = mirrored
    health = await _health(server.url)
    assert health["dht"] == {"host": "127.0.0.1", "port": server.dht.address[1]}
    schema = openapi_document()["paths"]["/v1/health"]["get"]["responses"]["200"]
    dht_schema = schema["content"]["application/json"]["schema"]["properties"]["dht"]
    assert set(dht_schema["required"]) == set(health["dht"])
    assert dht_schema["nullable"] is True


async def test_without_a_dht_port_there_is_no_dht(bootstrap_server) -> None:
    assert bootstrap_server.dht is None
    assert (await _health(bootstrap_server.url))["dht"] is None
    client = DiscoveryClient(bootstrap_server.url, make_record()[0])
    assert await bootstrap_dht_contact(client) is None


async def test_registrations_and_updates_are_mirrored_into_the_dht(mirrored) -> None:
    server, nodes = mirrored
    identity, record = make_record()
    client = DiscoveryClient(server.url, identity)
    await client.register(record, [])
    key = dht_digest(record.user_id)
    await poll(lambda: all(n.storage.record(key) == record for n in [*nodes, server.dht]))
    assert await nodes[0].lookup(record.user_id) == record
    newer = next_record(identity, record, endpoints=("ws://127.0.0.1:4444/mesh",))
    await client.update(newer)
    await poll(lambda: all(n.storage.record(key) == newer for n in [*nodes, server.dht]))
    assert await nodes[2].lookup(record.user_id) == newer


async def test_refused_records_are_not_mirrored(mirrored) -> None:
    server, nodes = mirrored
    identity, record = make_record()
    client = DiscoveryClient(server.url, identity)
    await client.register(record, [])
    key = dht_digest(record.user_id)
    await poll(lambda: nodes[1].storage.record(key) == record)
    with pytest.raises(DiscoveryRefused):
        await client.update(record)  # same seq: 409 stale_seq
    forged = forged_key(record)
    with pytest.raises(DiscoveryRefused):  # bad record: 400, nothing stored or mirrored
        await DiscoveryClient(server.url, identity).update(forged)
    _, other = make_record()
    with pytest.raises(DiscoveryRefused):  # signed by someone else: 401
        await DiscoveryClient(server.url, identity).register(other, [])
    with pytest.raises(RecordNotFound):
        await nodes[1].lookup(other.user_id)
    assert await nodes[1].lookup(record.user_id) == record


async def test_stopping_the_server_stops_its_dht_node(tmp_path: Path) -> None:
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "b.db", dht_port=0)
    dht = server.dht
    port = dht.address[1]
    await server.stop()
    assert not dht.running
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # the UDP port is free again
