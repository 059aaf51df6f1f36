"""Port mapping in the lab: NAT-PMP or UPnP-IGD on a real router namespace, nft dnat rules,
and a real dial-back from the bootstrap.

The PortMapper runs on an event loop in a thread that entered alice's namespace, so its
UDP socket and the dial-back request leave from alice's machine behind the router.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

import pytest

from mesh.errors import RemoteError
from mesh.portmap import PortMapper
from mesh.reachability import probe
from tests.lab.netlab import Lab, Namespace, Syn, inside

BOOT_IP = "198.51.100.10"
MESH_PORT = 8472


class MapperThread(threading.Thread):
    """A PortMapper on its own loop inside ``ns`` until ``stop`` is set."""

    def __init__(self, ns: Namespace, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.ns, self.bootstrap = ns, bootstrap
        self.published: list[str | None] = []
        self.ready, self.stop = threading.Event(), threading.Event()
        self.problem = ""
        self.mapper: PortMapper | None = None

    async def _confirm(self, external: int) -> bool:
        try:
            return (await probe(self.bootstrap, external)).reachable
        except RemoteError:
            return False

    def _published(self, url: str | None) -> None:
        self.published.append(url)
        self.ready.set()

    async def _main(self) -> None:
        self.mapper = mapper = PortMapper(MESH_PORT, confirm=self._confirm,
                                          on_mapped=self._published)
        mapper.start()
        while not self.stop.is_set():
            self.problem = mapper.problem
            if mapper.problem:
                self.ready.set()
            await asyncio.sleep(0.05)
        await mapper.close()

    def run(self) -> None:
        with inside(self.ns):
            asyncio.run(self._main())


def _reaches(lab: Lab, src: Namespace, address: tuple[str, int]) -> bool:
    with lab.socket(src) as probe_sock:
        probe_sock.settimeout(1.0)
        try:
            probe_sock.connect(address)
        except (TimeoutError, ConnectionRefusedError):
            return False
        return True


GATEWAYS = {"natpmp": ("tests.lab.natpmp_server", "natpmp listening"),
            "upnp": ("tests.lab.upnp_server", "upnp listening")}


@pytest.mark.parametrize(("gateway", "method"), [("natpmp", "NAT-PMP"), ("upnp", "UPnP"),
                                                 (None, "")])
def test_the_mesh_port_is_mapped_confirmed_and_given_back(lab: Lab, gateway: str | None,
                                                          method: str) -> None:
    srv = lab.public_host("boot", BOOT_IP)
    ra = lab.router("ra", "203.0.113.1", "10.1.0.0/24", syn=Syn.DROP)
    alice = lab.host("alice", ra.lan)
    boot = lab.popen(srv, *lab.run_py, "bootstrap", "--host", BOOT_IP, "--no-dht",
                     "--no-relay", "--db", str(lab.workdir / "boot.db"))
    boot.wait_for("listening")
    if gateway is not None:
        module, ready = GATEWAYS[gateway]
        lab.popen(ra, sys.executable, "-m", module, "--listen", ra.lan.gateway,
                  "--public", ra.ip).wait_for(ready)
    listener = lab.socket(alice)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", MESH_PORT))
    listener.listen()
    mapper = MapperThread(alice, f"http://{BOOT_IP}:8470")
    mapper.start()
    try:
        assert mapper.ready.wait(15)
        rules = lab.run(ra, "nft", "list", "chain", "ip", "nat", "prerouting")
        if gateway is None:
            assert "no UPnP gateway answered" in mapper.problem and mapper.published == []
            assert "dnat" not in rules
            assert not _reaches(lab, srv, (ra.ip, MESH_PORT))
            return
        assert mapper.published == [f"ws://{ra.ip}:{MESH_PORT}/mesh"], mapper.problem
        assert mapper.mapper is not None and mapper.mapper.method == method
        assert f"dnat to {alice.ip}:{MESH_PORT}" in rules
        assert _reaches(lab, srv, (ra.ip, MESH_PORT))   # an outsider gets through
    finally:
        mapper.stop.set()
        mapper.join(10)
        listener.close()
    assert mapper.published[-1] is None
    assert "dnat" not in lab.run(ra, "nft", "list", "chain", "ip", "nat", "prerouting")
    assert not _reaches(lab, srv, (ra.ip, MESH_PORT))    # the router drops SYNs again


def test_a_node_behind_a_natpmp_router_publishes_its_mapped_port(lab: Lab) -> None:
    srv = lab.public_host("boot", BOOT_IP)
    ra = lab.router("ra", "203.0.113.1", "10.1.0.0/24", syn=Syn.DROP)
    alice_ns = lab.host("alice", ra.lan)
    lab.popen(srv, *lab.run_py, "bootstrap", "--host", BOOT_IP, "--no-dht",
              "--db", str(lab.workdir / "boot.db")).wait_for("listening")
    lab.popen(ra, sys.executable, "-m", "tests.lab.natpmp_server", "--listen",
              ra.lan.gateway, "--public", ra.ip).wait_for("natpmp listening")
    alice = lab.start_node(alice_ns, "--bootstrap", f"http://{BOOT_IP}:8470", "--no-dht",
                           "--mesh-host", "0.0.0.0", "--mesh-port", str(MESH_PORT),
                           "--no-lan-discovery")
    mapped = f"ws://{ra.ip}:{MESH_PORT}/mesh"
    # Once the router forwards the port, the reachability check's own dial-back may
    # confirm the same address as public before the mapper's confirmation lands: wait
    # for the mapping itself, not for the address.
    alice.wait_api("GET", "/me", lambda me: me["reachability"]["mapped"] == [mapped],
                   timeout=30)
    me = alice.api("GET", "/me")[1]
    reach = me["reachability"]
    assert mapped in me["endpoints"]
    assert reach["port_mapping"] == {"state": "mapped", "reason": "", "method": "NAT-PMP",
                                     "address": mapped, "problem": ""}
    assert reach["lan_discovery"] == {"state": "off", "reason": "disabled"}
    assert f"dnat to {alice_ns.ip}:{MESH_PORT}" in lab.run(
        ra, "nft", "list", "chain", "ip", "nat", "prerouting")
    assert _reaches(lab, srv, (ra.ip, MESH_PORT))
    alice.proc.stop()
    assert "dnat" not in lab.run(ra, "nft", "list", "chain", "ip", "nat", "prerouting")
    assert not _reaches(lab, srv, (ra.ip, MESH_PORT))
