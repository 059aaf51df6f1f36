"""A UPnP Internet Gateway Device for the NAT lab: SSDP, a description, three SOAP actions.

Run it inside a router namespace built by netlab; mappings become nftables ``dnat``
rules exactly as the NAT-PMP gateway's do (tests/lab/natpmp_server.py):

    lab.popen(router, sys.executable, "-m", "tests.lab.upnp_server",
              "--listen", router.lan.gateway, "--public", router.ip)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from tornado.web import Application, RequestHandler

from mesh.portmap import Op
from mesh.upnp import IGD_DEVICE, SSDP
from tests.lab.natpmp_server import Lease, nft_apply

SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
DESCRIPTION = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major></specVersion>
<device><deviceType>{IGD_DEVICE}</deviceType><friendlyName>lab router</friendlyName>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/ipconn</controlURL><SCPDURL>/ipconn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>"""


class Mappings:
    """The router's port forwardings by external port."""

    def __init__(self, public: str) -> None:
        self.public = public
        self.leases: dict[int, Lease] = {}

    def add(self, external: int, client: str, internal: int, lifetime: int) -> None:
        held = self.leases.get(external)
        if held is not None and (held.client, held.internal) != (client, internal):
            raise UpnpFault(718, "ConflictInMappingEntry")
        lease = Lease(Op.MAP_TCP, client, internal, external,
                      time.monotonic() + (lifetime or 10**9))
        if held is None:
            nft_apply(lease, True)
        self.leases[external] = lease

    def delete(self, external: int) -> None:
        if external not in self.leases:
            raise UpnpFault(714, "NoSuchEntryInArray")
        nft_apply(self.leases.pop(external), False)


class UpnpFault(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class DescriptionHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/xml")
        self.write(DESCRIPTION)


class ControlHandler(RequestHandler):
    def initialize(self, mappings: Mappings) -> None:
        self.mappings = mappings

    def post(self) -> None:
        action = self.request.headers.get("SOAPAction", "").strip('"').rpartition("#")[2]
        root = SafeET.fromstring(self.request.body)
        args = {el.tag.rpartition("}")[2]: (el.text or "") for el in root.iter()}
        try:
            out = self._do(action, args)
        except (UpnpFault, KeyError, ValueError) as exc:
            code = exc.code if isinstance(exc, UpnpFault) else 402
            self.set_status(500)
            self._envelope(f'<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError'
                           f'</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:'
                           f'control-1-0"><errorCode>{code}</errorCode><errorDescription>'
                           f'{escape(str(exc))}</errorDescription></UPnPError></detail>'
                           f'</s:Fault>')
            return
        params = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in out.items())
        self._envelope(f'<u:{action}Response xmlns:u="{SERVICE}">{params}</u:{action}Response>')

    def _do(self, action: str, args: dict[str, str]) -> dict[str, str]:
        if action == "GetExternalIPAddress":
            return {"NewExternalIPAddress": self.mappings.public}
        if args.get("NewProtocol") != "TCP":
            raise UpnpFault(402, "Invalid Args")
        if action == "AddPortMapping":
            self.mappings.add(int(args["NewExternalPort"]), args["NewInternalClient"],
                              int(args["NewInternalPort"]), int(args["NewLeaseDuration"]))
            return {}
        if action == "DeletePortMapping":
            self.mappings.delete(int(args["NewExternalPort"]))
            return {}
        raise UpnpFault(401, "Invalid Action")

    def _envelope(self, inner: str) -> None:
        self.set_header("Content-Type", 'text/xml; charset="utf-8"')
        self.write('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/'
                   f'soap/envelope/"><s:Body>{inner}</s:Body></s:Envelope>')


class Ssdp(asyncio.DatagramProtocol):
    """Answers M-SEARCH for the IGD (or ssdp:all) with our description's location."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode("ascii", "replace")
        if not text.startswith("M-SEARCH") or not (IGD_DEVICE in text or "ssdp:all" in text):
            return
        answer = (f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {IGD_DEVICE}\r\n"
                  f"USN: uuid:netlab-igd::{IGD_DEVICE}\r\nEXT:\r\n"
                  f"SERVER: Linux UPnP/1.1 netlab/1\r\nLOCATION: {self.location}\r\n\r\n")
        if self.transport is not None:
            self.transport.sendto(answer.encode(), addr)


async def _main(args: argparse.Namespace) -> None:
    mappings = Mappings(args.public)
    app = Application([(r"/igd\.xml", DescriptionHandler),
                       (r"/ctl/ipconn", ControlHandler, {"mappings": mappings})])
    server = app.listen(args.http_port, args.listen)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", SSDP[1]))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(SSDP[0]) + socket.inet_aton(args.listen))
    location = f"http://{args.listen}:{args.http_port}/igd.xml"
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Ssdp(location), sock=sock)
    print(f"upnp listening at {location}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="the router's LAN address")
    parser.add_argument("--public", required=True, help="the router's public address")
    parser.add_argument("--http-port", type=int, default=5000)
    asyncio.run(_main(parser.parse_args()))
