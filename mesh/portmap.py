"""Port mapping on the home router with NAT-PMP (RFC 6886): a codec and a small service.

Why: a node behind a home router is reachable directly when the router forwards a port
to it; many routers do that on request (NAT-PMP, or PCP which answers NAT-PMP version 0
requests too). The codec below is sans-IO (bytes in, frozen dataclasses out, both
directions, so a test responder can use it); ``PortMapper`` is the thin asyncio adapter:
it asks the default gateway for a TCP mapping of the mesh port (NAT-PMP, else UPnP-IGD
through mesh/upnp.py), has it confirmed by a dial-back before anyone is told
(``confirm``), renews the lease at half its lifetime, and deletes it on close. See
docs/protocol.md, "Port mapping".
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mesh import upnp
from mesh.addresses import endpoint_url
from mesh.errors import PortMapError

__all__ = [
    "NATPMP_PORT",
    "AddressRequest",
    "AddressResponse",
    "MapRequest",
    "MapResponse",
    "Op",
    "PortMapper",
    "Refusal",
    "Result",
    "decode_request",
    "decode_response",
    "default_gateway",
]

log = logging.getLogger(__name__)

NATPMP_PORT = 5351
VERSION = 0
RESPONSE_BIT = 128
LIFETIME = 7200            # seconds asked for (RFC 6886 recommends two hours)
RETRIES = (0.25, 0.5, 1.0)  # RFC 6886 starts at 250 ms and doubles; we stop after three
RETRY_LATER = 600.0        # no gateway answered, or the mapping was refused
MAX_LIFETIME = 2**32 - 1


class Op(enum.IntEnum):
    ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class Result(enum.IntEnum):
    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    REFUSED = 2             # "not authorized": the user turned NAT-PMP off
    NETWORK_FAILURE = 3     # e.g. the router has no public address yet
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


@dataclass(frozen=True)
class AddressRequest:
    def encode(self) -> bytes:
        return struct.pack("!BB", VERSION, Op.ADDRESS)


@dataclass(frozen=True)
class MapRequest:
    """Map ``internal_port`` to ``external_port`` (a wish; 0: any) for ``lifetime``
    seconds; lifetime 0 deletes the mapping."""

    op: Op
    internal_port: int
    external_port: int
    lifetime: int

    def encode(self) -> bytes:
        return struct.pack("!BBHHHI", VERSION, self.op, 0, self.internal_port,
                           self.external_port, self.lifetime)


@dataclass(frozen=True)
class AddressResponse:
    epoch: int
    address: str

    def encode(self) -> bytes:
        return struct.pack("!BBHI4s", VERSION, RESPONSE_BIT + Op.ADDRESS, Result.SUCCESS,
                           self.epoch, ipaddress.IPv4Address(self.address).packed)


@dataclass(frozen=True)
class MapResponse:
    op: Op
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int

    def encode(self) -> bytes:
        return struct.pack("!BBHIHHI", VERSION, RESPONSE_BIT + self.op, Result.SUCCESS,
                           self.epoch, self.internal_port, self.external_port, self.lifetime)


@dataclass(frozen=True)
class Refusal:
    """A response with a non-zero result code (8 bytes: RFC 6886 section 3.5)."""

    op: int
    result: Result
    epoch: int

    def encode(self) -> bytes:
        return struct.pack("!BBHI", VERSION, RESPONSE_BIT + self.op, self.result, self.epoch)


Request = AddressRequest | MapRequest
Response = AddressResponse | MapResponse | Refusal


def decode_request(data: bytes) -> Request:
    """A gateway's view: parse a client's request; raises PortMapError. An unknown
    opcode raises with ``reason`` "unsupported_opcode" (answer it with a Refusal)."""
    if len(data) < 2 or data[0] != VERSION:
        raise PortMapError("not a NAT-PMP version 0 request", "unsupported_version")
    op = data[1]
    if op == Op.ADDRESS and len(data) == 2:
        return AddressRequest()
    if op in (Op.MAP_UDP, Op.MAP_TCP) and len(data) == 12:
        internal, external, lifetime = struct.unpack("!HHI", data[4:12])
        if internal == 0 and lifetime != 0:   # internal 0 + lifetime 0: delete all
            raise PortMapError("internal port 0 is not a mapping")
        return MapRequest(Op(op), internal, external, lifetime)
    if op in tuple(Op):
        raise PortMapError(f"request of {len(data)} bytes for opcode {op}")
    raise PortMapError(f"unsupported opcode {op}", "unsupported_opcode")


def decode_response(data: bytes) -> Response:
    """A client's view: parse the gateway's answer; raises PortMapError."""
    if len(data) < 8 or data[0] != VERSION or data[1] < RESPONSE_BIT:
        raise PortMapError("not a NAT-PMP version 0 response")
    op, code, epoch = data[1] - RESPONSE_BIT, *struct.unpack("!HI", data[2:8])
    try:
        result = Result(code)
    except ValueError:
        raise PortMapError(f"unknown result code {code}") from None
    if result is not Result.SUCCESS:
        if len(data) not in (8, 12, 16):
            raise PortMapError(f"refusal of {len(data)} bytes")
        return Refusal(op, result, epoch)
    if op == Op.ADDRESS and len(data) == 12:
        address = ipaddress.IPv4Address(data[8:12])
        return AddressResponse(epoch, str(address))
    if op in (Op.MAP_UDP, Op.MAP_TCP) and len(data) == 16:
        internal, external, lifetime = struct.unpack("!HHI", data[8:16])
        if internal == 0 or (external == 0 and lifetime != 0):
            raise PortMapError("a mapping response without ports")
        return MapResponse(Op(op), epoch, internal, external, lifetime)
    raise PortMapError(f"response of {len(data)} bytes for opcode {op}")


def default_gateway(route_table: Path = Path("/proc/thread-self/net/route")) -> str | None:
    """The IPv4 default gateway (Linux: the route table of this thread's network namespace)."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 2:
            return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
    return None


class _Client(asyncio.DatagramProtocol):
    """One connected UDP socket to the gateway: request, retransmit, match the answer."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[Response] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.answers.put_nowait(decode_response(data))
        except PortMapError as exc:
            log.debug("ignored a NAT-PMP datagram: %s", exc)


async def ask(gateway: str, request: Request, *, port: int = NATPMP_PORT,
              retries: tuple[float, ...] = RETRIES) -> Response:
    """Send ``request`` to the gateway and return its answer (retransmitting);
    raises PortMapError("no_answer") when it stays silent."""
    want = RESPONSE_BIT + (request.op if isinstance(request, MapRequest) else Op.ADDRESS)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        _Client, remote_addr=(gateway, port))
    try:
        for wait in retries:
            transport.sendto(request.encode())
            try:
                async with asyncio.timeout(wait):
                    while True:
                        answer = await client.answers.get()
                        if RESPONSE_BIT + getattr(answer, "op", Op.ADDRESS) == want:
                            return answer
            except TimeoutError:
                continue
    finally:
        transport.close()
    raise PortMapError(f"no NAT-PMP answer from {gateway}", "no_answer")


class _NatPmp:
    """The NAT-PMP way to the gateway."""

    def __init__(self, gateway: str, port: int) -> None:
        self.gateway, self.port = gateway, port

    async def external_address(self) -> str:
        answer = await ask(self.gateway, AddressRequest(), port=self.port)
        if not isinstance(answer, AddressResponse):
            raise PortMapError(f"external address refused: {answer.result.name}",
                               answer.result.name.lower())
        return answer.address

    async def add(self, internal: int, wish: int, lifetime: int) -> tuple[int, int]:
        answer = await ask(self.gateway, MapRequest(Op.MAP_TCP, internal, wish, lifetime),
                           port=self.port)
        if not isinstance(answer, MapResponse):
            raise PortMapError(f"mapping refused: {answer.result.name}",
                               answer.result.name.lower())
        if answer.internal_port != internal or answer.lifetime == 0:
            raise PortMapError("the gateway answered for another mapping")
        return answer.external_port, answer.lifetime

    async def delete(self, internal: int, external: int) -> None:
        await ask(self.gateway, MapRequest(Op.MAP_TCP, internal, 0, 0), port=self.port,
                  retries=(0.25,))


class _Upnp:
    """The UPnP-IGD way (mesh/upnp.py), with NAT-PMP's answers."""

    def __init__(self, igd: upnp.Igd) -> None:
        self.igd = igd

    async def external_address(self) -> str:
        return await self.igd.external_address()

    async def add(self, internal: int, wish: int, lifetime: int) -> tuple[int, int]:
        try:
            await self.igd.add(wish, internal, lifetime)
        except PortMapError as exc:
            if exc.reason != "upnp_725":   # OnlyPermanentLeasesSupported
                raise
            await self.igd.add(wish, internal, 0)
            return wish, LIFETIME   # permanent: renew (re-add) as if it were two hours
        return wish, lifetime

    async def delete(self, internal: int, external: int) -> None:
        await self.igd.delete(external)


class PortMapper:
    """Keeps a TCP mapping of ``internal_port`` on the default gateway: NAT-PMP first,
    UPnP-IGD when the gateway does not answer NAT-PMP (``upnp=False``: never).

    ``confirm(external_port)`` must say whether a dial-back from outside reached us
    through it (mesh/reachability.py's probe); only then does ``on_mapped`` get
    ``ws://EXTERNAL:PORT/mesh``, again after each renewal (so an address book that
    dropped it gets it back). ``on_mapped(None)`` withdraws it (refused, lost, or
    closing). The mapping is renewed at half its lifetime and deleted on close."""

    def __init__(self, internal_port: int, *, confirm: Callable[[int], Awaitable[bool]],
                 on_mapped: Callable[[str | None], None], gateway: str | None = None,
                 gateway_port: int = NATPMP_PORT, upnp: bool = True,
                 lifetime: int = LIFETIME, retry_later: float = RETRY_LATER) -> None:
        self.internal_port = internal_port
        self._confirm, self._on_mapped = confirm, on_mapped
        self.gateway = gateway
        self._gateway_port = gateway_port
        self._upnp = upnp
        self.lifetime, self.retry_later = lifetime, retry_later
        self.method = ""                   # "NAT-PMP" or "UPnP" once a gateway answered
        self.external: int | None = None   # the mapped port while we hold one
        self.url: str | None = None
        self.problem = ""
        self._way: _NatPmp | _Upnp | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._delete()
        self._publish(None)

    async def _delete(self) -> None:
        """Give the mapping back; best effort, once."""
        if self.external is not None and self._way is not None:
            external, self.external = self.external, None
            with contextlib.suppress(PortMapError, OSError):
                await self._way.delete(self.internal_port, external)

    def _publish(self, url: str | None) -> None:
        if url != self.url:
            self.url = url
            self._on_mapped(url)

    async def _run(self) -> None:
        while True:
            try:
                wait = await self._map_once()
            except (PortMapError, OSError) as exc:
                self.problem = str(exc)
                log.info("no port mapping: %s", exc)
                self._publish(None)
                await self._delete()
                wait = self.retry_later
            await asyncio.sleep(wait)

    async def _find_way(self) -> tuple[_NatPmp | _Upnp, str]:
        """The way to the gateway and our external address through it."""
        self.gateway = self.gateway or default_gateway()
        if self.gateway is None:
            raise PortMapError("no default gateway", "no_gateway")
        if self._way is not None:
            return self._way, await self._way.external_address()
        natpmp = _NatPmp(self.gateway, self._gateway_port)
        try:
            address = await natpmp.external_address()
            self._way, self.method = natpmp, "NAT-PMP"
        except PortMapError as exc:
            if exc.reason != "no_answer" or not self._upnp:
                raise
            way = _Upnp(await upnp.discover(self.gateway))
            address = await way.external_address()
            self._way, self.method = way, "UPnP"
        return self._way, address

    async def _map_once(self) -> float:
        """Ask for (or renew) the mapping; return when to renew."""
        way, address = await self._find_way()
        wish = self.external or self.internal_port
        external, lifetime = await way.add(self.internal_port, wish, self.lifetime)
        fresh = self.external != external
        self.external = external
        url = endpoint_url(address, external)
        if fresh or self.url != url:
            if not await self._confirm(external):
                raise PortMapError(f"{address}:{external} is mapped ({self.method}) but a "
                                   "dial-back did not get through", "unconfirmed")
            log.info("port mapping %s -> %d (%s) confirmed", url, self.internal_port,
                     self.method)
        self.problem = ""
        self.url = url
        self._on_mapped(url)
        return max(1.0, min(lifetime, MAX_LIFETIME) / 2)
