"""UPnP Internet Gateway Device port mapping, for routers that do not speak NAT-PMP.

Why our own small client: what Parley needs of UPnP is four SOAP actions on one service
(GetExternalIPAddress, AddPortMapping, DeletePortMapping) after one SSDP search; the
full UPnP stacks on PyPI bring an HTTP client and schema machinery of their own. The
message building and parsing below is sans-IO; ``discover`` and ``Igd`` are the thin
adapters (UDP for SSDP, Tornado's HTTP client for the description and SOAP). Only the
default gateway is believed: an SSDP answer from any other LAN host, or one pointing
elsewhere, is ignored. XML is parsed with defusedxml and bodies are capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mesh.errors import PortMapError
from mesh.httpfetch import fetch

__all__ = ["Igd", "discover", "parse_description", "parse_search_response",
           "parse_soap_response", "search_request", "soap_request"]

log = logging.getLogger(__name__)

SSDP = ("239.255.255.250", 1900)
IGD_DEVICE = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
SERVICES = ("urn:schemas-upnp-org:service:WANIPConnection:2",
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "urn:schemas-upnp-org:service:WANPPPConnection:1")
MAX_BODY = 64 * 1024
SEARCH_WAIT = 2.0
HTTP_TIMEOUT = 5.0
DESCRIPTION = "Parley"
_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
_CONTROL = "urn:schemas-upnp-org:control-1-0"


def search_request(target: str = IGD_DEVICE) -> bytes:
    return ("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
            f'MAN: "ssdp:discover"\r\nMX: 2\r\nST: {target}\r\n\r\n').encode()


def parse_search_response(data: bytes) -> str:
    """The LOCATION of an SSDP answer (``HTTP/1.1 200 OK`` with headers)."""
    try:
        lines = data.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise PortMapError("SSDP answer is not ASCII") from None
    if not lines[0].startswith("HTTP/1.1 200"):
        raise PortMapError("not an SSDP search answer")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
            if urlsplit(location).scheme != "http" or not urlsplit(location).hostname:
                raise PortMapError("SSDP location must be an http:// URL")
            return location
    raise PortMapError("SSDP answer without a location")


def _xml(body: bytes, what: str) -> Element:
    if len(body) > MAX_BODY:
        raise PortMapError(f"{what} over {MAX_BODY} bytes")
    try:
        return SafeET.fromstring(body)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise PortMapError(f"{what} is not acceptable XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_description(body: bytes, location: str) -> tuple[str, str]:
    """(service type, absolute control URL) of the best WAN connection service."""
    root = _xml(body, "device description")
    base = location
    found: dict[str, str] = {}
    for element in root.iter():
        if _local(element.tag) == "URLBase" and element.text:
            base = element.text.strip()
        if _local(element.tag) != "service":
            continue
        fields = {_local(child.tag): (child.text or "").strip() for child in element}
        if fields.get("serviceType") in SERVICES and fields.get("controlURL"):
            found[fields["serviceType"]] = fields["controlURL"]
    for service in SERVICES:
        if service in found:
            control = urljoin(base, found[service])
            if urlsplit(control).hostname != urlsplit(location).hostname:
                raise PortMapError("control URL on another host than the description")
            return service, control
    raise PortMapError("no WAN connection service in the device description")


def soap_request(service: str, action: str,
                 args: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, str], bytes]:
    """Headers and body of one SOAP action (argument values are escaped)."""
    params = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in args)
    body = (f'<?xml version="1.0"?><s:Envelope xmlns:s="{_ENVELOPE}" '
            f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{service}">{params}</u:{action}></s:Body></s:Envelope>')
    headers = {"Content-Type": 'text/xml; charset="utf-8"',
               "SOAPAction": f'"{service}#{action}"'}
    return headers, body.encode()


def parse_soap_response(body: bytes, action: str) -> dict[str, str]:
    """The out-arguments of ``action``'s answer; a SOAP fault raises with its UPnP
    error code as ``reason`` (e.g. ``upnp_718``: the external port is taken)."""
    root = _xml(body, "SOAP answer")
    for element in root.iter():
        if _local(element.tag) == f"{action}Response":
            return {_local(child.tag): (child.text or "").strip() for child in element}
        if _local(element.tag) == "UPnPError":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            code = fields.get("errorCode", "")
            raise PortMapError(f"UPnP error {code}: {fields.get('errorDescription', '')}",
                               f"upnp_{code}" if code.isdigit() else "upnp_error")
    raise PortMapError(f"no {action}Response in the SOAP answer")


class _Search(asyncio.DatagramProtocol):
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.location: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self.gateway or self.location.done():
            return  # only our router may offer to map our ports
        try:
            location = parse_search_response(data)
        except PortMapError as exc:
            log.debug("ignored an SSDP answer: %s", exc)
            return
        if urlsplit(location).hostname == self.gateway:
            self.location.set_result(location)


@dataclass(frozen=True)
class Igd:
    """One router's WAN connection service, reached from ``local_ip``."""

    service: str
    control: str
    local_ip: str

    async def _call(self, action: str, *args: tuple[str, str]) -> dict[str, str]:
        headers, body = soap_request(self.service, action, args)
        request = HTTPRequest(self.control, method="POST", headers=headers, body=body,
                              connect_timeout=HTTP_TIMEOUT, request_timeout=HTTP_TIMEOUT)
        try:
            response = await fetch(AsyncHTTPClient(max_body_size=MAX_BODY), request,
                                   raise_error=False)
        except (HTTPClientError, OSError) as exc:
            raise PortMapError(f"UPnP {action} failed: {exc}", "no_answer") from None
        return parse_soap_response(response.body or b"", action)

    async def external_address(self) -> str:
        return (await self._call("GetExternalIPAddress")).get("NewExternalIPAddress", "")

    async def add(self, external: int, internal: int, lifetime: int) -> None:
        await self._call("AddPortMapping", ("NewRemoteHost", ""),
                         ("NewExternalPort", str(external)), ("NewProtocol", "TCP"),
                         ("NewInternalPort", str(internal)),
                         ("NewInternalClient", self.local_ip), ("NewEnabled", "1"),
                         ("NewPortMappingDescription", DESCRIPTION),
                         ("NewLeaseDuration", str(lifetime)))

    async def delete(self, external: int) -> None:
        await self._call("DeletePortMapping", ("NewRemoteHost", ""),
                         ("NewExternalPort", str(external)), ("NewProtocol", "TCP"))


async def discover(gateway: str, *, wait: float = SEARCH_WAIT,
                   ssdp_port: int = SSDP[1]) -> Igd:
    """Search for the gateway's IGD (multicast and unicast to the gateway) and read its
    description; raises PortMapError("no_answer") when none answers."""
    loop = asyncio.get_running_loop()
    transport, search = await loop.create_datagram_endpoint(
        lambda: _Search(gateway), local_addr=("0.0.0.0", 0),  # noqa: S104 - answers come to it
        family=socket.AF_INET)
    try:
        for target in (SSDP[0], gateway):
            with contextlib.suppress(OSError):
                transport.sendto(search_request(), (target, ssdp_port))
        try:
            location = await asyncio.wait_for(asyncio.shield(search.location), wait)
        except TimeoutError:
            raise PortMapError(f"no UPnP gateway answered at {gateway}", "no_answer") from None
    finally:
        transport.close()
    try:
        response = await fetch(AsyncHTTPClient(max_body_size=MAX_BODY), location,
                               connect_timeout=HTTP_TIMEOUT, request_timeout=HTTP_TIMEOUT)
    except (HTTPClientError, OSError) as exc:
        raise PortMapError(f"cannot read {location}: {exc}", "no_answer") from None
    service, control = parse_description(response.body, location)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((gateway, 9))   # no packet: just which source address we use
        local_ip = probe.getsockname()[0]
    return Igd(service, control, local_ip)
