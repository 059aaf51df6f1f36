"""UPnP-IGD messages: SSDP answers, device descriptions, SOAP; hostile input refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import PortMapError
from mesh.upnp import (
    parse_description,
    parse_search_response,
    parse_soap_response,
    search_request,
    soap_request,
)
from tests.lab.upnp_server import DESCRIPTION, SERVICE

LOCATION = "http://10.1.0.1:5000/igd.xml"


def test_search_request_asks_for_an_internet_gateway() -> None:
    text = search_request().decode()
    assert text.startswith("M-SEARCH * HTTP/1.1\r\n") and text.endswith("\r\n\r\n")
    assert "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1" in text


def test_search_answer_gives_the_location() -> None:
    answer = f"HTTP/1.1 200 OK\r\nST: x\r\nLocation:  {LOCATION}\r\n\r\n".encode()
    assert parse_search_response(answer) == LOCATION


@pytest.mark.parametrize("data", [
    b"NOTIFY * HTTP/1.1\r\nLOCATION: http://10.1.0.1/\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: http:///x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: http://\xff/\r\n\r\n",
])
def test_bad_search_answers_are_refused(data: bytes) -> None:
    with pytest.raises(PortMapError):
        parse_search_response(data)


def test_description_yields_the_wan_service_and_an_absolute_control_url() -> None:
    assert parse_description(DESCRIPTION.encode(), LOCATION) == (
        SERVICE, "http://10.1.0.1:5000/ctl/ipconn")


def test_a_control_url_on_another_host_is_refused() -> None:
    elsewhere = DESCRIPTION.replace("/ctl/ipconn", "http://198.51.100.66/ctl")
    with pytest.raises(PortMapError, match="another host"):
        parse_description(elsewhere.encode(), LOCATION)


@pytest.mark.parametrize("body", [
    b"<root/>", b"not xml", b"<a>" * 40000,
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
    b"<root>&b;</root>",
])
def test_descriptions_without_a_service_or_hostile_ones_are_refused(body: bytes) -> None:
    with pytest.raises(PortMapError):
        parse_description(body, LOCATION)


def test_soap_round_trip_and_faults() -> None:
    headers, body = soap_request(SERVICE, "AddPortMapping", (("NewInternalClient", "<&>"),))
    assert headers["SOAPAction"] == f'"{SERVICE}#AddPortMapping"'
    assert b"<NewInternalClient>&lt;&amp;&gt;</NewInternalClient>" in body
    ok = (f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
          f'<u:GetExternalIPAddressResponse xmlns:u="{SERVICE}"><NewExternalIPAddress>'
          f'203.0.113.1</NewExternalIPAddress></u:GetExternalIPAddressResponse>'
          f'</s:Body></s:Envelope>').encode()
    assert parse_soap_response(ok, "GetExternalIPAddress") == {
        "NewExternalIPAddress": "203.0.113.1"}
    fault = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
             b'<s:Fault><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
             b"<errorCode>718</errorCode><errorDescription>ConflictInMappingEntry"
             b"</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>")
    with pytest.raises(PortMapError) as info:
        parse_soap_response(fault, "AddPortMapping")
    assert info.value.reason == "upnp_718"
    with pytest.raises(PortMapError):
        parse_soap_response(ok, "AddPortMapping")   # an answer to another action


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_upnp_input_parses_or_raises_port_map_error(data: bytes) -> None:
    for parse in (parse_search_response, lambda d: parse_description(d, LOCATION),
                  lambda d: parse_soap_response(d, "AddPortMapping")):
        with contextlib.suppress(PortMapError):
            parse(data)
