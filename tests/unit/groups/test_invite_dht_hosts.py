"""An invite names DHT contacts a friend on another machine can reach: with the DHT
bound to every interface, the hosts of our published endpoints, never a relay's."""

from groups.node import _endpoint_hosts


def test_hosts_come_from_our_endpoints_in_published_order_without_relays() -> None:
    endpoints = ("ws://192.168.1.20:8472/mesh",
                 "ws://203.0.113.9:8472/relay/165111482533427",
                 "ws://198.51.100.7:8472/mesh",
                 "ws://[2001:db8::5]:8472/mesh",
                 "ws://192.168.1.20:8472/mesh")
    assert _endpoint_hosts(endpoints) == ["192.168.1.20", "198.51.100.7", "2001:db8::5"]


def test_no_endpoints_no_hosts() -> None:
    assert _endpoint_hosts(()) == []
    assert _endpoint_hosts(("ws://203.0.113.9:8472/relay/165111482533427",)) == []
