"""DHT contacts as invites carry them: "ip:port" strings, bounded and strict."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.dht_records import MAX_CONTACTS, format_dht_contact, parse_dht_contact, parse_dht_contacts
from mesh.errors import ContactError


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.7:8471", ("192.0.2.7", 8471)),
    ("127.0.0.1:1", ("127.0.0.1", 1)),
    ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
    ("[::1]:8470", ("::1", 8470)),
    ("[2001:DB8:0::7]:9", ("2001:db8::7", 9)),  # normalised
])
def test_valid_contacts(text: str, expected: tuple[str, int]) -> None:
    assert parse_dht_contact(text) == expected


@pytest.mark.parametrize("text", [
    "", "192.0.2.7", "192.0.2.7:", "192.0.2.7:0", "192.0.2.7:65536", "192.0.2.7:08471",
    "192.0.2.7:-1", "192.0.2.7:+80", "192.0.2.7:8 0", "example.org:8471", "localhost:8471",
    "2001:db8::7:8471", "[192.0.2.7]:8471", "0.0.0.0:8471", "[::]:8471", "224.0.0.1:8471",
    "[ff02::1]:8471", "192.0.2.7:８４７１", "1" * 70 + ":80", " 192.0.2.7:8471",
])
def test_invalid_contacts(text: str) -> None:
    with pytest.raises(ContactError):
        parse_dht_contact(text)


@pytest.mark.parametrize("obj", [None, "192.0.2.7:1", 5, {"a": 1}, [1], [None]])
def test_contact_lists_must_be_lists_of_strings(obj: object) -> None:
    with pytest.raises(ContactError):
        parse_dht_contacts(obj)


def test_contact_lists_are_bounded_and_deduplicated() -> None:
    many = [f"192.0.2.{i}:8471" for i in range(1, MAX_CONTACTS + 2)]
    with pytest.raises(ContactError):
        parse_dht_contacts(many)
    assert parse_dht_contacts(["192.0.2.1:1", "[::1]:2", "192.0.2.1:1"]) == [
        ("192.0.2.1", 1), ("::1", 2)]
    assert parse_dht_contacts([]) == []


@given(st.text(max_size=80))
def test_parsing_arbitrary_text_raises_only_contact_errors(text: str) -> None:
    try:
        ip, port = parse_dht_contact(text)
    except ContactError:
        return
    assert 0 < port < 65536
    assert not ipaddress.ip_address(ip).is_unspecified


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_format_and_parse_round_trip(ip, port: int) -> None:
    if ip.is_unspecified or ip.is_multicast:
        with pytest.raises(ContactError):
            format_dht_contact(str(ip), port)
        return
    text = format_dht_contact(str(ip), port)
    assert parse_dht_contact(text) == (str(ip), port)
