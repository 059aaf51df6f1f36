"""Discovery: bootstrap first, the DHT when the bootstrap is gone, slow or stale.

A real bootstrap server with its DHT mirror node, and real DHT nodes that join it
through the address /v1/health tells them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bootstrap.server import BootstrapServer, start_bootstrap
from mesh.dht import DhtConfig, DhtNode, dht_digest
from mesh.discovery import DiscoveryClient
from mesh.errors import DiscoveryUnavailable, RecordNotFound
from mesh.identity import KeyPair
from mesh.lookup import Discovery, DiscoveryMode, bootstrap_dht_contact
from tests.conftest import GENEROUS
from tests.integration.mesh.dht_net import DhtNet, no_errors_logged, poll  # noqa: F401
from tests.unit.mesh.dht_helpers import make_record, next_record

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_errors_logged")]


class World:
    """A bootstrap with a DHT node, and four DHT nodes joined through it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.net = DhtNet()
        self.server: BootstrapServer | None = None
        self.nodes: list[DhtNode] = []

    async def start(self) -> None:
        self.server = start_bootstrap("127.0.0.1", 0, self.tmp_path / "boot.db",
                                      GENEROUS,
                                      dht_port=0, dht_config=DhtConfig.loopback())
        contact = await bootstrap_dht_contact(self.client(KeyPair.generate()))
        assert contact == self.server.dht.address
        self.nodes = await self.net.add(4, join=False)
        for node in self.nodes:
            assert await node.join([contact]) == 1

    def client(self, identity: KeyPair) -> DiscoveryClient:
        assert self.server is not None
        return DiscoveryClient(self.server.url, identity, timeout=2.0)

    async def stop_bootstrap(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def register(self, identity, record) -> None:
        await self.client(identity).register(record, [])
        key = dht_digest(record.user_id)
        await poll(lambda: all(n.storage.record(key) == record for n in self.nodes))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    try:
        await world.start()
        yield world
    finally:
        await world.stop_bootstrap()
        await world.net.stop_all()


async def test_without_the_bootstrap_a_contact_is_found_through_the_dht(world: World) -> None:
    identity, record = make_record()
    await world.register(identity, record)  # the bootstrap mirrors it into the DHT
    url = world.server.url
    await world.stop_bootstrap()
    me = KeyPair.generate()
    discovery = Discovery(bootstrap=DiscoveryClient(url, me, timeout=1.0), dht=world.nodes[2])
    assert await discovery.lookup(record.user_id) == record
    bundle = await discovery.bundle(record.user_id)
    assert bundle.record == record and bundle.prekey == record.last_resort_prekey


async def test_a_moved_member_is_found_by_seq_whether_or_not_the_bootstrap_knows(
        world: World) -> None:
    identity, old = make_record(endpoints=("ws://127.0.0.1:3001/mesh",))
    await world.register(identity, old)
    me = KeyPair.generate()
    discovery = Discovery(bootstrap=world.client(me), dht=world.nodes[1])
    assert await discovery.lookup(old.user_id) == old
    # the member moved while it could not reach the bootstrap: only the DHT knows
    new = next_record(identity, old, endpoints=("ws://127.0.0.1:3002/mesh",))
    assert await world.nodes[3].publish(new) >= 4
    assert await discovery.lookup(old.user_id) == old  # the bootstrap answers first...
    assert await discovery.lookup(old.user_id, newer_than=old.seq) == new  # ...unless stale
    url = world.server.url
    await world.stop_bootstrap()
    discovery = Discovery(bootstrap=DiscoveryClient(url, me, timeout=1.0), dht=world.nodes[1])
    assert await discovery.lookup(old.user_id, identity_key=old.identity_key) == new


async def test_dht_only_mode_never_asks_the_bootstrap(world: World) -> None:
    identity, record = make_record()
    await world.register(identity, record)
    dead = DiscoveryClient("http://127.0.0.1:9", KeyPair.generate())  # would be refused
    discovery = Discovery(bootstrap=dead, dht=world.nodes[0], mode=DiscoveryMode.DHT)
    assert discovery.bootstrap is None
    assert await discovery.lookup(record.user_id) == record
    with pytest.raises(RecordNotFound):
        await discovery.lookup("123456789012345")


async def test_a_silent_bootstrap_times_out_into_the_dht(world: World) -> None:
    identity, record = make_record()
    await world.register(identity, record)

    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, reads nothing, answers nothing

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    try:
        port = silent.sockets[0].getsockname()[1]
        client = DiscoveryClient(f"http://127.0.0.1:{port}", KeyPair.generate(), timeout=30)
        discovery = Discovery(bootstrap=client, dht=world.nodes[0], bootstrap_timeout=0.3)
        assert await discovery.lookup(record.user_id) == record
        assert held  # the bootstrap was asked and kept silent
    finally:
        silent.close()
        for writer in held:
            writer.close()
            await writer.wait_closed()
        await silent.wait_closed()


async def test_errors_say_whether_anything_answered(world: World) -> None:
    me = KeyPair.generate()
    discovery = Discovery(bootstrap=world.client(me), dht=world.nodes[0])
    with pytest.raises(RecordNotFound):  # 404 and an empty DHT lookup
        await discovery.lookup("123456789012345")
    bootstrap_only = Discovery(bootstrap=world.client(me), mode=DiscoveryMode.BOOTSTRAP)
    with pytest.raises(RecordNotFound):
        await bootstrap_only.lookup("123456789012345")
    lonely = (await world.net.add(1, join=False))[0]
    await world.stop_bootstrap()
    nowhere = Discovery(bootstrap=DiscoveryClient("http://127.0.0.1:9", me, timeout=1.0),
                        dht=lonely)
    with pytest.raises(DiscoveryUnavailable):
        await nowhere.lookup("123456789012345")
    with pytest.raises(ValueError, match="needs a DHT node"):
        Discovery(mode=DiscoveryMode.DHT)
    with pytest.raises(ValueError, match="needs a bootstrap"):
        Discovery(dht=lonely, mode=DiscoveryMode.BOOTSTRAP)
