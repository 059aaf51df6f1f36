"""PortMapper against the lab's NAT-PMP gateway logic on 127.0.0.1 (rules kept in memory;
no UPnP fallback here: its search would multicast beyond loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from mesh.portmap import Op, PortMapper
from tests.integration.mesh.conftest import wait_for
from tests.lab.natpmp_server import Gateway, Lease, serve

PUBLIC = "203.0.113.1"


class Rules:
    """The forwarding table the gateway would program (nft in the lab)."""

    def __init__(self) -> None:
        self.active: dict[int, Lease] = {}
        self.log: list[tuple[bool, int]] = []

    def apply(self, lease: Lease, add: bool) -> None:
        self.log.append((add, lease.external))
        if add:
            self.active[lease.external] = lease
        else:
            self.active.pop(lease.external, None)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, Rules, int]]:
    rules = Rules()
    gw = Gateway(PUBLIC, rules.apply, time.monotonic())
    transport = await serve(gw, "127.0.0.1", 0)
    try:
        yield gw, rules, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_a_confirmed_mapping_is_published_renewed_and_deleted_on_close(gateway) -> None:
    gw, rules, port = gateway
    published: list[str | None] = []
    asked: list[int] = []

    async def confirm(external: int) -> bool:
        asked.append(external)
        return True

    mapper = PortMapper(8472, confirm=confirm, on_mapped=published.append,
                        gateway="127.0.0.1", gateway_port=port, upnp=False, lifetime=2)
    mapper.start()
    await wait_for(lambda: published, within=5)
    assert published == [f"ws://{PUBLIC}:8472/mesh"] and asked == [8472]
    assert rules.active[8472].internal == 8472
    await asyncio.sleep(1.3)                       # renewed at half the 2 s lifetime
    assert gw.leases and rules.log == [(True, 8472)] and asked == [8472]
    assert published == [f"ws://{PUBLIC}:8472/mesh"] * 2   # told again, not confirmed again
    await mapper.close()
    assert published == [f"ws://{PUBLIC}:8472/mesh"] * 2 + [None]
    assert rules.active == {} and rules.log == [(True, 8472), (False, 8472)]


async def test_a_taken_port_gets_another_and_an_unconfirmed_one_is_given_back(
        gateway) -> None:
    gw, rules, port = gateway
    first = PortMapper(8472, confirm=lambda p: _answer(True), on_mapped=lambda u: None,
                       gateway="127.0.0.1", gateway_port=port, upnp=False)
    first.start()
    await wait_for(lambda: first.url is not None, within=5)
    published: list[str | None] = []
    # Same internal port from the same client counts as a renewal, so use another one.
    second = PortMapper(8473, confirm=lambda p: _answer(False), on_mapped=published.append,
                        gateway="127.0.0.1", gateway_port=port, upnp=False)
    gw.leases[(Op.MAP_TCP, 8473)] = gw.leases[(Op.MAP_TCP, 8472)]  # 8473 taken
    second.start()
    await wait_for(lambda: second.problem, within=5)
    assert "dial-back did not get through" in second.problem and published == []
    assert (True, 20000) in rules.log and (False, 20000) in rules.log
    await second.close()
    await first.close()


async def test_a_silent_gateway_means_no_mapping_and_no_error(gateway) -> None:
    _, _, port = gateway
    mapper = PortMapper(8472, confirm=lambda p: _answer(True), on_mapped=lambda u: None,
                        gateway="127.0.0.1", gateway_port=port + 1 if port < 65535 else 1,
                        upnp=False)
    mapper.start()
    await wait_for(lambda: mapper.problem, within=5)
    assert "no NAT-PMP answer" in mapper.problem and mapper.url is None
    await mapper.close()


async def _answer(value: bool) -> bool:
    return value
