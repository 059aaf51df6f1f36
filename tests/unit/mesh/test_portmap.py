"""NAT-PMP codec (RFC 6886): exact bytes, round trips, and garbage refused cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import PortMapError
from mesh.portmap import (
    AddressRequest,
    AddressResponse,
    MapRequest,
    MapResponse,
    Op,
    Refusal,
    Result,
    decode_request,
    decode_response,
    default_gateway,
)


def test_wire_bytes_match_rfc_6886() -> None:
    assert AddressRequest().encode() == b"\x00\x00"
    assert MapRequest(Op.MAP_TCP, 8472, 8472, 7200).encode() == bytes.fromhex(
        "0002 0000 2118 2118 00001c20")
    assert AddressResponse(5, "203.0.113.1").encode() == bytes.fromhex(
        "0080 0000 00000005 cb007101")
    assert MapResponse(Op.MAP_TCP, 5, 8472, 20000, 7200).encode() == bytes.fromhex(
        "0082 0000 00000005 2118 4e20 00001c20")
    assert Refusal(2, Result.REFUSED, 5).encode() == bytes.fromhex("0082 0002 00000005")


@pytest.mark.parametrize("message", [
    AddressResponse(0, "198.51.100.7"), MapResponse(Op.MAP_UDP, 9, 1, 65535, 1),
    MapResponse(Op.MAP_TCP, 2**32 - 1, 8472, 0, 0), Refusal(2, Result.OUT_OF_RESOURCES, 3)])
def test_responses_round_trip(message) -> None:
    assert decode_response(message.encode()) == message


@pytest.mark.parametrize("message", [
    AddressRequest(), MapRequest(Op.MAP_TCP, 1, 0, 0), MapRequest(Op.MAP_UDP, 65535, 1, 1)])
def test_requests_round_trip(message) -> None:
    assert decode_request(message.encode()) == message


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "unsupported_version"), (b"\x01\x00", "unsupported_version"),
    (b"\x00\x07", "unsupported_opcode"), (b"\x00\x00\x00", "bad_portmap"),
    (b"\x00\x02" + bytes(9) + b"\x01", "bad_portmap"),        # internal port 0, lifetime 1
])
def test_bad_requests_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PortMapError) as info:
        decode_request(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("data", [
    b"", b"\x00\x00" + bytes(10),                             # a request, not a response
    bytes.fromhex("0080 0000 00000005 cb0071"),               # address cut short
    bytes.fromhex("0082 0009 00000005"),                      # unknown result code
    bytes.fromhex("0082 0000 00000005 0000 4e20 00001c20"),   # internal port 0
    bytes.fromhex("0082 0000 00000005 2118 0000 00001c20"),   # no external port
    bytes.fromhex("0082 0002 00000005 00"),                   # refusal of 9 bytes
])
def test_bad_responses_are_refused(data: bytes) -> None:
    with pytest.raises(PortMapError):
        decode_response(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=20))
def test_fuzzed_datagrams_decode_or_raise_port_map_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            message = decode(data)
        except PortMapError:
            continue
        assert decode(message.encode()) == message


def test_default_gateway_reads_the_route_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t0007A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "eth0\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\n")
    assert default_gateway(table) == "10.0.1.1"
    table.write_text("Iface\tDestination\tGateway \tFlags\n")
    assert default_gateway(table) is None
    assert default_gateway(tmp_path / "missing") is None
