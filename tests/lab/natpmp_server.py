"""A NAT-PMP gateway for the NAT lab: real forwarding through nftables ``dnat`` rules.

Run it inside a router namespace built by netlab (its nat table has the ``prerouting``
chain the rules go into); it answers on the router's LAN address:

    lab.popen(router, sys.executable, "-m", "tests.lab.natpmp_server",
              "--listen", router.lan.gateway, "--public", router.ip)

``Gateway`` is the protocol logic (requests in, answers and rule changes out); the
integration tests run it on 127.0.0.1 with an in-memory rule table instead of nft.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from mesh.errors import PortMapError
from mesh.portmap import (
    NATPMP_PORT,
    AddressRequest,
    AddressResponse,
    MapRequest,
    MapResponse,
    Op,
    Refusal,
    Result,
    decode_request,
)

FIRST_FREE = 20000


@dataclass(frozen=True)
class Lease:
    op: Op
    client: str
    internal: int
    external: int
    expires: float


# apply(lease, add): put a forwarding in place (add) or take it away.
Apply = Callable[[Lease, bool], None]


class Gateway:
    """NAT-PMP version 0 on the gateway side, per RFC 6886 section 3."""

    def __init__(self, public: str, apply: Apply, started: float) -> None:
        self.public, self.apply, self.started = public, apply, started
        self.leases: dict[tuple[Op, int], Lease] = {}

    def handle(self, data: bytes, client: str, now: float) -> bytes | None:
        self.expire(now)
        epoch = int(now - self.started)
        try:
            request = decode_request(data)
        except PortMapError as exc:
            if exc.reason == "unsupported_opcode":
                return Refusal(data[1], Result.UNSUPPORTED_OPCODE, epoch).encode()
            if exc.reason == "unsupported_version":
                op = data[1] if len(data) > 1 else 0
                return Refusal(op & 127, Result.UNSUPPORTED_VERSION, epoch).encode()
            return None
        if isinstance(request, AddressRequest):
            return AddressResponse(epoch, self.public).encode()
        return self._map(request, client, now, epoch).encode()

    def _map(self, req: MapRequest, client: str, now: float,
             epoch: int) -> MapResponse | Refusal:
        mine = [k for k, v in self.leases.items()
                if k[0] == req.op and v.client == client and v.internal == req.internal_port]
        if req.lifetime == 0:
            for key in mine:
                self.apply(self.leases.pop(key), False)
            return MapResponse(req.op, epoch, req.internal_port, 0, 0)
        if mine:
            external = mine[0][1]
        else:
            wish = req.external_port or req.internal_port
            external = wish if (req.op, wish) not in self.leases else next(
                p for p in range(FIRST_FREE, 65536) if (req.op, p) not in self.leases)
        lease = Lease(req.op, client, req.internal_port, external, now + req.lifetime)
        if not mine:
            self.apply(lease, True)
        self.leases[(req.op, external)] = lease
        return MapResponse(req.op, epoch, req.internal_port, external, req.lifetime)

    def expire(self, now: float) -> None:
        for key, lease in list(self.leases.items()):
            if lease.expires <= now:
                self.apply(self.leases.pop(key), False)


def nft_apply(lease: Lease, add: bool) -> None:
    proto = "tcp" if lease.op is Op.MAP_TCP else "udp"
    tag = f"natpmp-{proto}-{lease.external}"
    if add:
        subprocess.run(["nft", "add", "rule", "ip", "nat", "prerouting", "iifname", "wan",
                        proto, "dport", str(lease.external), "dnat", "to",
                        f"{lease.client}:{lease.internal}", "comment", f'"{tag}"'],
                       check=True)
        return
    listing = subprocess.run(["nft", "-a", "list", "chain", "ip", "nat", "prerouting"],
                             capture_output=True, text=True, check=True).stdout
    for handle in re.findall(rf'comment "{tag}" # handle (\d+)', listing):
        subprocess.run(["nft", "delete", "rule", "ip", "nat", "prerouting", "handle", handle],
                       check=True)


class _Server(asyncio.DatagramProtocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.gateway.handle(data, addr[0], time.monotonic())
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def serve(gateway: Gateway, host: str, port: int) -> asyncio.DatagramTransport:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Server(gateway), local_addr=(host, port))
    return transport  # type: ignore[return-value]


async def _main(args: argparse.Namespace) -> None:
    gateway = Gateway(args.public, nft_apply, time.monotonic())
    transport = await serve(gateway, args.listen, args.port)
    print(f"natpmp listening on {args.listen}:{args.port}", flush=True)
    try:
        while True:
            await asyncio.sleep(1.0)
            gateway.expire(time.monotonic())
    finally:
        transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="the router's LAN address")
    parser.add_argument("--public", required=True, help="the router's public address")
    parser.add_argument("--port", type=int, default=NATPMP_PORT)
    asyncio.run(_main(parser.parse_args()))
