"""GET /me says what LAN discovery and port mapping are doing and why they are off, so
the Settings screen can put it in words (docs/api.md, "Reachability"). Their working
states are checked in the NAT lab (tests/lab/test_lan.py, tests/lab/test_portmap.py):
here the nodes stay on loopback."""

from __future__ import annotations

from tests.integration.messenger.conftest import Cluster, eventually

OFF = {"state": "off", "method": "", "address": None, "problem": ""}


def test_why_lan_discovery_and_port_mapping_are_off(cluster: Cluster) -> None:
    loopback = cluster.add("loopback", "--mesh-host", "127.0.0.1")
    disabled = cluster.add("disabled", "--mesh-host", "127.0.0.1", "--no-lan-discovery",
                           "--no-port-mapping")
    advertised = cluster.add("advertised", "--mesh-host", "127.0.0.1", "--advertise",
                             "ws://127.0.0.1:9/mesh", "--no-lan-discovery")
    seen = {n.name: n.ok("GET", "/api/v1/me")["reachability"]
            for n in (loopback, disabled, advertised)}
    assert seen["loopback"]["lan_discovery"] == {"state": "off", "reason": "not_on_lan"}
    assert seen["loopback"]["port_mapping"] == {**OFF, "reason": "not_on_lan"}
    assert seen["disabled"]["lan_discovery"] == {"state": "off", "reason": "disabled"}
    assert seen["disabled"]["port_mapping"] == {**OFF, "reason": "disabled"}
    assert seen["advertised"]["port_mapping"] == {**OFF, "reason": "advertised"}
    for reach in seen.values():
        assert reach["mapped"] == []
    assert seen["advertised"]["public"] == ["ws://127.0.0.1:9/mesh"]


def test_links_say_how_each_link_travels(cluster: Cluster) -> None:
    alice = cluster.add("alice", "--mesh-host", "127.0.0.1")
    bob = cluster.add("bob", "--mesh-host", "127.0.0.1")
    group = alice.create_group("Paths")
    bob.join(alice.invite(group))
    links = eventually(lambda: alice.ok("GET", "/api/v1/links")["links"])
    members = {m["id"]: m["path"] for m in alice.ok("GET", f"/api/v1/groups/{group}")["members"]}
    assert links == {bob.user_id: members[bob.user_id]}
    assert links[bob.user_id] in ("lan", "direct")   # loopback: never relayed or punched
    bob.stop()
    assert eventually(lambda: alice.ok("GET", "/api/v1/links")["links"] == {},
                      message="bob's link gone")
