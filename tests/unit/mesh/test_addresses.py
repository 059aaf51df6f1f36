"""Candidates, what a node publishes, dial order, and reading reachability answers."""

from __future__ import annotations

import pytest

from mesh.addresses import (
    AddressBook,
    Kind,
    endpoint_url,
    is_lan_ip,
    lan_addresses,
    order_endpoints,
    path_of,
)
from mesh.errors import ReachabilityError
from mesh.reachability import (
    DialBack,
    Observed,
    Reachability,
    parse_dialback,
    parse_observed,
    publish,
    status_of,
)

RELAY = "ws://198.51.100.1:8470/relay/123456789012345"
LAN = "ws://192.168.1.20:8472/mesh"
PUBLIC = "ws://203.0.113.7:8472/mesh"


def test_publish_order_caps_and_keeps_a_relay():
    changes: list[tuple[str, ...]] = []
    book = AddressBook(changes.append, limit=3)
    book.add(RELAY, Kind.RELAY)
    book.add(LAN, Kind.LAN)
    book.add(PUBLIC, Kind.PUBLIC)            # unconfirmed: not published
    assert book.endpoints() == (LAN, RELAY)
    book.add(PUBLIC, Kind.PUBLIC, confirmed=True)
    assert book.endpoints() == (PUBLIC, LAN, RELAY)
    book.set_kind(Kind.LAN, [f"ws://10.0.0.{i}:1/mesh" for i in range(5)])
    assert book.endpoints() == (PUBLIC, "ws://10.0.0.0:1/mesh", RELAY)
    book.remove(RELAY)
    assert RELAY not in book.endpoints()
    assert changes[-1] == book.endpoints() and len(changes) == 5


def test_paths_and_dial_order():
    assert [path_of(u) for u in (RELAY, LAN, PUBLIC, "ws://[fd00::1]:1/mesh",
                                 "ws://127.0.0.1:1/mesh", "ws://relay.example/mesh")] \
        == ["relayed", "lan", "direct", "lan", "lan", "direct"]
    assert order_endpoints([RELAY, PUBLIC, LAN]) == [LAN, PUBLIC, RELAY]
    assert order_endpoints([RELAY, PUBLIC, LAN], remembered=RELAY) == [RELAY, LAN, PUBLIC]
    assert is_lan_ip("100.64.1.1") and not is_lan_ip("198.51.100.1") and not is_lan_ip("x")
    assert endpoint_url("::1", 5) == "ws://[::1]:5/mesh"


def test_lan_addresses_are_interface_addresses_without_loopback():
    addresses = lan_addresses()
    assert "127.0.0.1" not in addresses and "::1" not in addresses


@pytest.mark.parametrize("answer", [
    None, [], {"address": "1.2.3.4"}, {"address": "1.2.3.4", "port": 1, "x": 0},
    {"address": "127.0.0.1", "port": 1}, {"address": "0.0.0.0", "port": 1},
    {"address": "224.0.0.1", "port": 1}, {"address": "not an ip", "port": 1},
    {"address": 3, "port": 1}, {"address": "1.2.3.4", "port": 70000},
    {"address": "1.2.3.4", "port": True}, {"address": "1.2.3.4" * 20, "port": 1},
])
def test_observed_answers_that_lie_or_are_malformed_are_refused(answer):
    with pytest.raises(ReachabilityError):
        parse_observed(answer)


def test_dialback_answers():
    ok = {"address": "198.51.100.9", "port": 8472, "reachable": True, "detail": "connected"}
    assert parse_dialback(ok, 8472) == DialBack(Observed("198.51.100.9", 8472), True,
                                                 "connected")
    for bad in ({**ok, "port": 1}, {**ok, "reachable": "yes"}, {**ok, "address": "::1"},
                {**ok, "extra": 1}):
        with pytest.raises(ReachabilityError):
            parse_dialback(bad, 8472)
    assert Observed("192.168.1.2", 1).behind_lan and not Observed("198.51.100.9", 1).behind_lan


def test_status_follows_the_candidates():
    book = AddressBook()
    assert status_of(book, checked=False).state is Reachability.UNKNOWN
    book.add(LAN, Kind.LAN)
    assert status_of(book, checked=True).state is Reachability.LAN_ONLY
    book.add(RELAY, Kind.RELAY)
    assert status_of(book, checked=True).to_json() == {
        "state": "relayed", "public": [], "relays": [RELAY], "lan": [LAN]}
    publish(book, DialBack(Observed("203.0.113.7", 8472), True, "connected"))
    assert status_of(book, checked=True).state is Reachability.PUBLIC
    assert book.endpoints()[0] == PUBLIC
    publish(book, DialBack(Observed("203.0.113.7", 8472), False, "timeout"))
    assert status_of(book, checked=True).state is Reachability.RELAYED
